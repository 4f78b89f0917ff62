"""Ingest: who may write (``ingest_authenticate``: a client certificate, checked by
``ingest_authorize``, or an OAuth2 bearer token, checked by ``ingest_authorize_token``) and
writing a request's records to Kafka (``records_prepare``, then ``records_produce``).

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
import re
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from certs.models import Certificate
from certs.principals import group_principal
from config.errors import (
    InvalidInput,
    PermissionDenied,
    SchemaValidationFailed,
    ServiceUnavailable,
    SluiceError,
    Unauthenticated,
)
from devices.models import Device, DeviceGroup
from ingest import identity, metrics, ratelimit, records
from ingest.identity import CertificateRow, Writer
from ingest.kafka import DeliveryOutcome, OutgoingRecord, ingest_producer
from ingest.registry import latest_schema
from tenants.models import Tenant
from tenants.oauth import tokens

log = logging.getLogger("sluice.ingest")

MTLS_POLICIES = (DeviceGroup.CredentialPolicy.MTLS, DeviceGroup.CredentialPolicy.BOTH)
OAUTH_POLICIES = (DeviceGroup.CredentialPolicy.OAUTH2, DeviceGroup.CredentialPolicy.BOTH)
INGEST_SCOPE = "ingest:write"
BEARER_REALM = "sluice-ingest"
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


def ingest_authorize(*, certificate: CertificateRow, writer: Writer | None) -> Writer:
    """The device a verified client certificate may write for, or a 401/403 with a stable code.

    nginx already checked the chain, validity and CRL; this checks what only the database
    knows, freshly read: the certificate's own status (a revocation applies here before nginx
    re-reads the CRL), the device, the tenant, and the group's credential policy.  ``writer``
    is the certificate's device as read together with it (``identity.certificate_writer``),
    None when the device is gone."""
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
    if writer is None:
        raise PermissionDenied("The device of this certificate no longer exists.", code="unknown_device")
    if not (writer.tenant_id == certificate.tenant_id == writer.group_tenant_id == writer.stream_tenant_id):
        # Cannot happen through the services (they keep a device, its group and its stream in
        # one tenant); refuse rather than write across tenants if the data ever says otherwise.
        log.error("ingest: tenant mismatch for certificate %s (device %s)", certificate.serial, writer.pk)
        raise PermissionDenied("This certificate may not write here.", code="tenant_mismatch")
    _device_may_write(writer, policies=MTLS_POLICIES, credential="client certificates")
    return writer


def _device_may_write(writer: Writer, *, policies: tuple[str, ...], credential: str) -> None:
    """What both credentials must pass, freshly read: tenant active, device active, and the
    group's credential policy admits this kind of credential."""
    if writer.tenant_status != Tenant.Status.ACTIVE:
        raise PermissionDenied(f"Tenant '{writer.tenant_slug}' is suspended.", code="tenant_suspended")
    if writer.status != Device.Status.ACTIVE:
        raise PermissionDenied(f"Device '{writer.device_id}' is {writer.status}.", code="device_disabled")
    if writer.credential_policy not in policies:
        raise PermissionDenied(
            f"Device group '{writer.group_slug}' does not accept {credential} "
            f"(its credential policy is '{writer.credential_policy}').",
            code="credential_not_allowed",
        )


# -- OAuth2 bearer tokens (RFC 6750) ------------------------------------------------------


class BearerChallenge(SluiceError):
    """A refusal that tells the client how to authenticate: the ``WWW-Authenticate: Bearer``
    challenge of RFC 6750 §3, with its ``error`` code (§3.1)."""

    def __init__(self, message: str, *, code: str, error: str | None, scope: str | None = None) -> None:
        super().__init__(message, code=code)
        self.www_authenticate = bearer_challenge(error=error, description=message if error else None, scope=scope)


class TokenRefused(BearerChallenge, Unauthenticated):
    """401: no usable token (RFC 6750 §3.1 ``invalid_token``, or no ``error`` when the
    request carried no token at all)."""


class ScopeRefused(BearerChallenge, PermissionDenied):
    """403: a valid token without the scope this endpoint needs (RFC 6750 §3.1 ``insufficient_scope``)."""


