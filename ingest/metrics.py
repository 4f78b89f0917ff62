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

A successful request costs one ``set.add`` here (the device it wrote for) and a few dict
and list additions for the Prometheus metrics (records and bytes per tenant and stream,
requests per tenant and status, two local histograms); refusals, the rare path, cost a dict
update or two.  The same flush pushes those into prometheus-client (``push_to_prometheus``,
config.instruments): no prometheus-client call is made per request.  The database's
``last_seen_at`` is still written, at most once per ``DEVICE_SEEN_EVERY_SECONDS`` per
device.  All of it is best effort: Redis or the database failing costs a count or a
timestamp, never an answer.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
import redis
from django.db import close_old_connections
from django.utils import timezone

from config import instruments
from config.instruments import ACCEPTED as ANSWER_ACCEPTED
from config.instruments import FAILED, REFUSED, REQUEST_BUCKETS, LocalHistogram
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

    def __init__(self, transport: str = "https") -> None:
        self.transport = transport  # "https" or "mqtt": the dead letters' label
        self.counts: Counter[str] = Counter()
        self._seen: set[int] = set()
        self._written: dict[int, float] = {}
        # (tenant id, device pk, code) -> [count, epoch of the last]
        self._attributed: dict[tuple[int, int, str], list[float]] = {}
        self._reset_prometheus()

    def _reset_prometheus(self) -> None:
        # Plain dicts and lists (no prometheus-client call, no lock): see push_to_prometheus.
        # (tenant slug, topic) -> [records, bytes]
        self.streams: dict[tuple[str, str], list[int]] = {}
        self.requests: dict[tuple[str, int], int] = {}  # (tenant slug, HTTP status)
        self.refusals: Counter[tuple[str, str]] = Counter()  # (tenant slug, code)
        self.rate_limited: Counter[tuple[str, str]] = Counter()  # (tenant slug, scope)
        self.dead_letters: Counter[tuple[str, str]] = Counter()  # (tenant slug, code)
        self._answered_accepted = LocalHistogram(REQUEST_BUCKETS)
        self._answered_refused = LocalHistogram(REQUEST_BUCKETS)
        self._answered_failed = LocalHistogram(REQUEST_BUCKETS)
        self.delivery = LocalHistogram(REQUEST_BUCKETS)

    @property
    def durations(self) -> dict[str, LocalHistogram]:
        return {ANSWER_ACCEPTED: self._answered_accepted, REFUSED: self._answered_refused,
                FAILED: self._answered_failed}  # fmt: skip

    def accepted(
        self, records: int, device_pk: int, tenant: str = "", topic: str = "", size: int = 0,
        delivery_seconds: float | None = None,
    ) -> None:  # fmt: skip
        """Kafka acknowledged ``records`` (a body of ``size`` bytes) for this device, of
        ``tenant``'s stream ``topic``, ``delivery_seconds`` after they were produced."""
        self.counts[ACCEPTED] += records
        self._seen.add(device_pk)
        entry = self.streams.get((tenant, topic))
        if entry is None:
            self.streams[(tenant, topic)] = [records, size]
        else:
            entry[0] += records
            entry[1] += size
        if delivery_seconds is not None:
            # LocalHistogram.observe, inlined: this runs for every accepted request.
            histogram = self.delivery
            histogram.counts[bisect_left(histogram.bounds, delivery_seconds)] += 1
            histogram.total += delivery_seconds

    def answered(self, tenant: str, status: int, seconds: float) -> None:
        """Every request, once answered: its status and how long it took."""
        key = (tenant, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if status < 400:
            histogram = self._answered_accepted
        else:
            histogram = self._answered_failed if status >= 500 else self._answered_refused
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.total += seconds

    def refused(self, code: str, tenant: str = "", rate_limit_scope: str | None = None) -> None:
        self.counts[code] += 1
        self.refusals[(tenant, code)] += 1
        if rate_limit_scope is not None:
            self.rate_limited[(tenant, rate_limit_scope)] += 1

    def dead_lettered(self, tenant: str, codes: Iterable[str]) -> None:
        """Records Kafka acknowledged in the tenant's dead-letter topic (an ``?invalid=dlq``
        request's, or the MQTT bridge's), by their record's error code."""
        for code in codes:
            self.dead_letters[(tenant, code)] += 1

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
        metrics = Metrics(streams=self.streams, requests=self.requests, refusals=self.refusals,
                          rate_limited=self.rate_limited, durations=self.durations, delivery=self.delivery,
                          dead_letters=self.dead_letters, transport=self.transport)  # fmt: skip
        self._reset_prometheus()
        return Flush(counts=counts, seen=sorted(seen), due_for_database=due, refusals=refusals, metrics=metrics)


@dataclass(frozen=True)
class Metrics:
    """What one flush adds to the Prometheus metrics (see ``Outcomes``)."""

    streams: dict[tuple[str, str], list[int]]
    requests: dict[tuple[str, int], int]
    refusals: Counter[tuple[str, str]]
    rate_limited: Counter[tuple[str, str]]
    durations: dict[str, LocalHistogram]
    delivery: LocalHistogram
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    transport: str = "https"


@dataclass(frozen=True)
class Flush:
    counts: dict[str, int]
    seen: list[int]
    due_for_database: list[int]
    refusals: dict[tuple[int, int, str], Refusal]
    metrics: Metrics | None = None

    def __bool__(self) -> bool:
        return bool(self.counts or self.seen or self.refusals)


def stream_label(tenant: str, topic: str) -> str:
    """The ``stream`` label of a topic: its name inside the tenant's namespace
    (``iot.<tenant>.<region>.<type>[.enriched]`` -> ``<region>.<type>[.enriched]``)."""
    prefix = f"iot.{tenant}."
    return topic[len(prefix) :] if topic.startswith(prefix) else topic


def push_to_prometheus(metrics: Metrics, producer_queue: int | None = None) -> None:
    """Add one flush's counts to prometheus-client (config.instruments): a few calls per
    tenant, stream, status and code seen in the last second, never per request."""
    for (tenant, topic), (records, size) in metrics.streams.items():
        stream = stream_label(tenant, topic)
        instruments.INGEST_RECORDS.labels(tenant=tenant, stream=stream).inc(records)
        instruments.INGEST_BYTES.labels(tenant=tenant, stream=stream).inc(size)
    for (tenant, status), n in metrics.requests.items():
        instruments.INGEST_REQUESTS.labels(tenant=tenant, status=str(status)).inc(n)
    for (tenant, code), n in metrics.refusals.items():
        instruments.INGEST_REFUSALS.labels(tenant=tenant, code=code).inc(n)
    for (tenant, scope), n in metrics.rate_limited.items():
        instruments.INGEST_RATE_LIMITED.labels(tenant=tenant, scope=scope).inc(n)
    for (tenant, code), n in metrics.dead_letters.items():
        instruments.INGEST_DEAD_LETTERS.labels(tenant=tenant, code=code, transport=metrics.transport).inc(n)
    for outcome, histogram in metrics.durations.items():
        if histogram:
            histogram.push(instruments.INGEST_REQUEST_DURATION.labels(outcome=outcome))
    if metrics.delivery:
        metrics.delivery.push(instruments.INGEST_DELIVERY_DURATION)
    if producer_queue is not None:
        instruments.INGEST_PRODUCER_QUEUE.set(producer_queue)


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
