"""Reads of the PKI's records: a device's certificates as a person sees them, its active one,
and what expires soon.  Every read is scoped by the caller's tenants or device."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import QuerySet
from django.utils import timezone

from certs.models import Certificate
from devices.models import Device
from tenants import policy
from tenants.models import Tenant

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


def device_certificates(*, device: Device, limit: int = 50) -> list[DeviceCertificate]:
    """``device``'s certificates, newest first, with their state now."""
    now = timezone.now()
    rows = Certificate.objects.filter(tenant_id=device.tenant_id, device=device).order_by("-created_at")[:limit]
    return [DeviceCertificate(certificate=c, state=certificate_state(c, now=now)) for c in rows]


def device_certificate_get(*, device: Device, serial: str) -> Certificate | None:
    return (
        Certificate.objects.filter(tenant_id=device.tenant_id, device=device, serial=serial.lower())
        .select_related("ca", "tenant")
        .first()
    )


def certificates_expiring(*, tenants: QuerySet[Tenant], within: dt.timedelta = EXPIRING_WITHIN) -> QuerySet:
    """Usable certificates (active, not yet expired) of ``tenants`` whose validity ends
    within ``within``."""
    now = timezone.now()
    return Certificate.objects.filter(
        tenant__in=tenants, status=Certificate.Status.ACTIVE, not_after__gt=now, not_after__lte=now + within
    )


def device_active_certificate(*, device: Device) -> Certificate | None:
    """The device's newest active certificate (its tenant is the device's), or None."""
    return (
        Certificate.objects.filter(tenant_id=device.tenant_id, device=device, status=Certificate.Status.ACTIVE)
        .order_by("-not_before", "-pk")
        .first()
    )