_CHALLENGE_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def bearer_challenge(*, error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    """``Bearer realm="sluice-ingest"[, error=..., error_description=..., scope=...]``.

    RFC 6750 §3: ``error_description`` may hold printable ASCII except '"' and '\\'."""
    params = [f'realm="{BEARER_REALM}"']
    if error:
        params.append(f'error="{error}"')
    if description:
        params.append(f'error_description="{_CHALLENGE_UNSAFE.sub("?", description)}"')
    if scope:
        params.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(params)


def www_authenticate(error: SluiceError) -> str | None:
    """The ``WWW-Authenticate`` header of an ingest refusal: its own challenge, or for any
    other 401 the plain Bearer challenge (RFC 9110 §15.5.2: every 401 carries one)."""
    if isinstance(error, BearerChallenge):
        return error.www_authenticate
    return bearer_challenge() if isinstance(error, Unauthenticated) else None


def _bearer_token(authorization: str) -> str:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 §2.1; the scheme name is
    case-insensitive, RFC 9110 §11.1)."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenRefused(
            f"The Authorization scheme '{scheme[:20]}' is not supported here; use 'Bearer <access token>'.",
            code="unsupported_authorization_scheme",
            error=None,
        )
    token = token.strip()
    if not token:
        raise TokenRefused("The Authorization header carries no token.", code="invalid_token", error="invalid_token")
    return token


def ingest_authenticate(*, authorization: str, certificate_presented: bool, certificate: Callable[[], str]) -> Writer:
    """The device a request may write for, proven by exactly one credential: a client
    certificate (nginx verified it; ``certificate`` gives its SHA-256 fingerprint) or an
    ``Authorization: Bearer`` access token.

    Both at once is refused (400 ``ambiguous_credentials``) rather than one silently
    preferred: they could name different devices, and a client sending both is confused
    about which identity it writes as."""
    if authorization:
        if certificate_presented:
            raise InvalidInput(
                "Present either a client certificate or a bearer token, not both.", code="ambiguous_credentials"
            )
        return ingest_authorize_token(token=_bearer_token(authorization))
    if not certificate_presented:
        raise TokenRefused(
            "This endpoint needs a client certificate or an OAuth2 access token (Authorization: Bearer).",
            code="client_certificate_required",
            error=None,
        )
    # The certificate, its device, group, stream and tenant in one query.
    found = identity.certificate_writer(certificate())
    if found is None:
        raise PermissionDenied("This certificate was not issued by Sluice.", code="unknown_certificate")
    row, writer = found
    return ingest_authorize(certificate=row, writer=writer)


def ingest_authorize_token(*, token: str) -> Writer:
    """The device an access token may write for, or a 401/403 with a stable code.

    ``tokens.verify_access_token`` checks signature, issuer, audience (``sluice-ingest``) and
    times; this checks the scope, finds the ``device`` claim's device *within the ``tenant``
    claim's tenant* (so no token reaches another tenant's device or topic), that a
    ``kafka_principal`` claim names that device's group, and then exactly what the
    certificate path checks, freshly read on every request."""
    try:
        claims = tokens.verify_access_token(settings.SLUICE_RUNTIME, token, audience=tokens.AUD_INGEST)
    except Unauthenticated as exc:
        raise TokenRefused(exc.message, code=exc.code, error="invalid_token") from None
    if INGEST_SCOPE not in claims.scopes:
        raise ScopeRefused(
            f"The access token lacks the scope '{INGEST_SCOPE}'.",
            code="insufficient_scope",
            error="insufficient_scope",
            scope=INGEST_SCOPE,
        )
    if not claims.device:
        raise PermissionDenied("The access token is not a device's token (no 'device' claim).", code="not_a_device")
    writer = identity.device_writer_by_id(tenant_slug=claims.tenant, device_id=claims.device)
    if writer is None:
        raise PermissionDenied(f"Tenant '{claims.tenant}' has no device '{claims.device}'.", code="unknown_device")
    if not (writer.tenant_id == writer.group_tenant_id == writer.stream_tenant_id):
        log.error("ingest: tenant mismatch for token of device %s", writer.pk)
        raise PermissionDenied("This token may not write here.", code="tenant_mismatch")
    expected = f"{group_principal(tenant=writer.tenant_slug, group=writer.group_slug)}.{claims.client_id}"
    if claims.kafka_principal is not None and f"User:{claims.kafka_principal}" != expected:
        raise PermissionDenied(
            "The access token's Kafka principal is not its client's in the device group.",
            code="token_principal_mismatch",
        )
    _device_may_write(writer, policies=OAUTH_POLICIES, credential="OAuth2 tokens")
    # The token is only as good as its client, re-read now: a revoked client (or one whose
    # secret leaked and was revoked) stops here at once, not when its tokens expire.
    from tenants.oauth.resource import token_client

    try:
        client = token_client(claims)
    except Unauthenticated as exc:
        raise TokenRefused(exc.message, code=exc.code, error="invalid_token") from None
    if client.device_id != writer.pk:
        raise PermissionDenied("The access token's client does not belong to this device.", code="not_a_device")
    return writer


