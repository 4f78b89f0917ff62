"""Ingest's decisions: who may write (``certificate_verdict``, ``token_verdict``), what a
request's records become (``records_prepare``) and what Kafka's answer means
(``records_produce``, ``kafka_failure``).

The destination of every record is the device's group's stream topic, as the database
says (read through ``ingest.identity``); nothing a device sends (body, headers, URL) names
a tenant or a topic, so a device can write to its own group's topic only.  Identity rows
come from the worker's cache, which every change of rights empties at once
(``tenants.rights``); the verdict itself is decided here on every request, from those rows
and the current time.

A request is all or nothing up to Kafka: every record is parsed, rate-limited and validated
before the first is produced.  Kafka's answer is per record, so a Kafka failure can leave
part of a batch written; the error says so (see ``kafka_failure``).
"""

from __future__ import annotations

import functools
import logging
import re
import struct
from dataclasses import dataclass

import orjson

from config.errors import (
    InvalidInput,
    PermissionDenied,
    SchemaValidationFailed,
    ServiceUnavailable,
    SluiceError,
    Unauthenticated,
)
from devices.registry import LatestSchema, RecordNotEncodable
from ingest import records
from ingest.identity import CertificateGrant, ClientGrant, Identity, Writer
from ingest.kafka import DeliveryOutcome, IngestProducer, KafkaHeaders, Outgoing
from tenants import policy
from tenants.oauth.tokens import AccessClaims

log = logging.getLogger("sluice.ingest")

INGEST_SCOPE = "ingest:write"
BEARER_REALM = "sluice-ingest"
KAFKA_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class Accepted:
    """Kafka acknowledged (acks=all) every record of the request."""

    topic: str
    offsets: list[tuple[int, int]]  # (partition, offset) per record, in request order

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "accepted": len(self.offsets),
                "topic": self.topic,
                "records": [{"partition": p, "offset": o} for p, o in self.offsets],
            }
        )


# -- who: certificates ----------------------------------------------------------------------


def certificate_verdict(identity: Identity | None, *, issuer: str, now: float) -> Writer:
    """The device a verified client certificate may write for, or a 401/403 with a stable code.

    nginx already checked the chain, validity and its CRLs; this checks what only the database
    knows: the certificate's own status (revocations apply here at once, whatever nginx's CRL
    says), the device, the tenant, and the group's credential policy."""
    if identity is None or not isinstance(identity.grant, CertificateGrant):
        raise PermissionDenied("This certificate was not issued by Sluice.", code="unknown_certificate")
    grant = identity.grant
    if issuer and issuer != grant.issuer:
        # The serial is Sluice's, but the issuer nginx verified is another CA: not this row.
        log.warning("ingest: certificate %s presented with issuer %r, recorded %r", grant.serial, issuer, grant.issuer)
        raise PermissionDenied("This certificate was not issued by Sluice.", code="unknown_certificate")
    refusal = policy.certificate_refusal(
        policy.Use.INGEST_CERTIFICATE,
        status=grant.status,
        not_after=grant.not_after,
        overlap_until=grant.overlap_until,
        now=now,
    )
    if refusal is not None:
        raise refusal.exception()
    writer = identity.writer
    if writer is None:
        if grant.consumer:
            raise PermissionDenied("A consumer's certificate reads the tenant's streams; it does not write.",
                                   code="not_a_device_certificate")  # fmt: skip
        raise PermissionDenied("The device of this certificate no longer exists.", code="unknown_device")
    if not (writer.tenant_id == grant.tenant_id == writer.group_tenant_id == writer.stream_tenant_id):
        # Cannot happen through the services (they keep a device, its group and its stream in
        # one tenant); refuse rather than write across tenants if the data ever says otherwise.
        log.error("ingest: tenant mismatch for certificate %s (device %s)", grant.serial, writer.pk)
        raise PermissionDenied("This certificate may not write here.", code="tenant_mismatch")
    _holder_may_write(policy.Use.INGEST_CERTIFICATE, writer)
    return writer


def _holder_may_write(use: str, writer: Writer) -> None:
    """What both credentials must pass, asked of the policy: tenant active, device active,
    and the group's credential policy admits this kind of credential."""
    refusal = policy.holder_refusal(
        use,
        tenant_status=writer.tenant_status,
        device_status=writer.status,
        credential_policy=writer.credential_policy,
        tenant=writer.tenant_slug,
        device=writer.device_id,
        group=writer.group_slug,
    )
    if refusal is not None:
        raise refusal.exception()


_SERIAL = re.compile(r"^-?[0-9A-Fa-f]{1,64}$")


@functools.lru_cache(maxsize=65536)
def certificate_serial(presented: str) -> str:
    """nginx's ``$ssl_client_serial`` (upper-case hex, whole bytes) in the form Sluice stores
    serials: lower-case hex without leading zeros."""
    if not _SERIAL.match(presented) or presented.startswith("-"):
        raise Unauthenticated("The client certificate's serial number could not be read.", code="certificate_invalid")
    return format(int(presented, 16), "x")


# -- who: OAuth2 bearer tokens (RFC 6750) ------------------------------------------------------


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


def bearer_token(authorization: str) -> str:
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


def no_credential() -> TokenRefused:
    return TokenRefused(
        "This endpoint needs a client certificate or an OAuth2 access token (Authorization: Bearer).",
        code="client_certificate_required",
        error=None,
    )


def ambiguous_credentials() -> InvalidInput:
    """Both at once is refused rather than one silently preferred: they could name different
    devices, and a client sending both is confused about which identity it writes as."""
    return InvalidInput(
        "Present either a client certificate or a bearer token, not both.", code="ambiguous_credentials"
    )


