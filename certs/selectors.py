"""Reads of the PKI's records: certificates and tenant CAs, a device's certificates as a
person sees them, its active one, and what expires soon.  Every function takes the caller's
``Scope`` (``tenants.scoping``) as a required keyword: a tenant scope never returns another
tenant's rows, and a device outside the scope has no certificates."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from certs.models import Certificate, CertificateAuthority, Job
from config.errors import NotFound
from devices.models import Consumer, Device
from tenants import policy
from tenants.scoping import Scope, restrict

EXPIRING_WITHIN = dt.timedelta(days=30)
EXPIRED = "expired"


def certificate_state(certificate: Certificate, *, now: dt.datetime) -> str:
    """``active``, ``superseded`` (renewed, still valid in its overlap), ``revoked`` or
    ``expired``: what the certificate amounts to now, not only its stored status."""
    if certificate.status == Certificate.Status.REVOKED:
        return Certificate.Status.REVOKED
    if certificate.not_after <= now:
        return EXPIRED
    if certificate.status == Certificate.Status.SUPERSEDED and not policy.certificate_in_overlap(
        certificate.status, certificate.overlap_until, now
    ):
        return EXPIRED
    return certificate.status


@dataclass(frozen=True)
class DeviceCertificate:
    certificate: Certificate
    state: str

    @property
    def revocable(self) -> bool:
        return self.state in (Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED)


def certificate_list(*, scope: Scope) -> QuerySet[Certificate]:
    return restrict(Certificate.objects.select_related("ca", "tenant"), scope=scope)


def certificate_get(*, scope: Scope, serial: str) -> Certificate:
    """The certificate with ``serial`` (any case) in ``scope``; NotFound otherwise."""
    found = certificate_list(scope=scope).filter(serial=serial.lower()).first()
    if found is None:
        raise NotFound(f"No certificate {serial}.")
    return found


def _of_device(scope: Scope, device: Device) -> QuerySet[Certificate]:
    return certificate_list(scope=scope).filter(tenant_id=device.tenant_id, device=device)


def consumer_certificate_list(*, scope: Scope, consumer: Consumer) -> QuerySet[Certificate]:
    """Every certificate of ``consumer`` (none when it is outside ``scope``)."""
    return restrict(Certificate.objects.select_related("ca", "consumer"), scope=scope).filter(consumer=consumer)


def device_certificate_list(*, scope: Scope, device: Device) -> QuerySet[Certificate]:
    """Every certificate of ``device`` (none when the device is outside ``scope``)."""
    return _of_device(scope, device)


def device_certificates(*, scope: Scope, device: Device, limit: int = 50) -> list[DeviceCertificate]:
    """``device``'s certificates, newest first, with their state now."""
    now = timezone.now()
    rows = _of_device(scope, device).order_by("-created_at")[:limit]
    return [DeviceCertificate(certificate=c, state=certificate_state(c, now=now)) for c in rows]


def device_certificate_get(*, scope: Scope, device: Device, serial: str) -> Certificate | None:
    return _of_device(scope, device).filter(serial=serial.lower()).first()


def certificates_expiring(*, scope: Scope, within: dt.timedelta = EXPIRING_WITHIN) -> QuerySet[Certificate]:
    """Usable certificates (active, not yet expired) of ``scope``'s tenants whose validity
    ends within ``within``."""
    now = timezone.now()
    return certificate_list(scope=scope).filter(
        status=Certificate.Status.ACTIVE, not_after__gt=now, not_after__lte=now + within
    )


def certificates_at_risk(*, scope: Scope, within: dt.timedelta = EXPIRING_WITHIN) -> QuerySet[Certificate]:
    """Active device certificates of ``scope`` expiring within ``within`` without a successor:
    the device holds no other active certificate that lasts longer (rotation's successor
    supersedes the old one, so a renewed certificate is no longer active).  Soonest first."""
    now = timezone.now()
    successors = Certificate.objects.filter(
        device_id=OuterRef("device_id"), status=Certificate.Status.ACTIVE, not_after__gt=OuterRef("not_after")
    )
    return (
        certificates_expiring(scope=scope, within=within)
        .filter(device__isnull=False, not_after__gt=now)
        .exclude(Exists(successors))
        .select_related("device__group")
        .order_by("not_after", "pk")
    )


def certificate_at_risk_get(*, scope: Scope, serial: str) -> Certificate:
    """The at-risk certificate with ``serial`` of ``scope`` (NotFound otherwise: another
    tenant's, or one renewed meanwhile)."""
    found = certificates_at_risk(scope=scope).filter(serial=serial.lower()).first()
    if found is None:
        raise NotFound(f"No certificate {serial} that needs renewing.")
    return found


def device_active_certificate(*, scope: Scope, device: Device) -> Certificate | None:
    """The device's newest active certificate (its tenant is the device's), or None."""
    return _of_device(scope, device).filter(status=Certificate.Status.ACTIVE).order_by("-not_before", "-pk").first()


def authority_list(*, scope: Scope, current: bool = False) -> QuerySet[CertificateAuthority]:
    """Tenant CAs of ``scope``; ``current``: without the retired ones."""
    authorities = restrict(CertificateAuthority.objects.select_related("tenant"), scope=scope)
    if current:
        authorities = authorities.exclude(status=CertificateAuthority.Status.RETIRED)
    return authorities


def job_list(*, scope: Scope) -> QuerySet[Job]:
    return restrict(Job.objects.select_related("tenant"), scope=scope)


def job_get(*, scope: Scope, pk: int) -> Job:
    found = job_list(scope=scope).filter(pk=pk).first()
    if found is None:
        raise NotFound(f"No job {pk}.")
    return found
