"""Ingest outcome counters, device sightings and refusals, kept per worker and flushed in
the background.

Counting in Redis on every request would cost a round trip per request; instead each
worker adds to its own ``Outcomes`` and a background task flushes them every
``FLUSH_SECONDS``, in one pipelined round trip, into Redis:

* ``COUNTERS_KEY``: one hash of totals per outcome (every worker adds to the same numbers;
  ``/metrics``, config/metrics.py, reads them);
* ``LAST_SEEN_KEY``: one hash, device pk -> epoch second of the flush after its last
  accepted request (one HSET per flush for every device seen since the previous one);
* ``refused_bucket_key(minute)``: per minute, refusals in all (``ALL_FIELD``) and per tenant
  (``tenant_field``), kept two hours, so the console can sum the last hour;
* ``refusals_key(device)``: per device, its latest refusals (code, time, how many in that
  flush), newest first, capped at ``REFUSALS_KEPT`` and kept ``REFUSALS_TTL_SECONDS``.

A successful request costs one ``set.add`` here (the device it wrote for); refusals, the
rare path, cost a dict update.  The database's ``last_seen_at`` is still written, at most
once per ``DEVICE_SEEN_EVERY_SECONDS`` per device.  All of it is best effort: Redis or the
database failing costs a count or a timestamp, never an answer.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import orjson
import redis
from django.db import close_old_connections
from django.utils import timezone

from devices.models import Device
from ingest.ratelimit import redis_client

KEY_PREFIX = "sluice:ingest"
COUNTERS_KEY = f"{KEY_PREFIX}:outcomes"
LAST_SEEN_KEY = f"{KEY_PREFIX}:last_seen"
ACCEPTED = "accepted"
ALL_FIELD = "all"
FLUSH_SECONDS = 1.0
DEVICE_SEEN_EVERY_SECONDS = 60.0
BUCKET_SECONDS = 60
BUCKET_TTL_SECONDS = 2 * 3600
REFUSALS_KEPT = 20
REFUSALS_TTL_SECONDS = 7 * 24 * 3600
# Distinct (tenant, device, code) kept per flush interval; a storm beyond it is still
# counted per code, just not attributed to devices until the next flush.
MAX_ATTRIBUTED_PER_FLUSH = 10_000

log = logging.getLogger("sluice.ingest")


def refused_bucket_key(minute: int) -> str:
    """The hash of refusals in the minute starting at epoch second ``minute * 60``."""
    return f"{KEY_PREFIX}:refused:{minute}"


def tenant_field(tenant_id: int) -> str:
    return f"t{tenant_id}"


def refusals_key(device_pk: int) -> str:
    return f"{KEY_PREFIX}:refusals:{device_pk}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """``count`` refusals with ``code`` for one device in one flush, the last at ``at``."""

    code: str
    at: float
    count: int

    def encode(self) -> bytes:
        return orjson.dumps({"code": self.code, "at": self.at, "count": self.count})

    @classmethod
    def decode(cls, raw: bytes) -> Refusal:
        data = orjson.loads(raw)
        return cls(code=str(data["code"]), at=float(data["at"]), count=int(data["count"]))


class Outcomes:
    """One worker's counts since the last flush, the devices it saw and its refusals."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._seen: set[int] = set()
        self._written: dict[int, float] = {}
        # (tenant id, device pk, code) -> [count, epoch of the last]
        self._attributed: dict[tuple[int, int, str], list[float]] = {}

    def accepted(self, records: int, device_pk: int) -> None:
        self.counts[ACCEPTED] += records
        self._seen.add(device_pk)

    def refused(self, code: str) -> None:
        self.counts[code] += 1

    def refused_device(self, tenant_id: int, device_pk: int, code: str) -> None:
        """Attribute a refusal (also counted by ``refused``) to the device it was for."""
        key = (tenant_id, device_pk, code)
        entry = self._attributed.get(key)
        if entry is not None:
            entry[0] += 1
            entry[1] = time.time()
        elif len(self._attributed) < MAX_ATTRIBUTED_PER_FLUSH:
            self._attributed[key] = [1, time.time()]

    def take(self, now: float | None = None) -> Flush:
        """Everything gathered since the last call, ready to write."""
        now = time.monotonic() if now is None else now
        counts, self.counts = dict(self.counts), Counter()
        seen, self._seen = self._seen, set()
        attributed, self._attributed = self._attributed, {}
        every = DEVICE_SEEN_EVERY_SECONDS
        due = [pk for pk in seen if now - self._written.get(pk, -every) >= every]
        for pk in due:
            self._written[pk] = now
        if len(self._written) > 500_000:
            self._written = {pk: t for pk, t in self._written.items() if now - t < DEVICE_SEEN_EVERY_SECONDS}
        refusals = {key: Refusal(code=key[2], at=at, count=int(n)) for key, (n, at) in attributed.items()}
        return Flush(counts=counts, seen=sorted(seen), due_for_database=due, refusals=refusals)


@dataclass(frozen=True)
class Flush:
    counts: dict[str, int]
    seen: list[int]
    due_for_database: list[int]
    refusals: dict[tuple[int, int, str], Refusal]

    def __bool__(self) -> bool:
        return bool(self.counts or self.seen or self.refusals)


def flush_to_redis(client: redis.Redis, flush: Flush, now: float | None = None) -> None:
    """Write one flush in one pipelined round trip (blocking; called off the event loop)."""
    if not flush:
        return
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for outcome, amount in flush.counts.items():
        pipe.hincrby(COUNTERS_KEY, outcome, amount)
    if flush.seen:
        stamp = int(now)
        pipe.hset(LAST_SEEN_KEY, mapping=dict.fromkeys(flush.seen, stamp))
    refused = sum(n for outcome, n in flush.counts.items() if outcome != ACCEPTED)
    if refused:
        bucket = refused_bucket_key(int(now) // BUCKET_SECONDS)
        pipe.hincrby(bucket, ALL_FIELD, refused)
        per_tenant: Counter[int] = Counter()
        per_device: dict[int, list[Refusal]] = {}
        for (tenant_id, device_pk, _code), refusal in flush.refusals.items():
            per_tenant[tenant_id] += refusal.count
            per_device.setdefault(device_pk, []).append(refusal)
        for tenant_id, amount in per_tenant.items():
            pipe.hincrby(bucket, tenant_field(tenant_id), amount)
        pipe.expire(bucket, BUCKET_TTL_SECONDS)
        for device_pk, device_refusals in per_device.items():
            key = refusals_key(device_pk)
            pipe.lpush(key, *(r.encode() for r in sorted(device_refusals, key=lambda r: r.at)))
            pipe.ltrim(key, 0, REFUSALS_KEPT - 1)
            pipe.expire(key, REFUSALS_TTL_SECONDS)
    pipe.execute()


def write_last_seen(device_pks: list[int]) -> None:
    """Record in the database that these devices sent accepted records (blocking; off the
    event loop)."""
    if not device_pks:
        return
    close_old_connections()
    Device.objects.filter(pk__in=device_pks).update(last_seen_at=timezone.now())


def counters() -> dict[str, int]:
    """Every worker's flushed counts (the control plane's /metrics reads these)."""
    try:
        raw = redis_client().hgetall(COUNTERS_KEY)
    except redis.RedisError:
        return {}
    # A client without decode_responses answers bytes; redis-py types every answer bytes | str.
    return {key.decode(): int(value) for key, value in raw.items()}  # type: ignore[union-attr]
