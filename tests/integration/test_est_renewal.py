"""EST re-enrollment through the real nginx and web app: the device authenticates with its
current certificate in the TLS handshake and gets a new one; old and new overlap."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from django.test import Client

from certs import ca
from certs.models import Certificate, CertificateAuthority
from certs.platform_pki import PlatformPki
from certs.principals import device_subject
from certs.services import Issued, ca_issuer, certificate_issue_generated, certificate_revoke
from config.env import Runtime
from devices.models import Device, DeviceGroup, Stream
from ingest.kafka import client_config
from tenants.audit import Actor
from tenants.services import tenant_create
from tests.conftest import unique_slug

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")


def make_device(slug: str | None = None) -> Device:
    tenant = tenant_create(actor=ACTOR, slug=slug or unique_slug("t"), name="EST test")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject="s")  # fmt: skip
    return Device.objects.create(tenant=tenant, group=group, device_id="meter-7")


@pytest.fixture
def device(services: Runtime, monkeypatch: Any) -> Device:
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
    return make_device()


def csr_der(key: Any) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(ca.name(CN="ignored")).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def est(services: Runtime, tmp_path: Path, path: str, *, chain_pem: str | None = None, key_pem: str | None = None,
        body: bytes | None = None) -> tuple[int, bytes]:  # fmt: skip
    context = ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle))
    if chain_pem and key_pem:
        (tmp_path / "c.pem").write_text(chain_pem)
        (tmp_path / "c.key").write_text(key_pem)
        context.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    request = urllib.request.Request(
        f"https://127.0.0.1:{services.ports.web}/.well-known/est/{path}",
        data=body,
        headers={"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def reenroll(services: Runtime, tmp_path: Path, slug: str, issued: Issued, new_key: Any) -> tuple[int, bytes]:
    return est(services, tmp_path, f"{slug}/simplereenroll", chain_pem=issued.chain_pem, key_pem=issued.key_pem,
               body=base64.encodebytes(csr_der(new_key)))  # fmt: skip


def kafka_accepts(services: Runtime, chain_pem: str, key_pem: str) -> bool:
    try:
        config = client_config(services, certificate_pem=chain_pem, key_pem=key_pem)
        AdminClient({**config, "socket.timeout.ms": 3000}).list_topics(timeout=6)
    except KafkaException:
        return False
    return True


def test_device_renews_with_its_current_certificate(services: Runtime, device: Device, tmp_path: Path) -> None:
    # given a device holding a valid certificate, and a new key of its own
    current = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    new_key = ca.generate_key()
    # when it re-enrolls over EST, authenticated by the TLS handshake
    status, body = reenroll(services, tmp_path, device.tenant.slug, current, new_key)
    # then it gets a certificate for its new key, with the platform's subject
    assert status == 200, body
    (renewed,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    assert renewed.public_key().public_numbers() == new_key.public_key().public_numbers()
    old = Certificate.objects.get(serial=current.certificate.serial)
    new = Certificate.objects.get(serial=format(renewed.serial_number, "x"))
    # (a credential of its own: a new credential id, so a new Kafka principal)
    credential_id = new.kafka_principal.rsplit(".", 1)[1]
    assert new.kafka_principal != old.kafka_principal
    assert renewed.subject == device_subject(tenant=device.tenant.slug, group="sensors", device="meter-7",
                                             credential_id=credential_id)  # fmt: skip
    assert (old.status, new.status, new.origin) == ("superseded", "active", "est_renewal")
    assert old.superseded_by == new
    assert old.overlap_until is not None
    # and during the overlap both work on Kafka
    new_chain = (
        ca.certificate_pem(renewed).decode() + CertificateAuthority.objects.get(tenant=device.tenant).certificate_pem
    )
    new_key_pem = ca.private_key_pem(new_key).decode()
    assert kafka_accepts(services, current.chain_pem, current.key_pem or "")
    assert kafka_accepts(services, new_chain, new_key_pem)
    # and renewing again with the superseded one is refused: use the newest
    again, body = reenroll(services, tmp_path, device.tenant.slug, current, ca.generate_key())
    assert again == 409
    assert b'"certificate_superseded"' in body


def test_cacerts_is_the_pkcs7_of_the_tenant_ca(services: Runtime, device: Device, tmp_path: Path) -> None:
    status, body = est(services, tmp_path, f"{device.tenant.slug}/cacerts")
    assert status == 200
    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    assert cert.subject.rfc4514_string() == f"CN={device.tenant.slug} issuing CA,O={device.tenant.slug}"
    assert est(services, tmp_path, "no-such-tenant/cacerts")[0] == 404


def _expired_certificate(device: Device) -> tuple[str, str]:
    """A certificate of the device's tenant CA that expired yesterday."""
    authority = CertificateAuthority.objects.get(tenant=device.tenant)
    issuer = ca_issuer(authority)
    key = ca.generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(device_subject(tenant=device.tenant.slug, group="sensors", device=device.device_id))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://localhost/crl/x.crl")], None, None, None)]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )  # fmt: skip
    return ca.certificate_pem(cert).decode() + authority.certificate_pem, ca.private_key_pem(key).decode()


