"""Ingest's decisions: who may write (``certificate_verdict``, ``token_verdict``), what a
request's records become (``records_prepare``) and what Kafka's answer means
(``records_produce``, ``kafka_failure``).

The destination of every record is the device's group's stream topic, as the database
says (read through ``ingest.identity``); nothing a device sends (body, headers, URL) names
a tenant or a topic, so a device can write to its own group's topic only.  Identity rows
come from the worker's cache, which every change of rights empties at once
(``tenants.rights``); the verdict itself is decided here on every request, from those rows
and the current time.

A request is all or nothing up to Kafka by default: every record is parsed, rate-limited and
validated before the first is produced.  Kafka's answer is per record, so a Kafka failure can
leave part of a batch written; the error says so (see ``kafka_failure``).  A request that
asks for dead-lettering (``records_prepare(dead_letters=True)``) has its valid records
produced to the stream and each invalid one to the tenant's dead-letter topic, its raw bytes
with the reasons in headers (``dead_letter_headers``); the answer is per record (``Sorted``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

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

    @property
    def produced(self) -> int:
        """Records written to the stream."""
        return len(self.offsets)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "accepted": len(self.offsets),
                "topic": self.topic,
                "records": [{"partition": p, "offset": o} for p, o in self.offsets],
            }
        )


@dataclass(frozen=True, slots=True)
class Sorted:
    """A request that asked for dead-lettering: Kafka acknowledged (acks=all) every record,
    each valid one in the stream and each invalid one in the tenant's dead-letter topic."""

    topic: str
    dead_letter_topic: str
    offsets: list[tuple[int, int]]  # (partition, offset) per record, in request order, in its topic
    errors: dict[int, dict[str, Any]]  # request index -> why it was dead-lettered (the error shape)

    @property
    def produced(self) -> int:
        return len(self.offsets) - len(self.errors)

    def as_json(self) -> bytes:
        errors = self.errors
        return orjson.dumps(
            {
                "accepted": len(self.offsets) - len(errors),
                "dead_lettered": len(errors),
                "topic": self.topic,
                "dead_letter_topic": self.dead_letter_topic,
                "records": [
                    {"partition": p, "offset": o}
                    if index not in errors
                    else {"dead_letter": {"partition": p, "offset": o}, "error": errors[index]}
                    for index, (p, o) in enumerate(self.offsets)
                ],
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


def _holder_may_write(use: str, writer: Writer, *, credential: bool = True) -> None:
    """What both credentials must pass, asked of the policy: tenant active, device active,
    and (``credential``) the group's credential policy admits this kind of credential."""
    refusal = policy.holder_refusal(
        use,
        tenant_status=writer.tenant_status,
        device_status=writer.status,
        credential_policy=writer.credential_policy if credential else None,
        tenant=writer.tenant_slug,
        device=writer.device_id,
        group=writer.group_slug,
    )
    if refusal is not None:
        raise refusal.exception()


def bridge_verdict(writer: Writer | None, *, tenant: str, group: str, device: str) -> Writer:
    """The device an MQTT message's topic names, as the bridge is about to produce it.

    The message's credential was judged when it was published (ingest.mqtt_auth refuses a
    publish as soon as a change of rights touches its session, and ends the session); this
    judges the device, its group and its tenant now, as HTTPS ingest does."""
    if writer is None:
        raise PermissionDenied(f"Tenant '{tenant}' has no device '{device}'.", code="unknown_device")
    if writer.group_slug != group:
        raise PermissionDenied(f"Device '{device}' is no longer in group '{group}'.", code="group_changed")
    if not (writer.tenant_id == writer.group_tenant_id == writer.stream_tenant_id):
        log.error("ingest: tenant mismatch for device %s", writer.pk)
        raise PermissionDenied("This device may not write here.", code="tenant_mismatch")
    _holder_may_write(policy.Use.INGEST_MQTT_BRIDGE, writer, credential=False)
    return writer


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
class DeadLetters:
    """The invalid records of a request that asked for dead-lettering, ready for the
    tenant's dead-letter topic, and why each was refused (by index in the request)."""

    topic: str
    outgoing: Outgoing
    errors: dict[int, dict[str, Any]]


# Not frozen: one is made per request, and a frozen dataclass's __init__ sets each field
# through object.__setattr__ (3x the cost); nothing changes one after it is made.
@dataclass(slots=True)
class Prepared:
    """A request's records, validated and encoded: all that is left is to produce them.
    ``dead`` is set when the request asked for dead-lettering (then ``outgoing`` holds the
    valid records only, with their indexes in the request)."""

    writer: Writer
    topic: str
    outgoing: Outgoing
    dead: DeadLetters | None = None


# The headers of a dead letter, beside the device's own (sluice-tenant, sluice-group,
# sluice-device), sluice-request-id and sluice-record-index (its position in the request).
DLQ_TOPIC_HEADER = "sluice-topic"  # the stream it was meant for
DLQ_SUBJECT_HEADER = "sluice-schema-subject"
DLQ_SCHEMA_ID_HEADER = "sluice-schema-id"  # the registry's id of the schema that refused it
DLQ_RECEIVED_AT_HEADER = "sluice-received-at"  # RFC 3339, UTC, milliseconds
DLQ_CODE_HEADER = "sluice-error-code"  # the first failure's code (e.g. "type", "required")
DLQ_POINTER_HEADER = "sluice-error-pointer"  # ... its JSON pointer into what the device sent
DLQ_MESSAGE_HEADER = "sluice-error-message"
DLQ_ERRORS_HEADER = "sluice-errors"  # every failure: a JSON array of {pointer, code, message}


def received_at_text(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def records_prepare(
    *,
    writer: Writer,
    parsed: records.Parsed,
    schema: LatestSchema,
    request_id: str,
    dead_letters: bool = False,
    received_at: float = 0.0,
) -> Prepared:
    """Validate (all or nothing) and encode one request's records for Kafka; with
    ``dead_letters``, sort them instead: the valid ones for the stream, the others for the
    tenant's dead-letter topic (``received_at``, epoch seconds, is when they arrived)."""
    if dead_letters:
        return _records_sort(writer, parsed, schema, request_id, received_at)
    if parsed.malformed is not None:
        # Kept aside for dead letters (``records.parse_each``), and none were asked for.
        fields = [parsed.malformed[index] for index in sorted(parsed.malformed)][: records.MAX_FIELD_ERRORS]
        raise InvalidInput(f"{len(parsed.malformed)} record(s) are not one JSON object each; nothing was produced.",
                           code=fields[0]["code"], fields=fields)  # fmt: skip
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


def _records_sort(
    writer: Writer, parsed: records.Parsed, schema: LatestSchema, request_id: str, received_at: float
) -> Prepared:
    items = parsed.records
    is_valid = schema.validator.is_valid
    errors: dict[int, dict[str, Any]] = {}
    malformed = parsed.malformed or {}
    for index, field in malformed.items():
        errors[index] = {"code": field["code"], "message": field["message"], "fields": [field]}
    for index, record in enumerate(items):
        if index in malformed:
            continue
        if not is_valid(record):
            fields = records.record_errors(record, schema, parsed.pointer(index))[: records.MAX_FIELD_ERRORS]
            errors[index] = {
                "code": SchemaValidationFailed.code,
                "message": f"The record does not match schema '{schema.subject}' version {schema.version}.",
                "fields": fields,
            }
    good = [index for index in range(len(items)) if index not in errors]
    values = _encode_valid(parsed, schema, good, errors)
    rid = request_id.encode()
    stream = Outgoing(writer.key, [*writer.identity_headers, ("sluice-request-id", rid)], values, good)
    return Prepared(writer, writer.topic, stream, _dead_letters(writer, parsed, schema, rid, received_at, errors))


def records_dead(
    *, writer: Writer, parsed: records.Parsed, schema: LatestSchema | None, request_id: str, received_at: float,
    code: str, message: str,
) -> Prepared:  # fmt: skip
    """Every record of a batch for the tenant's dead-letter topic, for one reason (``code``):
    a transport with no answer to carry a refusal of the whole batch (the MQTT bridge: over
    the device's rate limit, or the group's subject has no schema, ``schema`` None) keeps the
    records there rather than losing them."""
    errors = {
        index: {"code": code, "message": message,
                "fields": [{"pointer": parsed.pointer(index) or "/", "code": code, "message": message}]}
        for index in range(len(parsed.records))
    }  # fmt: skip
    rid = request_id.encode()
    stream = Outgoing(writer.key, [*writer.identity_headers, ("sluice-request-id", rid)], [], [])
    return Prepared(writer, writer.topic, stream, _dead_letters(writer, parsed, schema, rid, received_at, errors))


def _dead_letters(
    writer: Writer,
    parsed: records.Parsed,
    schema: LatestSchema | None,
    rid: bytes,
    received_at: float,
    errors: dict[int, dict[str, Any]],
) -> DeadLetters:
    """The records at ``errors``' indexes as they were sent, with the reason headers."""
    bad = sorted(errors)
    raws = records.raw_records(parsed) if bad else []
    common: KafkaHeaders = [
        *writer.identity_headers,
        ("sluice-request-id", rid),
        (DLQ_TOPIC_HEADER, writer.topic.encode()),
        (DLQ_SUBJECT_HEADER, (schema.subject if schema is not None else writer.schema_subject).encode()),
        (DLQ_SCHEMA_ID_HEADER, str(schema.schema_id).encode() if schema is not None else b""),
        (DLQ_RECEIVED_AT_HEADER, received_at_text(received_at).encode()),
    ]
    reasons: list[KafkaHeaders] = []
    for index in bad:
        fields = errors[index]["fields"]
        first = fields[0] if fields else {"pointer": parsed.pointer(index) or "/", "code": "", "message": ""}
        reasons.append([
            (DLQ_CODE_HEADER, first["code"].encode()),
            (DLQ_POINTER_HEADER, first["pointer"].encode()),
            (DLQ_MESSAGE_HEADER, first["message"].encode()),
            (DLQ_ERRORS_HEADER, orjson.dumps(fields)),
        ])  # fmt: skip
    dead = Outgoing(writer.key, common, [raws[index] for index in bad], bad, reasons)
    return DeadLetters(writer.dead_letter_topic, dead, errors)


def _encode_valid(
    parsed: records.Parsed, schema: LatestSchema, good: list[int], errors: dict[int, dict[str, Any]]
) -> list[bytes]:
    """The wire values of the records at ``good``; one the encoder refuses moves from
    ``good`` to ``errors``."""
    try:
        return schema.encode_all([parsed.records[index] for index in good])
    except (ValueError, TypeError, OverflowError, struct.error):
        pass  # rare: find which, one record at a time
    values = []
    for index in list(good):
        try:
            values.append(schema.encode_all([parsed.records[index]])[0])
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            reason = exc.reason if isinstance(exc, RecordNotEncodable) else str(exc)
            message = f"Not encodable with schema '{schema.subject}': {reason}"
            good.remove(index)
            errors[index] = {
                "code": SchemaValidationFailed.code,
                "message": f"The record could not be encoded with schema '{schema.subject}'.",
                "fields": [{"pointer": parsed.pointer(index) or "/", "code": "not_encodable", "message": message}],
            }
    return values


async def records_produce(
    producer: IngestProducer, prepared: Prepared, *, idempotent: bool = False
) -> Accepted | Sorted:
    """Produce prepared records; returns only when Kafka acknowledged every one
    (``acks=all``), else raises ``KafkaUnacknowledged`` saying what may have been written
    (``idempotent``: the request carries an Idempotency-Key, so a retry cannot duplicate).
    A request that asked for dead-lettering writes to its stream and to the dead-letter
    topic at once, and returns once Kafka acknowledged both."""
    if prepared.dead is not None:
        return await _produce_sorted(producer, prepared, prepared.dead, idempotent=idempotent)
    outcome = await producer.produce_and_wait_async(prepared.topic, prepared.outgoing)
    if not outcome.complete:
        raise kafka_failure(prepared.topic, outcome, idempotent=idempotent)
    return Accepted(topic=prepared.topic, offsets=outcome.delivered)  # type: ignore[arg-type] # complete: no None


async def _produce_sorted(
    producer: IngestProducer, prepared: Prepared, dead: DeadLetters, *, idempotent: bool
) -> Sorted:
    stream, letters = prepared.outgoing, dead.outgoing
    outcomes = await asyncio.gather(
        *(producer.produce_and_wait_async(topic, outgoing)
          for topic, outgoing in ((prepared.topic, stream), (dead.topic, letters)) if outgoing.values)
    )  # fmt: skip
    parts = [outgoing for outgoing in (stream, letters) if outgoing.values]
    outcome = _merged(parts, list(outcomes))

    def answer(final: DeliveryOutcome) -> bytes:
        return Sorted(prepared.topic, dead.topic, final.delivered, dead.errors).as_json()  # type: ignore[arg-type]

    if not outcome.complete:
        raise kafka_failure(f"{prepared.topic} and {dead.topic}", outcome, idempotent=idempotent, answer=answer)
    return Sorted(prepared.topic, dead.topic, outcome.delivered, dead.errors)  # type: ignore[arg-type]


def _merged(parts: list[Outgoing], outcomes: list[DeliveryOutcome]) -> DeliveryOutcome:
    """One outcome in request order from the outcomes of its parts (each part's ``indexes``
    say where its records sit in the request)."""
    count = sum(len(part.values) for part in parts)
    delivered: list[tuple[int, int] | None] = [None] * count
    errors: list[Any] = [None] * count
    for part, outcome in zip(parts, outcomes, strict=True):
        assert part.indexes is not None
        for position, index in enumerate(part.indexes):
            delivered[index] = outcome.delivered[position]
            errors[index] = outcome.errors[position]
    merged = DeliveryOutcome(delivered=delivered, errors=errors, queued=sum(o.queued for o in outcomes))
    if all(outcome.settle is None for outcome in outcomes):
        return merged

    async def settle() -> DeliveryOutcome:
        finals = [await o.settle() if o.settle is not None else o for o in outcomes]
        return _merged(parts, finals)

    return replace(merged, settle=settle)


class KafkaUnacknowledged(ServiceUnavailable):
    """503 ``kafka_unavailable``: Kafka did not acknowledge every record in time.  Carries
    the outcome, whose ``settle`` (when some records are still in librdkafka's hands) awaits
    the final one (``ingest.idempotency`` keeps a retry from writing them twice), and how to
    answer once every record is settled (``answer``; None: ``Accepted``'s answer)."""

    code = "kafka_unavailable"

    def __init__(
        self,
        message: str,
        *,
        topic: str,
        outcome: DeliveryOutcome,
        answer: Callable[[DeliveryOutcome], bytes] | None = None,
    ) -> None:
        super().__init__(message, retry_after=KAFKA_RETRY_AFTER)
        self.topic = topic
        self.outcome = outcome
        self.answer = answer


def kafka_failure(
    topic: str,
    outcome: DeliveryOutcome,
    *,
    idempotent: bool = False,
    answer: Callable[[DeliveryOutcome], bytes] | None = None,
) -> KafkaUnacknowledged:
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
    return KafkaUnacknowledged("".join(parts), topic=topic, outcome=outcome, answer=answer)
