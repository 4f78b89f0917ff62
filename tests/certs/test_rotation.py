"""Background rotation under controlled time (time-machine), on a PKI of its own (a
separate state directory, so future-dated CRLs never reach the shared test stack), with the
real Redis for the lock; and once through a real Celery worker."""

from __future__ import annotations

import base64
import datetime as dt
import email
import os
from pathlib import Path
from typing import Any

import pytest
import redis
import time_machine
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from django.conf import settings as django_settings
from django.test import Client

from certs import ca
from certs.models import Certificate, CertificateAuthority
from certs.rotation import LOCK_NAME, pki_rotate
from certs.services import certificate_issue_from_csr, certificate_issue_generated
from config.env import Runtime, load_runtime
from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
from tenants.models import AuditEvent
from tenants.services import tenant_create
from tests.conftest import unique_slug

pytestmark = [pytest.mark.integration, pytest.mark.django_db]
ACTOR = Actor.system("test")
DAY = dt.timedelta(days=1)


@pytest.fixture
def own_pki(services: Runtime, settings: Any, tmp_path: Path, monkeypatch: Any) -> Runtime:
    """The run's Redis, but a PKI and CRL directory of this test's own."""
    runtime = load_runtime({
        "SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path),
        "SLUICE_PORT_OFFSET": os.environ.get("SLUICE_PORT_OFFSET", "10000"),
        "SLUICE_REDIS_PASSWORD": services.redis_password, "SLUICE_KEK": "rotation-test-kek",
    })  # fmt: skip
    settings.SLUICE_RUNTIME = runtime
    monkeypatch.setattr("devices.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
    return runtime


def make_device(*, lifetime: int = 365, window: int = 30) -> Device:
    tenant = tenant_create(actor=ACTOR, slug=unique_slug("t"), name="Rotation")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject="s", cert_lifetime_days=lifetime,
                                       cert_renewal_window_days=window)  # fmt: skip
    return Device.objects.create(tenant=tenant, group=group, device_id="d-1")


def csr_pem(key: Any) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(ca.name(CN="x")).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def collect(presented: Certificate) -> Any:
    """EST serverkeygen as nginx would forward it (the proxy secret and the verified cert)."""
    return Client().post(
        f"/.well-known/est/{presented.tenant.slug}/serverkeygen", data=b"", content_type="application/pkcs10",
        headers={"X-Sluice-Proxy-Secret": django_settings.SLUICE_PROXY_SECRET, "X-Sluice-Client-Verify": "SUCCESS",
                 "X-Sluice-Client-Cert": presented.certificate_pem},
        secure=True,
    )  # fmt: skip


def test_certificates_in_their_window_are_renewed_or_marked_due(own_pki: Runtime) -> None:
    # given a generated and a CSR-based certificate, one year long, 30-day renewal window
    device = make_device()
    generated = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    from_csr = certificate_issue_from_csr(actor=ACTOR, device=device, csr_pem=csr_pem(ca.generate_key())).certificate
    # when rotation runs now, then nothing is due
    assert pki_rotate().due == []

    # when it runs 340 days later
    with time_machine.travel(dt.datetime.now(dt.UTC) + 340 * DAY):
        report = pki_rotate()
        again = pki_rotate()
    # then both are due; the generated one got a successor whose key waits, encrypted
    assert sorted(report.due) == sorted([generated.serial, from_csr.serial])
    assert len(report.successors) == 1
    generated.refresh_from_db()
    from_csr.refresh_from_db()
    assert (generated.status, from_csr.status, from_csr.renewal_due) == ("superseded", "active", True)
    successor = generated.superseded_by
    assert successor is not None
    assert successor.pending_key_encrypted.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # and a second pass changes nothing (idempotent)
    assert (again.due, again.successors, again.retired) == ([], [], [])
    assert AuditEvent.objects.filter(action="certificate.renewal_due").count() == 2

    # when the device collects its successor over EST serverkeygen, authenticated by the old one
    response = collect(generated)
    assert response.status_code == 200, response.content
    parts = [p for p in email.message_from_bytes(
        b"Content-Type: " + response["Content-Type"].encode() + b"\r\n\r\n" + response.content).walk()
        if not p.is_multipart()]  # fmt: skip
    key = serialization.load_der_private_key(base64.b64decode(parts[0].get_payload()), password=None)
    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(parts[1].get_payload()))
    # then key and certificate belong together, it is the successor, and it is handed out once
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert format(cert.serial_number, "x") == successor.serial
    successor.refresh_from_db()
    assert successor.pending_key_encrypted == ""
    second = collect(generated)
    assert (second.status_code, second.json()["error"]["code"]) == (404, "no_pending_certificate")


