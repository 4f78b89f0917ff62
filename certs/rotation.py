"""The PKI's periodic upkeep, run by Celery beat (``certs.pki_rotate``).

One pass, under a Redis lock so two beats never overlap, and idempotent so a repeated or
interrupted pass does no harm:

1. retire superseded certificates whose overlap window has ended (revoke: superseded);
2. mark certificates inside their group's renewal window as due; for server-generated
   ones, issue a successor whose new key waits, encrypted, for the device (EST
   serverkeygen); CSR-based ones wait for the device to re-enroll;
3. rotate tenant issuing CAs that near their end (the old one keeps being trusted until
   its certificates have expired, then is retired);
4. republish CRLs (tenant and root) well before their nextUpdate.

Every action writes an audit event.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from certs import ca, crl_files, services
from certs.models import Certificate, CertificateAuthority
from certs.platform_pki import ensure_root
from config.errors import Conflict, SluiceError
from devices.models import DeviceGroup
from tenants.audit import Actor, audit_record
from tenants.rights import rights_changed

LOCK_NAME = "sluice:lock:pki-rotate"
# Generous: a run issues and publishes per CA; an expiring lock would let a second beat in.
LOCK_TIMEOUT = 1800
CA_ROTATE_BEFORE = dt.timedelta(days=365)
CRL_REFRESH_BEFORE = dt.timedelta(hours=12)
ACTOR = Actor.system("pki-rotate")


@dataclass
class RotationReport:
    skipped: str = ""
    retired: list[str] = field(default_factory=list)
    due: list[str] = field(default_factory=list)
    successors: list[str] = field(default_factory=list)
    cas_rotated: list[str] = field(default_factory=list)
    cas_retired: list[str] = field(default_factory=list)
    crls_refreshed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _lock() -> redis.lock.Lock:
    client = redis.Redis.from_url(settings.SLUICE_RUNTIME.redis_url(), socket_timeout=5)
    return client.lock(LOCK_NAME, timeout=LOCK_TIMEOUT, blocking=False)


def pki_rotate() -> RotationReport:
    lock = _lock()
    if not lock.acquire():
        return RotationReport(skipped="another rotation holds the lock")
    try:
        report = RotationReport()
        now = timezone.now()
        _retire_superseded(now, report)
        _mark_due_and_renew(now, report)
        _rotate_cas(now, report)
        _refresh_crls(now, report)
        return report
    finally:
        lock.release()


def _retire_superseded(now: dt.datetime, report: RotationReport) -> None:
    ended = Certificate.objects.filter(status=Certificate.Status.SUPERSEDED, overlap_until__lte=now)
    report.retired += services.certificates_retire(actor=ACTOR, certificates=list(ended.select_related("ca", "tenant")))


def _mark_due_and_renew(now: dt.datetime, report: RotationReport) -> None:
    # One query per device group: its renewal window decides which certificates are due.
    for group in DeviceGroup.objects.all():
        window_end = now + dt.timedelta(days=group.cert_renewal_window_days)
        in_window = Certificate.objects.filter(
            status=Certificate.Status.ACTIVE, device__group=group, not_after__lte=window_end
        ).select_related("device__group", "device__tenant", "tenant")
        for certificate in in_window.filter(renewal_due=False):
            with transaction.atomic():
                Certificate.objects.filter(pk=certificate.pk).update(renewal_due=True)
                audit_record(
                    actor=ACTOR, tenant=certificate.tenant, action="certificate.renewal_due", obj=certificate,
                    after={"serial": certificate.serial, "not_after": certificate.not_after.isoformat()},
                )  # fmt: skip
            report.due.append(certificate.serial)
        # Server-managed certificates get a successor; one that fails (a disabled device, a
        # suspended tenant) stays ACTIVE and due, so the next run tries again.
        for certificate in in_window.exclude(origin__in=Certificate.DEVICE_KEY_ORIGINS):
            try:
                with transaction.atomic():
                    report.successors.append(_issue_successor(certificate, now).serial)
            except SluiceError as error:
                report.errors.append(f"{certificate.serial}: {error.message}")


def _issue_successor(certificate: Certificate, now: dt.datetime) -> Certificate:
    """A successor with a new server-generated key, kept encrypted until collected."""
    device = certificate.device
    assert device is not None
    key_type = ca.KeyType(device.group.cert_key_type)
    key = ca.generate_key(key_type)
    issued = services.issue_for_key(actor=ACTOR, device=device, public_key=key.public_key(), key_type=key_type,
                                    origin=Certificate.Origin.RENEWAL)  # fmt: skip
    encrypted = ca.private_key_pem(key, settings.SLUICE_RUNTIME.key_encryption_key).decode()
    Certificate.objects.filter(pk=issued.certificate.pk).update(pending_key_encrypted=encrypted)
    overlap_until = max(certificate.not_after, now + services.RENEWAL_OVERLAP)
    changed = Certificate.objects.filter(pk=certificate.pk, status=Certificate.Status.ACTIVE).update(
        status=Certificate.Status.SUPERSEDED, superseded_by=issued.certificate, overlap_until=overlap_until
    )
    if not changed:  # renewed or revoked since it was read: roll this successor back
        raise Conflict(f"Certificate {certificate.serial} changed during rotation.")
    rights_changed(tenant_id=certificate.tenant_id, certificates=[certificate.serial])
    return issued.certificate


def _rotate_cas(now: dt.datetime, report: RotationReport) -> None:
    ending = CertificateAuthority.objects.filter(
        status=CertificateAuthority.Status.ACTIVE, not_after__lte=now + CA_ROTATE_BEFORE
    )
    for authority in ending.select_related("tenant"):
        new = services.tenant_ca_create(actor=ACTOR, tenant=authority.tenant)
        report.cas_rotated.append(f"{authority.serial} -> {new.serial}")
    # A retiring CA is retired once nothing it issued can still be valid.
    for authority in CertificateAuthority.objects.filter(status=CertificateAuthority.Status.RETIRING):
        still_valid = authority.issued.filter(not_after__gt=now).exclude(status=Certificate.Status.REVOKED).exists()
        if not still_valid or authority.not_after <= now:
            with transaction.atomic():
                CertificateAuthority.objects.filter(pk=authority.pk).update(status=CertificateAuthority.Status.RETIRED)
                audit_record(actor=ACTOR, tenant=authority.tenant, action="ca.retire", obj=authority,
                             after={"serial": authority.serial})  # fmt: skip
            report.cas_retired.append(authority.serial)


def _refresh_crls(now: dt.datetime, report: RotationReport) -> None:
    stale = CertificateAuthority.objects.exclude(status=CertificateAuthority.Status.RETIRED).filter(
        Q(crl_next_update__isnull=True) | Q(crl_next_update__lte=now + CRL_REFRESH_BEFORE)
    )
    for authority in stale.select_related("tenant"):
        services.crl_publish(authority=authority)
        report.crls_refreshed.append(services.crl_name(authority))
    runtime = settings.SLUICE_RUNTIME
    # A CA made before nginx's bundle held anchors (an older state directory) gets one.
    trusted = CertificateAuthority.objects.exclude(status=CertificateAuthority.Status.RETIRED)
    for authority in trusted.select_related("tenant"):
        if not crl_files.has_anchor(runtime, services.crl_name(authority)):
            with transaction.atomic():
                services.anchor_publish(authority=authority)
            report.crls_refreshed.append(f"{services.crl_name(authority)} (anchor)")
    if not crl_files.root_crl_due(runtime, now=now):
        return
    crl_files.publish_root_crl(runtime, ensure_root(runtime))
    report.crls_refreshed.append(crl_files.ROOT_CRL_NAME)
