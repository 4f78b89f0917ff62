"""Which Kafka work an announced change queues (``ingest.acl_sync.kafka_scope``): the
principals concerned for a credential or device change, the tenant for a group or tenant
change, nothing where no Kafka grant can be concerned (database only)."""

from __future__ import annotations

import pytest

from devices.models import Device, DeviceGroup
from devices.principals import credential_principal
from ingest.acl_sync import MAX_PRINCIPALS_PER_SYNC, KafkaScope, kafka_scope
from tenants.models import Tenant
from tenants.oauth.models import OAuthClient
from tenants.rights import RightsChange

pytestmark = pytest.mark.django_db


@pytest.fixture
def sensors(tenant: Tenant) -> DeviceGroup:
    group = DeviceGroup.objects.get(tenant=tenant, slug="sensors")
    group.kafka_direct = True
    group.credential_policy = DeviceGroup.CredentialPolicy.BOTH
    group.save()
    return group


def client_of(device: Device) -> OAuthClient:
    return OAuthClient.objects.create(tenant=device.tenant, client_id=f"sc_{device.pk:024x}", secret_hash="0" * 64,
                                      name="c", kind="device", device=device, scopes=["kafka:produce"])  # fmt: skip


def test_an_oauth_client_change_names_its_own_principal(tenant: Tenant, sensors: DeviceGroup) -> None:
    device = Device.objects.create(tenant=tenant, group=sensors, device_id="d-1")
    client = client_of(device)
    scope = kafka_scope(RightsChange(tenant_id=tenant.pk, clients=frozenset({client.client_id})))
    assert scope == KafkaScope("acme", (f"User:acme.sensors.{client.client_id}",))


def test_a_device_change_names_its_clients_and_the_principals_it_left(tenant: Tenant, sensors: DeviceGroup) -> None:
    device = Device.objects.create(tenant=tenant, group=sensors, device_id="d-1")
    client = client_of(device)
    old = credential_principal(tenant="acme", group="sensors", credential_id=client.client_id)
    scope = kafka_scope(RightsChange(tenant_id=tenant.pk, devices=frozenset({device.pk})), [old])
    assert scope is not None
    assert scope.principals == (old,)


def test_credentials_of_groups_without_kafka_direct_need_nothing(tenant: Tenant) -> None:
    group = DeviceGroup.objects.get(tenant=tenant, slug="sensors")
    device = Device.objects.create(tenant=tenant, group=group, device_id="d-1")
    client = client_of(device)
    assert kafka_scope(RightsChange(tenant_id=tenant.pk, clients=frozenset({client.client_id}))) is None
    assert kafka_scope(RightsChange(tenant_id=tenant.pk, devices=frozenset({device.pk}))) is None


def test_group_and_tenant_changes_sync_the_tenant_with_its_topics(tenant: Tenant, sensors: DeviceGroup) -> None:
    for change in (RightsChange(tenant_id=tenant.pk, groups=frozenset({sensors.pk})),
                   RightsChange(tenant_id=tenant.pk, whole_tenant=True)):  # fmt: skip
        assert kafka_scope(change) == KafkaScope("acme", None, ("iot.acme.dlq", "iot.acme.eu.temperature"))


def test_a_large_change_is_synced_as_the_tenant(tenant: Tenant, sensors: DeviceGroup) -> None:
    devices = Device.objects.bulk_create(
        [Device(tenant=tenant, group=sensors, device_id=f"d-{n}") for n in range(MAX_PRINCIPALS_PER_SYNC + 1)]
    )
    for device in devices:
        client_of(device)
    scope = kafka_scope(RightsChange(tenant_id=tenant.pk, devices=frozenset(d.pk for d in devices)))
    assert scope is not None
    assert scope.principals is None