def token_scope_check(claims: AccessClaims) -> None:
    """What a verified token must say before any identity is read: the ingest scope and a device."""
    if INGEST_SCOPE not in claims.scopes:
        raise ScopeRefused(
            f"The access token lacks the scope '{INGEST_SCOPE}'.",
            code="insufficient_scope",
            error="insufficient_scope",
            scope=INGEST_SCOPE,
        )
    if not claims.device:
        raise PermissionDenied("The access token is not a device's token (no 'device' claim).", code="not_a_device")


def token_verdict(claims: AccessClaims, identity: Identity | None, *, device_exists: bool | None = None) -> Writer:
    """The device a token may write for: its client, re-read (from the cache every change
    empties), must still be active and be the client of the ``device`` claim's device in the
    ``tenant`` claim's tenant; then exactly what the certificate path checks.

    ``identity`` is the token's client and its device.  When it does not match the claims,
    the caller passes ``device_exists`` (whether the claimed device exists in the claimed
    tenant) so the refusal names the right reason."""
    writer = identity.writer if identity is not None else None
    if writer is None or writer.device_id != claims.device or writer.tenant_slug != claims.tenant:
        if device_exists is None:
            raise LookupError("device_exists is needed to explain this refusal")
        if not device_exists:
            raise PermissionDenied(f"Tenant '{claims.tenant}' has no device '{claims.device}'.", code="unknown_device")
        if identity is None:
            raise TokenRefused("The access token's client is unknown to Sluice.", code="invalid_token",
                               error="invalid_token")  # fmt: skip
        raise PermissionDenied("The access token's client does not belong to this device.", code="not_a_device")
    grant = identity.grant if identity is not None else None
    assert isinstance(grant, ClientGrant)
    if not (writer.tenant_id == grant.tenant_id == writer.group_tenant_id == writer.stream_tenant_id):
        log.error("ingest: tenant mismatch for token of device %s", writer.pk)
        raise PermissionDenied("This token may not write here.", code="tenant_mismatch")
    # The principal is the client's own in the device's group (certs.principals).
    expected = f"{writer.tenant_slug}.{writer.group_slug}.{claims.client_id}"
    if claims.kafka_principal is not None and claims.kafka_principal != expected:
        raise PermissionDenied(
            "The access token's Kafka principal is not its client's in the device group.",
            code="token_principal_mismatch",
        )
    _holder_may_write(policy.Use.INGEST_TOKEN, writer)
    # The token is only as good as its client: a revoked client (or one whose secret leaked
    # and was revoked) stops here at once, not when its tokens expire.
    refusal = policy.client_refusal(policy.Use.INGEST_TOKEN, status=grant.status)
    if refusal is not None:
        raise TokenRefused(refusal.message, code=refusal.code, error="invalid_token")
    return writer


# -- what: the records ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request's records, validated and encoded: all that is left is to produce them."""

    writer: Writer
    topic: str
    outgoing: Outgoing


def records_prepare(*, writer: Writer, parsed: records.Parsed, schema: LatestSchema, request_id: str) -> Prepared:
    """Validate (all or nothing) and encode one request's records for Kafka."""
    records.validate(parsed, schema)
    headers: KafkaHeaders = [*writer.identity_headers, ("sluice-request-id", request_id.encode())]
    try:
        values = schema.encode_all(parsed.records)
    except RecordNotEncodable as exc:
        message = f"Not encodable with schema '{schema.subject}': {exc.reason}"
        raise SchemaValidationFailed(
            f"A record could not be encoded with schema '{schema.subject}'; nothing was produced.",
            fields=[{"pointer": parsed.pointer(exc.index) or "/", "code": "not_encodable", "message": message}],
        ) from None
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        # The validator and the Avro writer disagree (an edge of fastavro); refuse it all.
        raise SchemaValidationFailed(
            f"A record could not be encoded with schema '{schema.subject}': {exc}; nothing was produced."
        ) from None
    return Prepared(writer, writer.topic, Outgoing(writer.key, headers, values))


async def records_produce(producer: IngestProducer, prepared: Prepared, *, idempotent: bool = False) -> Accepted:
    """Produce prepared records; returns only when Kafka acknowledged every one
    (``acks=all``), else raises ``KafkaUnacknowledged`` saying what may have been written
    (``idempotent``: the request carries an Idempotency-Key, so a retry cannot duplicate)."""
    outcome = await producer.produce_and_wait_async(prepared.topic, prepared.outgoing)
    if not outcome.complete:
        raise kafka_failure(prepared.topic, outcome, idempotent=idempotent)
    return Accepted(topic=prepared.topic, offsets=outcome.delivered)  # type: ignore[arg-type] # complete: no None


class KafkaUnacknowledged(ServiceUnavailable):
    """503 ``kafka_unavailable``: Kafka did not acknowledge every record in time.  Carries
    the outcome, whose ``settle`` (when some records are still in librdkafka's hands) awaits
    the final one (``ingest.idempotency`` keeps a retry from writing them twice)."""

    code = "kafka_unavailable"

    def __init__(self, message: str, *, topic: str, outcome: DeliveryOutcome) -> None:
        super().__init__(message, retry_after=KAFKA_RETRY_AFTER)
        self.topic = topic
        self.outcome = outcome


def kafka_failure(topic: str, outcome: DeliveryOutcome, *, idempotent: bool = False) -> KafkaUnacknowledged:
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
            + (
                "; retry with the same Idempotency-Key: it writes nothing twice, and answers with this request's "
                "final outcome once Kafka has settled its records."
                if idempotent
                else "; retrying the request may write duplicates, which consumers should tolerate."
            )
        )
    return KafkaUnacknowledged("".join(parts), topic=topic, outcome=outcome)
