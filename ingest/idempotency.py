"""``Idempotency-Key``: a retried ingest request writes nothing twice.

A device that sends ``Idempotency-Key: "<key>"`` (draft-ietf-httpapi-idempotency-key-header:
a string of 1-255 visible ASCII characters, quoted or not) on a POST gets, for any retry with
the same key within the window (``SLUICE_INGEST_IDEMPOTENCY_SECONDS``, 24 h by default), the
first request's answer again, byte for byte, with ``Idempotency-Replayed: true`` and the
first request's ``X-Request-Id``; nothing is produced again.  The key is the device's own:
the same key from another device is another key.

Each key is one Redis value, claimed before anything is produced (``SET NX``: one round
trip, and only for requests that carry a key):

* claimed by no one: this request runs, and its outcome decides what the key keeps --
  **200**: the answer, for the window; a refusal before Kafka (4xx, or a 503 with nothing
  queued): nothing, the key is free again (nothing was written, a retry runs afresh);
  **503 ``kafka_unavailable``** with records still in librdkafka's hands: the key stays
  claimed while librdkafka keeps trying (at most ``DELIVERY_TIMEOUT_MS``), then keeps the
  final outcome -- the 200 they earned, or 409 ``idempotency_outcome_unknown`` when Kafka
  never confirmed them (they may or may not be in the log: a new key writes them again).
* claimed by a request still running (the same body): **409 ``idempotency_key_in_use``** +
  ``Retry-After``; the retry after it gets the answer.
* used with another body: **422 ``idempotency_key_reused``** (a key names one request).

A worker that dies mid-request leaves its claim until ``CLAIM_SECONDS`` pass (nginx waits
60 s for an answer); a retry after that runs afresh and, if the dead worker's records did
reach Kafka, writes them twice.  Redis down: a request with a key is 503
``idempotency_unavailable`` (fail closed: without Redis no retry could be recognised).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from config.errors import Conflict, InvalidInput, ServiceUnavailable, SluiceError, error_body
from ingest.kafka import DELIVERY_TIMEOUT_MS
from ingest.services import Accepted, KafkaUnacknowledged

log = logging.getLogger("sluice.ingest")

HEADER = b"idempotency-key"
REPLAYED = (b"idempotency-replayed", b"true")
KEY_PREFIX = "sluice:ingest:idem"
# A running request holds its key at most this long (nginx gives up on a worker after 60 s).
CLAIM_SECONDS = 90
# ... and while librdkafka still tries its records, as long as librdkafka may (and a margin).
UNSETTLED_SECONDS = DELIVERY_TIMEOUT_MS // 1000 + 60
IN_USE_RETRY_AFTER = 1
SETTLING_RETRY_AFTER = 5  # while librdkafka retries a 503's records (Kafka is away)
WRITE_ATTEMPTS = 3  # a key's answer is worth a retry: without it, a retry could write twice
# Visible ASCII without the quote and the backslash, optionally inside one pair of quotes
# (the draft's structured-field string; a bare key is accepted as most clients send one).
_KEY = re.compile(rb'"?([\x21\x23-\x5b\x5d-\x7e]{1,255})"?')


class IdempotencyKeyReused(SluiceError):
    code = "idempotency_key_reused"
    status = 422


@dataclass(frozen=True, slots=True)
class Claim:
    """This request holds the key: its outcome is the key's."""

    redis_key: str
    fingerprint: str
    request_id: bytes


@dataclass(frozen=True, slots=True)
class Replay:
    """The key's first request's answer."""

    status: int
    body: bytes
    request_id: bytes


def parse_key(raw: bytes) -> bytes:
    """The key a header names, or 400 ``invalid_idempotency_key``."""
    match = _KEY.fullmatch(raw.strip())
    if match is None or raw.strip().startswith(b'"') != raw.strip().endswith(b'"'):
        raise InvalidInput(
            "Idempotency-Key must be 1 to 255 visible ASCII characters (no quote or backslash inside), "
            'optionally in double quotes, e.g. Idempotency-Key: "4f1c2d9e-7a41-4c53-9a0b-2f6d8e1b5c07".',
            code="invalid_idempotency_key",
        )
    return match.group(1)


def _unavailable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Idempotency-Key cannot be checked: Redis is not reachable ({type(exc).__name__}); nothing was produced. "
        "Try again shortly with the same key.",
        code="idempotency_unavailable",
    )


