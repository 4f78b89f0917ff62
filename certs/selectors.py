"""Reads of the PKI's records."""

from __future__ import annotations

from certs.models import Certificate
from devices.models import Device


def device_active_certificate(*, device: Device) -> Certificate | None:
    """The device's newest active certificate (its tenant is the device's), or None."""
    return (
        Certificate.objects.filter(tenant_id=device.tenant_id, device=device, status=Certificate.Status.ACTIVE)
        .order_by("-not_before", "-pk")
        .first()
    )