def test_renewal_refusals_have_stable_codes(
    services: Runtime, device: Device, tmp_path: Path, monkeypatch: Any
) -> None:
    slug = device.tenant.slug
    body = base64.encodebytes(csr_der(ca.generate_key()))
    # no certificate at all
    status, answer = est(services, tmp_path, f"{slug}/simplereenroll", body=body)
    assert (status, b'"client_certificate_required"' in answer) == (401, True)
    # an expired certificate
    chain, key = _expired_certificate(device)
    status, answer = est(services, tmp_path, f"{slug}/simplereenroll", chain_pem=chain, key_pem=key, body=body)
    assert (status, b'"certificate_expired"' in answer) == (401, True), answer
    # another tenant's label, answered like a label that does not exist
    other = make_device(unique_slug("t"))
    mine = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    wrong, answer = reenroll(services, tmp_path, other.tenant.slug, mine, ca.generate_key())
    missing, missing_answer = reenroll(services, tmp_path, "no-such-tenant", mine, ca.generate_key())
    assert (wrong, missing) == (404, 404)
    assert answer.replace(other.tenant.slug.encode(), b"X") == missing_answer.replace(b"no-such-tenant", b"X")
    # a malformed CSR, and one whose signature does not verify
    status, answer = est(services, tmp_path, f"{slug}/simplereenroll", chain_pem=mine.chain_pem, key_pem=mine.key_pem,
                         body=b"not base64 at all!")  # fmt: skip
    assert (status, b'"malformed_csr"' in answer) == (400, True)
    der = bytearray(csr_der(ca.generate_key(ca.KeyType.RSA_2048)))
    der[-5] ^= 0xFF
    status, answer = est(services, tmp_path, f"{slug}/simplereenroll", chain_pem=mine.chain_pem, key_pem=mine.key_pem,
                         body=base64.encodebytes(bytes(der)))  # fmt: skip
    assert (status, b'"bad_csr_signature"' in answer) == (400, True)
    # a revoked certificate, once nginx has re-read the CRLs
    certificate_revoke(actor=ACTOR, certificate=mine.certificate, reason="key_compromise")
    deadline = time.monotonic() + 20
    while True:
        status, answer = reenroll(services, tmp_path, slug, mine, ca.generate_key())
        if status == 403 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (status, b'"certificate_revoked"' in answer) == (403, True), answer
    assert Certificate.objects.filter(tenant=device.tenant, origin="est_renewal").count() == 0


def test_headers_without_the_proxy_secret_count_for_nothing(device: Device) -> None:
    # given a local process that reaches the app directly and claims a verified certificate
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    forged = Client().post(
        f"/.well-known/est/{device.tenant.slug}/simplereenroll",
        data=base64.encodebytes(csr_der(ca.generate_key())),
        content_type="application/pkcs10",
        headers={"X-Sluice-Client-Verify": "SUCCESS", "X-Sluice-Client-Cert": issued.certificate.certificate_pem,
                 "X-Sluice-Proxy-Secret": "guess"},
        secure=True,
    )  # fmt: skip
    # then it is treated as having no certificate at all
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "client_certificate_required"
