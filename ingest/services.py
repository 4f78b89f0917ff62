"""Ingest: who may write (``ingest_authorize``) and writing a request's records to Kafka
(``records_ingest``).

The destination of every record is the device's group's stream topic, read from the
database; nothing a device sends (body, headers, URL) names a tenant or a topic, so a device
can write to its own group's topic only.  Identity is re-read on every request, so revoking
a certificate, disabling a device or suspending a tenant takes effect at the next request.

A request is all or nothing up to Kafka: every record is parsed, rate-limited and validated
before the first is produced.  Kafka's answer is per record, so a Kafka failure can leave
part of a batch written; the error says so (see ``_kafka_failure``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from certs.models import Certificate
from config.errors import PermissionDenied, SchemaValidationFailed, ServiceUnavailable, Unauthenticated
from devices.models import Device, DeviceGroup
from ingest import ratelimit, records
from ingest.kafka import DeliveryOutcome, OutgoingRecord, ingest_producer
from ingest.registry import latest_schema
from tenants.models import Tenant

log = logging.getLogger("sluice.ingest")

MTLS_POLICIES = (DeviceGroup.CredentialPolicy.MTLS, DeviceGroup.CredentialPolicy.BOTH)
KAFKA_RETRY_AFTER = 5


@dataclass(frozen=True)
class Accepted:
    """Kafka acknowledged (acks=all) every record of the request."""

    topic: str
    offsets: list[tuple[int, int]]  # (partition, offset) per record, in request order

    def as_json(self) -> dict[str, object]:
        return {
            "accepted": len(self.offsets),
            "topic": self.topic,
            "records": [{"partition": p, "offset": o} for p, o in self.offsets],
        }


def ingest_authorize(*, certificate: Certificate) -> Device:
    """The device a verified client certificate may write for, or a 401/403 with a stable code.

    nginx already checked the chain, validity and CRL; this checks what only the database
    knows, freshly read: the certificate's own status (a revocation applies here before nginx
    re-reads the CRL), the device, the tenant, and the group's credential policy."""
    now = timezone.now()
    if certificate.status == Certificate.Status.REVOKED:
        when = f" at {certificate.revoked_at:%Y-%m-%d %H:%M:%S} UTC" if certificate.revoked_at else ""
        raise PermissionDenied(f"The client certificate was revoked{when}.", code="certificate_revoked")
    if certificate.status == Certificate.Status.SUPERSEDED and (
        certificate.overlap_until is None or certificate.overlap_until <= now
    ):
        raise PermissionDenied(
            "The client certificate was renewed and its overlap has ended; use the newest certificate.",
            code="certificate_superseded",
        )
    if certificate.not_after <= now:
        raise Unauthenticated("The client certificate has expired.", code="certificate_expired")
    device = (
        Device.objects.select_related("tenant", "group__stream__tenant").filter(pk=certificate.device_id).first()
        if certificate.device_id is not None
        else None
    )
    if device is None:
        raise PermissionDenied("The device of this certificate no longer exists.", code="unknown_device")
    group = device.group
    if not (device.tenant_id == certificate.tenant_id == group.tenant_id == group.stream.tenant_id):
        # Cannot happen through the services (they keep a device, its group and its stream in
        # one tenant); refuse rather than write across tenants if the data ever says otherwise.
        log.error("ingest: tenant mismatch for certificate %s (device %s)", certificate.serial, device.pk)
        raise PermissionDenied("This certificate may not write here.", code="tenant_mismatch")
    if device.tenant.status != Tenant.Status.ACTIVE:
        raise PermissionDenied(f"Tenant '{device.tenant.slug}' is suspended.", code="tenant_suspended")
    if device.status != Device.Status.ACTIVE:
        raise PermissionDenied(f"Device '{device.device_id}' is {device.status}.", code="device_disabled")
    if group.credential_policy not in MTLS_POLICIES:
        raise PermissionDenied(
            f"Device group '{group.slug}' accepts OAuth2 tokens only, not client certificates.",
            code="credential_not_allowed",
        )
    return device


def records_ingest(*, device: Device, content_type: str, body: bytes, request_id: str) -> Accepted:
    """Parse, rate-limit, validate and produce the records of one request; returns only when
    Kafka acknowledged every one (``acks=all``)."""
    records.check_content_type(content_type)
    parsed = records.parse_body(body)
    group, tenant = device.group, device.tenant
    ratelimit.rate_limit_take(
        ratelimit.Budget(
            tenant_id=tenant.pk,
            device_pk=device.pk,
            device_requests_per_second=group.rate_limit_per_second,
            tenant_records_per_second=tenant.max_records_per_second,
            tenant_bytes_per_second=tenant.max_bytes_per_second,
            records=len(parsed.records),
            body_bytes=len(body),
        )
    )
    schema = latest_schema(group.schema_subject)
    records.validate(parsed, schema)
    topic = group.stream.topic
    headers = [
        ("sluice-tenant", tenant.slug.encode()),
        ("sluice-group", group.slug.encode()),
        ("sluice-device", device.device_id.encode()),
        ("sluice-request-id", request_id.encode()),
    ]
    key = device.device_id.encode()
    try:
        outgoing = [OutgoingRecord(key=key, value=records.wire_value(r, schema), headers=headers)
                    for r in parsed.records]  # fmt: skip
    except (ValueError, TypeError, OverflowError) as exc:
        # The validator and the Avro writer disagree (an edge of fastavro); refuse it all.
        raise SchemaValidationFailed(
            f"A record could not be encoded with schema '{schema.subject}': {exc}; nothing was produced."
        ) from None
    outcome = ingest_producer(settings.SLUICE_RUNTIME).produce_and_wait(topic, outgoing)
    if not outcome.complete:
        raise _kafka_failure(topic, outcome)
    if ratelimit.device_seen_due(device.pk):
        Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now())
    return Accepted(topic=topic, offsets=[(d.partition, d.offset) for d in outcome.delivered if d is not None])


def _kafka_failure(topic: str, outcome: DeliveryOutcome) -> ServiceUnavailable:
    """503 that says honestly what may have been written.

    A record Kafka reported as failed after a timeout, or that got no report in time, may
    still have reached the log (the acknowledgement can be what was lost), so "not
    acknowledged" is all that can be claimed.  Records never queued were not written."""
    total = len(outcome.delivered)
    acked = sum(d is not None for d in outcome.delivered)
    unqueued = total - outcome.queued
    reasons = sorted({str(e.str()) for e in outcome.errors if e is not None})
    log.warning("ingest: %d of %d records to %s not acknowledged (%s)", total - acked, total, topic, reasons)
    parts = [f"Kafka did not acknowledge {total - acked} of {total} record(s)"]
    if reasons:
        parts.append(f" ({'; '.join(reasons)})")
    parts.append(".")
    if unqueued == total:
        parts.append(" None was written.")
    else:
        parts.append(
            f" {total - acked - unqueued} of them may or may not have been written"
            + (f", {acked} were written" if acked else "")
            + "; retrying the request may write duplicates, which consumers should tolerate."
        )
    return ServiceUnavailable("".join(parts), code="kafka_unavailable", retry_after=KAFKA_RETRY_AFTER)
