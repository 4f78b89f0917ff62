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

from certs import ca, crl_files
from certs.models import Certificate, CertificateAuthority
from certs.platform_pki import ensure_root
from certs.rotation import LOCK_NAME, pki_rotate
from certs.services import certificate_issue_from_csr, certificate_issue_generated, certificate_renew
from config.env import Runtime, load_runtime
from config.errors import Conflict
from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
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
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
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
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
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


def test_est_renewed_certificates_are_only_marked_due(own_pki: Runtime) -> None:
    # given a certificate the device renewed over EST with its own key
    device = make_device()
    first = certificate_issue_from_csr(actor=ACTOR, device=device, csr_pem=csr_pem(ca.generate_key())).certificate
    renewed = certificate_renew(presented=first, csr_pem=csr_pem(ca.generate_key())).certificate
    assert renewed.origin == "est_renewal"
    # when it enters its renewal window
    with time_machine.travel(dt.datetime.now(dt.UTC) + 340 * DAY):
        report = pki_rotate()
    # then it is due, but the server generated no key for it: only the device holds its key
    assert renewed.serial in report.due
    assert report.successors == []
    renewed.refresh_from_db()
    assert (renewed.status, renewed.renewal_due) == ("active", True)


def test_a_successor_that_could_not_be_issued_is_tried_again(own_pki: Runtime) -> None:
    # given a server-managed certificate whose device is disabled when its window opens
    device = make_device()
    generated = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    Device.objects.filter(pk=device.pk).update(status="disabled")
    later = dt.datetime.now(dt.UTC) + 340 * DAY
    with time_machine.travel(later):
        failed = pki_rotate()
    # then the failure is reported and the certificate stays active and due
    assert (failed.successors, len(failed.errors)) == ([], 1)
    generated.refresh_from_db()
    assert (generated.status, generated.renewal_due) == ("active", True)
    # when the device is enabled again, the next pass issues the successor
    Device.objects.filter(pk=device.pk).update(status="active")
    with time_machine.travel(later + DAY):
        retried = pki_rotate()
    assert len(retried.successors) == 1
    generated.refresh_from_db()
    assert generated.status == "superseded"


def test_retirement_publishes_one_crl_per_ca(own_pki: Runtime) -> None:
    # given three superseded certificates of one CA whose overlap has ended
    device = make_device()
    olds = [certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
            for _ in range(3)]  # fmt: skip
    Certificate.objects.filter(pk__in=[o.pk for o in olds]).update(
        status="superseded", overlap_until=dt.datetime.now(dt.UTC) + DAY
    )
    authority = CertificateAuthority.objects.get(tenant=device.tenant)
    # when rotation retires them
    with time_machine.travel(dt.datetime.now(dt.UTC) + 2 * DAY):
        report = pki_rotate()
    # then all three are revoked with a single new CRL that lists them all
    assert sorted(report.retired) == sorted(o.serial for o in olds)
    before = authority.crl_number
    authority.refresh_from_db()
    assert authority.crl_number == before + 1
    crl = x509.load_der_x509_crl(bytes(authority.crl_der))
    assert {format(r.serial_number, "x") for r in crl} == {o.serial for o in olds}


def test_concurrent_renewals_with_one_certificate_issue_one_successor(own_pki: Runtime) -> None:
    # given two requests that both read the same still-active certificate
    device = make_device()
    first = certificate_issue_from_csr(actor=ACTOR, device=device, csr_pem=csr_pem(ca.generate_key())).certificate
    stale = Certificate.objects.get(pk=first.pk)
    certificate_renew(presented=first, csr_pem=csr_pem(ca.generate_key()))
    # when the second one renews with its stale copy, then it is refused and nothing is added
    with pytest.raises(Conflict) as refused:
        certificate_renew(presented=stale, csr_pem=csr_pem(ca.generate_key()))
    assert refused.value.code == "certificate_superseded"
    assert Certificate.objects.filter(device=device, origin="est_renewal").count() == 1


@pytest.mark.parametrize("change", ["suspend_tenant", "disable_device"])
def test_a_successor_is_not_handed_to_a_suspended_tenant_or_disabled_device(own_pki: Runtime, change: str) -> None:
    # given a successor waiting for its device
    device = make_device(lifetime=1, window=30)
    generated = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    assert len(pki_rotate().successors) == 1
    generated.refresh_from_db()
    # when the tenant is suspended or the device disabled
    if change == "suspend_tenant":
        Tenant.objects.filter(pk=device.tenant_id).update(status="suspended")
    else:
        Device.objects.filter(pk=device.pk).update(status="disabled")
    # then the key is not handed out, and it stays waiting
    response = collect(generated)
    expected = "tenant_suspended" if change == "suspend_tenant" else "device_disabled"
    assert (response.status_code, response.json()["error"]["code"]) == (403, expected)
    assert Certificate.objects.get(pk=generated.superseded_by_id).pending_key_encrypted != ""


def test_an_older_crl_never_replaces_a_newer_file(own_pki: Runtime) -> None:
    # given a CA whose CRL number 5 is published
    issuer = ensure_root(own_pki)
    newer = ca.build_crl(issuer=issuer, revoked=[], number=5, valid_for=DAY)
    older = ca.build_crl(issuer=issuer, revoked=[], number=4, valid_for=DAY)
    assert crl_files.write_crl(own_pki, "some-ca", newer)
    # when a CRL built earlier arrives late (its transaction committed after the newer one)
    written = crl_files.write_crl(own_pki, "some-ca", older)
    # then it is dropped and the file keeps number 5
    assert written is False
    published = x509.load_der_x509_crl((own_pki.crl_dir / "some-ca.crl").read_bytes())
    assert crl_files.crl_number(published) == 5


def test_a_revoked_row_is_refused_even_before_nginx_reloads(own_pki: Runtime) -> None:
    # given a certificate revoked in the database, still presented with nginx's SUCCESS verdict
    device = make_device()
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    Certificate.objects.filter(pk=issued.pk).update(status="revoked")
    # when it asks for anything, then the identity layer refuses it
    response = collect(issued)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "certificate_revoked")