def test_superseded_certificates_are_retired_after_the_overlap(own_pki: Runtime) -> None:
    device = make_device()
    old = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    Certificate.objects.filter(pk=old.pk).update(status="superseded", overlap_until=dt.datetime.now(dt.UTC) + DAY)
    assert pki_rotate().retired == []
    with time_machine.travel(dt.datetime.now(dt.UTC) + 2 * DAY):
        report = pki_rotate()
    assert report.retired == [old.serial]
    old.refresh_from_db()
    assert (old.status, old.revocation_reason) == ("revoked", "superseded")
    authority = CertificateAuthority.objects.get(tenant=device.tenant)
    crl = x509.load_der_x509_crl(bytes(authority.crl_der))
    assert crl.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None


def test_tenant_ca_is_rotated_with_an_overlap(own_pki: Runtime, tmp_path: Path) -> None:
    # given a tenant CA with a certificate it issued
    device = make_device(lifetime=3650, window=1)
    first = CertificateAuthority.objects.get(tenant=device.tenant)
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    # when rotation runs within a year of the CA's end
    with time_machine.travel(first.not_after - 300 * DAY):
        report = pki_rotate()
        # then a new CA issues from now on, and the old one is still trusted (retiring)
        assert len(report.cas_rotated) == 1
        second = CertificateAuthority.objects.get(tenant=device.tenant, status="active")
        first.refresh_from_db()
        assert first.status == "retiring"
        cacerts = Client().get(f"/.well-known/est/{device.tenant.slug}/cacerts")
        assert len(pkcs7.load_der_pkcs7_certificates(base64.b64decode(cacerts.content))) == 2
        newer = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
        assert newer.certificate.ca == second
        assert issued.certificate.ca == first
        assert pki_rotate().cas_rotated == []
    # when the old CA's certificates have all expired, then it is retired
    with time_machine.travel(first.not_after + DAY):
        report = pki_rotate()
    assert report.cas_retired == [first.serial]
    assert AuditEvent.objects.filter(action__in=["ca.create", "ca.retire"], tenant_slug=device.tenant.slug).count() == 3


def test_crls_are_refreshed_before_they_lapse(own_pki: Runtime) -> None:
    device = make_device()
    authority = CertificateAuthority.objects.get(tenant=device.tenant)
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(hours=13)):
        report = pki_rotate()
    authority.refresh_from_db()
    assert authority.crl_number == 2
    assert any(name.startswith(device.tenant.slug) for name in report.crls_refreshed)


def test_a_second_rotation_waits_for_the_lock(own_pki: Runtime) -> None:
    client = redis.Redis.from_url(own_pki.redis_url())
    held = client.lock(LOCK_NAME, timeout=30)
    assert held.acquire(blocking=False)
    try:
        assert pki_rotate().skipped == "another rotation holds the lock"
    finally:
        held.release()
    assert pki_rotate().skipped == ""


@pytest.mark.django_db(transaction=True)
def test_rotation_runs_through_a_real_worker(services: Runtime, celery_worker: Any, monkeypatch: Any) -> None:
    # given a committed certificate already inside its window (1-day lifetime, 30-day window)
    monkeypatch.setattr("devices.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
    device = make_device(lifetime=1, window=30)
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    # when beat's task goes through Redis to a worker
    from certs.tasks import pki_rotate_task

    result = pki_rotate_task.delay().get(timeout=90)
    # then the worker renewed it, in the shared database
    assert issued.serial in result["due"]
    issued.refresh_from_db()
    assert issued.status == "superseded"
    assert issued.superseded_by is not None