class Idempotency:
    """One per ingest worker, on its event loop; ``client`` is the worker's Redis client."""

    def __init__(self, client: Callable[[], redis.asyncio.Redis], window_seconds: int) -> None:
        self._client = client
        self.window = window_seconds
        self._settling: set[asyncio.Task[None]] = set()

    async def claim(self, tenant_id: int, device_pk: int, key: bytes, body: bytes, request_id: bytes) -> Claim | Replay:
        """Hold ``key`` for this request, or answer with what it already holds."""
        digest = hashlib.sha256(key).hexdigest()
        claim = Claim(f"{KEY_PREFIX}:{tenant_id}:{device_pk}:{digest}", hashlib.sha256(body).hexdigest(), request_id)
        held = orjson.dumps({"fp": claim.fingerprint, "rid": request_id.decode()})
        try:
            before = await self._client().set(claim.redis_key, held, nx=True, ex=CLAIM_SECONDS, get=True)
        except (redis.RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        if before is None:
            return claim
        kept = orjson.loads(before)  # type: ignore[arg-type] # SET ... GET answers the old value
        if kept["fp"] != claim.fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a request with another body; a key names one request "
                "(use a new key for new records). Nothing was produced.",
                code="idempotency_key_reused",
            )
        if "status" not in kept:
            raise Conflict(
                "A request with this Idempotency-Key is still being written (its records may be waiting for "
                "Kafka); nothing was produced by this one. Retry shortly with the same key to get its answer.",
                code="idempotency_key_in_use",
                retry_after=SETTLING_RETRY_AFTER if kept.get("settling") else IN_USE_RETRY_AFTER,
            )
        return Replay(kept["status"], kept["body"].encode(), kept["rid"].encode())

    async def complete(self, claim: Claim, status: int, body: bytes) -> None:
        """The request's answer is final: keep it for the window."""
        value = orjson.dumps({"fp": claim.fingerprint, "rid": claim.request_id.decode(), "status": status,
                              "body": body.decode()})  # fmt: skip
        if not await self._set(claim, value, self.window):
            # The answer stands (the records are written); only a retry within the claim's
            # remaining time is still recognised (as in use).
            log.warning("ingest: could not keep the answer for an Idempotency-Key")

    async def refused(self, claim: Claim, error: SluiceError) -> None:
        """The request was refused: free the key, unless Kafka may still write its records
        (then hold it while librdkafka tries them, and keep what became of them)."""
        if isinstance(error, KafkaUnacknowledged) and error.outcome.queued:
            await self._hold(claim)
            self._spawn(self._settle(claim, error))
            return
        await self._free(claim)

    def abandoned(self, claim: Claim, *, produced: bool) -> None:
        """The request ended without an answer of its own (a bug, or cancelled): free the key
        when nothing was produced, else hold it while librdkafka may still write."""
        self._spawn(self._hold(claim) if produced else self._free(claim))

    async def _free(self, claim: Claim) -> None:
        try:
            await self._client().delete(claim.redis_key)
        except (redis.RedisError, OSError):
            log.warning("ingest: could not free an Idempotency-Key (it frees itself within %d s)", CLAIM_SECONDS)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _hold(self, claim: Claim) -> None:
        held = orjson.dumps({"fp": claim.fingerprint, "rid": claim.request_id.decode(), "settling": True})
        if not await self._set(claim, held, UNSETTLED_SECONDS):
            log.warning("ingest: could not hold an Idempotency-Key while Kafka settles its records")

    async def _set(self, claim: Claim, value: bytes, seconds: int) -> bool:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                await self._client().set(claim.redis_key, value, ex=seconds)
                return True
            except (redis.RedisError, OSError):
                if attempt + 1 < WRITE_ATTEMPTS:
                    await asyncio.sleep(0.05 * (attempt + 1))
        return False

    async def _settle(self, claim: Claim, error: KafkaUnacknowledged) -> None:
        settle = error.outcome.settle
        try:
            final = await asyncio.wait_for(settle(), UNSETTLED_SECONDS) if settle is not None else error.outcome
        except TimeoutError:
            final = error.outcome  # librdkafka never reported: as unknown as it gets
        if final.complete:
            if error.answer is not None:
                body = error.answer(final)
            else:
                body = Accepted(topic=error.topic, offsets=final.delivered).as_json()  # type: ignore[arg-type]
            await self.complete(claim, 200, body)
            return
        total = len(final.delivered)
        written = sum(d is not None for d in final.delivered)
        unknown = Conflict(
            f"Kafka did not confirm {total - written} of this request's {total} record(s) ({written} were written); "
            "they may or may not be in the topic. Retrying with this key writes nothing; send them with a new "
            "Idempotency-Key to write them again (which may write some twice).",
            code="idempotency_outcome_unknown",
        )
        await self.complete(claim, unknown.status, orjson.dumps(error_body(unknown.code, unknown.message)))

    async def close(self, grace: float = 5.0) -> None:
        """Let settlements finish (the producer was flushed first), then stop waiting: a key
        still held frees itself when its hold ends."""
        if self._settling:
            await asyncio.wait(list(self._settling), timeout=grace)
        for task in self._settling:
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
