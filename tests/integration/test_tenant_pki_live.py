"""A device certificate from a tenant's issuing CA works on the real Kafka listener (the
client sends leaf + tenant CA, the broker trusts the platform root), and its CRL is served
over HTTP by nginx after a revocation."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from cryptography import x509

from certs.models import CertificateAuthority
from certs.services import certificate_issue_generated, certificate_revoke, crl_name
from config.env import Runtime
from devices.models import Device, DeviceGroup, Stream
from ingest.kafka import client_config
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.conftest import unique_slug
from tests.integration.test_kafka_mtls import grant_group, produce_one, revoke_all

pytestmark = [pytest.mark.integration, pytest.mark.django_db]
ACTOR = Actor.system("test")


@pytest.fixture
def device(services: Runtime, django_capture_on_commit_callbacks: Callable[..., Any], monkeypatch: Any) -> Device:
    # Topic provisioning is covered by test_topic_provisioning.py; here only the PKI matters.
    monkeypatch.setattr("devices.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
    with django_capture_on_commit_callbacks(execute=True):
        tenant = tenant_create(actor=ACTOR, slug=unique_slug("t"), name="PKI test")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject="s")  # fmt: skip
    return Device.objects.create(tenant=tenant, group=group, device_id="Sensor_01.eu")


def test_tenant_issued_certificate_authenticates_on_kafka(
    services: Runtime, kafka_admin: AdminClient, device: Device, kafka_topic: str
) -> None:
    # given a server-generated certificate from the tenant's issuing CA
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    assert issued.key_pem is not None
    config = client_config(services, certificate_pem=issued.chain_pem, key_pem=issued.key_pem)
    tenant: Tenant = device.tenant
    principal = device.group.kafka_principal
    assert principal == f"User:{tenant.slug}.sensors"
    # when its group's principal may write to a topic prefix
    prefix = kafka_topic.rsplit(".", 2)[0] + "."
    grant_group(kafka_admin, principal=principal, topic_prefix=prefix, consumer_group_prefix=f"{tenant.slug}.")
    try:
        # then the broker accepts the chain, maps the subject to the group principal, and acks
        assert produce_one(config, kafka_topic, b"from a tenant-issued certificate") is None
    finally:
        revoke_all(kafka_admin, principal)


def test_revocation_is_published_over_http(
    services: Runtime, device: Device, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    with django_capture_on_commit_callbacks(execute=True):
        certificate_revoke(actor=ACTOR, certificate=issued.certificate, reason="key_compromise")
    authority = CertificateAuthority.objects.get(tenant=device.tenant)
    url = f"http://127.0.0.1:{services.ports.crl}/crl/{crl_name(authority)}.crl"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"] == "application/pkix-crl"
        crl = x509.load_der_x509_crl(response.read())
    assert crl.get_revoked_certificate_by_serial_number(int(issued.certificate.serial, 16)) is not None
    leaf = x509.load_pem_x509_certificate(issued.certificate.certificate_pem.encode())
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == services.crl_url(crl_name(authority))