@dataclass(frozen=True)
class Prepared:
    """A request's records, authorised, rate-limited, validated and encoded: all that is
    left is to produce them."""

    writer: Writer
    topic: str
    outgoing: list[OutgoingRecord]


def records_prepare(*, writer: Writer, content_type: str, body: bytes, request_id: str) -> Prepared:
    """Parse, rate-limit, validate and encode the records of one request (everything before
    Kafka: the blocking part, run off the event loop)."""
    records.check_content_type(content_type)
    parsed = records.parse_body(body)
    ratelimit.rate_limit_take(
        ratelimit.Budget(
            tenant_id=writer.tenant_id,
            device_pk=writer.pk,
            device_requests_per_second=writer.rate_limit_per_second,
            tenant_records_per_second=writer.tenant_max_records_per_second,
            tenant_bytes_per_second=writer.tenant_max_bytes_per_second,
            records=len(parsed.records),
            body_bytes=len(body),
        )
    )
    schema = latest_schema(writer.schema_subject)
    records.validate(parsed, schema)
    headers = [
        ("sluice-tenant", writer.tenant_slug.encode()),
        ("sluice-group", writer.group_slug.encode()),
        ("sluice-device", writer.device_id.encode()),
        ("sluice-request-id", request_id.encode()),
    ]
    key = writer.device_id.encode()
    try:
        outgoing = [OutgoingRecord(key=key, value=records.wire_value(r, schema), headers=headers)
                    for r in parsed.records]  # fmt: skip
    except (ValueError, TypeError, OverflowError) as exc:
        # The validator and the Avro writer disagree (an edge of fastavro); refuse it all.
        raise SchemaValidationFailed(
            f"A record could not be encoded with schema '{schema.subject}': {exc}; nothing was produced."
        ) from None
    return Prepared(writer=writer, topic=writer.topic, outgoing=outgoing)


async def records_produce(prepared: Prepared) -> Accepted:
    """Produce prepared records; returns only when Kafka acknowledged every one
    (``acks=all``), else raises ``ServiceUnavailable`` saying what may have been written."""
    producer = ingest_producer(settings.SLUICE_RUNTIME)
    outcome = await producer.produce_and_wait_async(prepared.topic, prepared.outgoing)
    if not outcome.complete:
        raise _kafka_failure(prepared.topic, outcome)
    return Accepted(topic=prepared.topic, offsets=[(d.partition, d.offset) for d in outcome.delivered if d is not None])


def records_accepted(*, writer: Writer, accepted: Accepted) -> None:
    """Bookkeeping after Kafka acknowledged a request: the accepted counter and, at most once
    a minute per device, its ``last_seen_at`` (one Redis round trip for both)."""
    if metrics.count_accepted(len(accepted.offsets), device_pk=writer.pk):
        try:
            Device.objects.filter(pk=writer.pk).update(last_seen_at=timezone.now())
        except DatabaseError:
            # Bookkeeping only: Kafka has acknowledged the records, so the answer is 200;
            # a 500 here would make the device send them again.
            log.warning("ingest: could not record last_seen_at of device %s", writer.pk, exc_info=True)


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
