"""A consumer's grants as the database says them (``ingest.acl_sync``: the snapshot, the
desired bindings, the scope a change queues); database only, no Kafka."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import ResourceType

from certs.models import Certificate
from certs.services import consumer_certificate_issue, tenant_ca_create
from devices.models import Consumer, Stream
from devices.services import consumer_create, consumer_update
from ingest.acl_sync import KafkaScope, desired_acls, kafka_scope
from ingest.acls import describe_binding
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.oauth.models import OAuthClient
from tenants.rights import RightsChange
from tests.tenants.oauth.support import make_oauth_client

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("test")


@pytest.fixture
def reader(tenant: Tenant) -> tuple[Consumer, Certificate, OAuthClient]:
    tenant_ca_create(actor=ACTOR, tenant=tenant)
    consumer = consumer_create(actor=ACTOR, tenant=tenant, slug="reader", dead_letters=True)
    certificate = consumer_certificate_issue(actor=ACTOR, consumer=consumer, passphrase="long passphrase").certificate
    client, _secret = make_oauth_client(tenant, "consumer", consumer=consumer)
    return consumer, certificate, client


def lines(tenant: Tenant) -> list[str]:
    return [describe_binding(b) for b in desired_acls(tenant.slug)]


def test_each_credential_reads_the_streams_the_dlq_and_its_groups(
    tenant: Tenant, reader: tuple[Consumer, Certificate, OAuthClient]
) -> None:
    _consumer, certificate, client = reader
    for principal in (certificate.kafka_principal, f"User:acme.consumers.reader.{client.client_id}"):
        assert {line for line in lines(tenant) if principal + " " in line} == {
            f"ALLOW {principal} READ GROUP:PREFIXED:acme.reader. host=*",
            f"ALLOW {principal} READ TOPIC:LITERAL:iot.acme.dlq host=*",
            f"ALLOW {principal} READ TOPIC:LITERAL:iot.acme.eu.temperature host=*",
        }
    # a stream added later is read too; groups' kafka_direct has nothing to do with it
    Stream.objects.create(tenant=tenant, region="us", type="vibration")
    assert sum("iot.acme.us.vibration" in line for line in lines(tenant)) == 2


def test_narrowed_disabled_and_credential_changes(
    tenant: Tenant, reader: tuple[Consumer, Certificate, OAuthClient]
) -> None:
    consumer, certificate, client = reader
    other = Stream.objects.create(tenant=tenant, region="us", type="vibration")
    consumer_update(actor=ACTOR, consumer=consumer, streams=[other], dead_letters=False)
    assert {b.name for b in desired_acls(tenant.slug) if b.restype == ResourceType.TOPIC} == {"iot.acme.us.vibration"}
    consumer_update(actor=ACTOR, consumer=consumer, status="disabled")
    assert desired_acls(tenant.slug) == []
    consumer_update(actor=ACTOR, consumer=consumer, status="active")
    OAuthClient.objects.filter(pk=client.pk).update(scopes=["registry:read"])  # kafka:consume taken away
    assert {b.principal for b in desired_acls(tenant.slug)} == {certificate.kafka_principal}
    Certificate.objects.filter(pk=certificate.pk).update(status="revoked")
    assert desired_acls(tenant.slug) == []


def test_a_credential_change_queues_the_consumers_principal(
    tenant: Tenant, reader: tuple[Consumer, Certificate, OAuthClient]
) -> None:
    _consumer, certificate, client = reader
    by_certificate = kafka_scope(RightsChange(tenant_id=tenant.pk, certificates=frozenset({certificate.serial})))
    assert by_certificate == KafkaScope("acme", (certificate.kafka_principal,))
    by_client = kafka_scope(RightsChange(tenant_id=tenant.pk, clients=frozenset({client.client_id})))
    assert by_client == KafkaScope("acme", (f"User:acme.consumers.reader.{client.client_id}",))
    # another tenant's consumer principal is never taken into this tenant's scope
    foreign = "User:globex.consumers.reader.sc_000000000000000000000001"
    assert kafka_scope(RightsChange(tenant_id=tenant.pk), [foreign]) is None
