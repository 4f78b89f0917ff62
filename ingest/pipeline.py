"""What every transport runs once it knows who writes: the one ingest path.

HTTPS ingest (``ingest.app``) and any other transport (the MQTT bridge) authenticate in
their own way and read records in their own framing; from a ``Writer`` (identity resolved)
and ``records.Parsed`` (the records, and their raw bytes: ``records.parse_body`` for a
request body, ``records.parse_each`` for one record per message, which with
``keep_malformed`` lets a payload that is not a JSON object become a dead letter too) on,
they run the same steps, in this order:

1. ``admit``: the device's and the tenant's rate limits (429 ``RateLimited``);
2. ``prepare``: the group's schema (from the worker's compiled copy), validation and
   encoding -- all or nothing (422), or with ``Options.dead_letters`` sorted into valid
   records for the stream and dead letters for the tenant's DLQ topic;
3. ``produce``: the idempotent producer (acks=all); returns once Kafka acknowledged every
   record (``services.Accepted``, or ``services.Sorted`` with per-record outcomes), else
   raises ``services.KafkaUnacknowledged`` (503).

``ingest`` runs the three for a transport with nothing to do between them.  HTTPS calls them
one by one: it answers the rate-limit headers from ``admit``'s verdict and claims the
Idempotency-Key between ``admit`` and ``prepare`` (a replay must not produce again, and a
key is held from the moment records may reach Kafka).  Each step is a thin call into
``ingest.ratelimit`` / ``ingest.services``: on the all-or-nothing path the indirection
costs a function call per step, and nothing per record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from devices.registry import SchemaCache
from ingest import records, services
from ingest.identity import Writer
from ingest.kafka import IngestProducer
from ingest.ratelimit import Budget, RateLimiter, Verdict


class Plane(Protocol):
    """What a data-plane worker holds for the path (``ingest.app.Worker`` is one)."""

    limiter: RateLimiter
    schemas: SchemaCache

    @property
    def producer(self) -> IngestProducer: ...


@dataclass(frozen=True, slots=True)
class Options:
    """How a batch wants its invalid records treated.

    ``dead_letters`` False (the default): one invalid record refuses the whole batch and
    nothing is produced.  True: the valid records go to the stream and each invalid one to
    the tenant's dead-letter topic, with its reasons."""

    dead_letters: bool = False


ALL_OR_NOTHING = Options()
DEAD_LETTERS = Options(dead_letters=True)


def budget(writer: Writer, parsed: records.Parsed, size: int) -> Budget:
    """What a batch of ``size`` bytes costs against the device's and the tenant's limits."""
    return Budget(writer.tenant_id, writer.pk, writer.rate_limit_per_second, writer.tenant_max_records_per_second,
                  writer.tenant_max_bytes_per_second, len(parsed.records), size)  # fmt: skip


async def admit(plane: Plane, cost: Budget) -> Verdict:
    """Take the batch's cost from the rate limits, or raise ``RateLimited``."""
    return await plane.limiter.take(cost)


async def prepare(
    plane: Plane,
    writer: Writer,
    parsed: records.Parsed,
    *,
    request_id: str,
    options: Options = ALL_OR_NOTHING,
    received_at: float | None = None,
) -> services.Prepared:
    """Validate and encode the batch under the group's latest schema (``received_at``:
    epoch seconds, for dead letters; now when not given)."""
    schema = await plane.schemas.get(writer.schema_subject)
    if not options.dead_letters:
        return services.records_prepare(writer=writer, parsed=parsed, schema=schema, request_id=request_id)
    return services.records_prepare(writer=writer, parsed=parsed, schema=schema, request_id=request_id,
                                    dead_letters=True, received_at=received_at or time.time())  # fmt: skip


async def produce(
    plane: Plane, prepared: services.Prepared, *, idempotent: bool = False
) -> services.Accepted | services.Sorted:
    """Produce and wait for Kafka's acks=all on every record (``idempotent``: a retry of
    this batch cannot write it twice, which the 503's message says)."""
    return await services.records_produce(plane.producer, prepared, idempotent=idempotent)


async def ingest(
    plane: Plane,
    writer: Writer,
    parsed: records.Parsed,
    *,
    size: int,
    request_id: str,
    options: Options = ALL_OR_NOTHING,
    received_at: float | None = None,
    idempotent: bool = False,
) -> services.Accepted | services.Sorted:
    """The whole path for a transport with nothing to do between the steps: rate limits,
    schema, validation, encoding, dead-lettering, idempotent produce.  Raises the
    ``SluiceError`` of the first step that refuses; returns per-record outcomes."""
    await admit(plane, budget(writer, parsed, size))
    prepared = await prepare(plane, writer, parsed, request_id=request_id, options=options, received_at=received_at)
    return await produce(plane, prepared, idempotent=idempotent)


async def ingest_messages(
    plane: Plane,
    writer: Writer,
    raws: list[bytes],
    *,
    request_id: str,
    options: Options = ALL_OR_NOTHING,
    received_at: float | None = None,
    idempotent: bool = False,
) -> services.Accepted | services.Sorted:
    """``ingest`` for records that arrived one per message (MQTT): each payload one JSON
    object; with dead letters, a payload that is not one is a dead letter too."""
    parsed = records.parse_each(raws, keep_malformed=options.dead_letters)
    return await ingest(plane, writer, parsed, size=sum(map(len, raws)), request_id=request_id, options=options,
                        received_at=received_at, idempotent=idempotent)  # fmt: skip
