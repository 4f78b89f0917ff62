"""A device certificate from a tenant's issuing CA works on the real Kafka listener (the
client sends leaf + tenant CA, the broker trusts the platform root), and its CRL is served
over HTTP by nginx after a revocation."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from cryptography import x509

from certs.models import CertificateAuthority
from certs.platform_pki import PlatformPki
from certs.services import certificate_issue_generated, certificate_revoke, crl_name
from config.env import Runtime
from devices.models import Device, DeviceGroup, Stream
from ingest.kafka import client_config
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import tenant_create, tenant_delete
from tests.conftest import unique_slug
from tests.integration.test_kafka_mtls import grant_group, produce_one, revoke_all

# Transactional: the web app behind nginx reads the same database and must see the rows.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")


@pytest.fixture
def device(services: Runtime, django_capture_on_commit_callbacks: Callable[..., Any], monkeypatch: Any) -> Device:
    # Topic provisioning is covered by test_topic_provisioning.py; here only the PKI matters.
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
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
    # whose subject names its own credential id (UID, first in RFC 2253)
    principal = issued.certificate.kafka_principal
    credential_id = principal.rsplit(".", 1)[1]
    assert principal == f"User:{tenant.slug}.sensors.{credential_id}"
    leaf = x509.load_pem_x509_certificate(issued.certificate.certificate_pem.encode())
    assert leaf.subject.rfc4514_string() == f"UID={credential_id},CN=Sensor_01.eu,OU=sensors,O={tenant.slug}"
    # when that principal, and only it, may write to a topic prefix
    prefix = kafka_topic.rsplit(".", 2)[0] + "."
    grant_group(kafka_admin, principal=principal, topic_prefix=prefix, consumer_group_prefix=f"{tenant.slug}.")
    try:
        # then the broker accepts the chain, maps the subject (Java's RFC 2253 "UID=...") to
        # the credential's principal by the first mapping rule, and acks
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


def _metadata_error(config: dict[str, Any]) -> str | None:
    """None when a fresh client with ``config`` gets cluster metadata, else the error."""
    from confluent_kafka import KafkaException

    try:
        AdminClient({**config, "socket.timeout.ms": 3000}).list_topics(timeout=6)
    except KafkaException as exc:
        return str(exc)
    return None


def test_kafka_refuses_a_revoked_certificate(
    services: Runtime, device: Device, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # given two certificates of the same device, both working on the mTLS listener
    keep = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    lose = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    keep_config = client_config(services, certificate_pem=keep.chain_pem, key_pem=keep.key_pem or "")
    lose_config = client_config(services, certificate_pem=lose.chain_pem, key_pem=lose.key_pem or "")
    assert _metadata_error(keep_config) is None
    assert _metadata_error(lose_config) is None

    # when one is revoked
    with django_capture_on_commit_callbacks(execute=True):
        certificate_revoke(actor=ACTOR, certificate=lose.certificate, reason="key_compromise")

    # then, once the broker's JDK re-reads the CRL (it caches for ~30 s), new connections
    # with it fail the handshake, while the other certificate keeps working
    deadline = time.monotonic() + 75
    error = None
    while time.monotonic() < deadline and error is None:
        error = _metadata_error(lose_config)
        if error is None:
            time.sleep(3)
    assert error is not None, "the broker still accepts the revoked certificate"
    assert _metadata_error(keep_config) is None


def _https_get(services: Runtime, tmp_path: Path, chain_pem: str, key_pem: str, tenant: str) -> tuple[int, str]:
    """An empty re-enrollment through nginx: an endpoint that demands a client certificate.
    A certificate nginx accepted gets as far as the CSR check (400 malformed_csr)."""
    (tmp_path / "client.pem").write_text(chain_pem)
    (tmp_path / "client.key").write_text(key_pem)
    context = ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle))
    context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    url = f"https://127.0.0.1:{services.ports.web}/.well-known/est/{tenant}/simplereenroll"
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


ACCEPTED = 400  # the certificate passed; the (empty) CSR did not
REFUSED = 403  # certificate_revoked


def _await_status(
    services: Runtime, tmp_path: Path, issued: Any, tenant: str, wanted: Callable[[int], bool]
) -> tuple[int, str]:
    """Poll briefly: a revocation reaches nginx with its reload."""
    deadline = time.monotonic() + 20
    while True:
        status, body = _https_get(services, tmp_path, issued.chain_pem, issued.key_pem or "", tenant)
        if wanted(status) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.3)


def test_nginx_refuses_a_revoked_certificate(
    services: Runtime, device: Device, tmp_path: Path, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # given a device certificate that nginx accepts
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    tenant = device.tenant.slug
    status, body = _await_status(services, tmp_path, issued, tenant, lambda code: code == ACCEPTED)
    assert (status, '"malformed_csr"' in body) == (ACCEPTED, True), body
    # when it is revoked, then nginx (after its SIGHUP re-read of the CRLs) refuses it, and
    # the app says why
    with django_capture_on_commit_callbacks(execute=True):
        certificate_revoke(actor=ACTOR, certificate=issued.certificate, reason="superseded")
    status, body = _await_status(services, tmp_path, issued, tenant, lambda code: code == REFUSED)
    assert (status, '"certificate_revoked"' in body) == (REFUSED, True), body


def test_deleting_a_tenant_revokes_its_ca_for_kafka_and_nginx(
    services: Runtime, device: Device, tmp_path: Path, django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: Any,
) -> None:  # fmt: skip
    # given a working certificate of a tenant
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    config = client_config(services, certificate_pem=issued.chain_pem, key_pem=issued.key_pem or "")
    assert _metadata_error(config) is None
    tenant = device.tenant.slug
    assert _await_status(services, tmp_path, issued, tenant, lambda code: code == ACCEPTED)[0] == ACCEPTED
    authority = CertificateAuthority.objects.get(tenant=device.tenant)
    # when the tenant is deleted (its topics are another test's business)
    monkeypatch.setattr("ingest.tasks.topics_delete_task.delay", lambda *_: None)
    with django_capture_on_commit_callbacks(execute=True):
        tenant_delete(actor=ACTOR, tenant=device.tenant, confirm=device.tenant.slug)
    # then the root CRL lists its CA, and both nginx and the broker refuse the certificate
    root_crl = x509.load_der_x509_crl((services.crl_dir / "platform-root.crl").read_bytes())
    assert root_crl.get_revoked_certificate_by_serial_number(int(authority.serial, 16)) is not None
    status, body = _await_status(services, tmp_path, issued, tenant, lambda code: code == REFUSED)
    assert (status, '"certificate_revoked"' in body) == (REFUSED, True), body
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline and _metadata_error(config) is None:
        time.sleep(3)
    assert _metadata_error(config) is not None
