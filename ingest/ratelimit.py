"""Ingest rate limits: token buckets, refilled continuously, each holding one second's worth.

Three limits apply to a request, checked in this order:

* the device group's ``rate_limit_per_second``: **requests** per second per device (a batch
  is one request).  nginx sends every request of a device to the same ingest worker (a hash
  of its certificate serial or token), so this bucket lives in that worker's memory: no
  shared state and no round trip.  Should a device land on another worker (one restarted),
  that worker starts it with a full bucket: at most one extra second's burst.
* the tenant's ``max_records_per_second`` and ``max_bytes_per_second`` (request body bytes),
  across all its devices and every worker.  The buckets live in Redis; each worker *leases*
  a slice of them (``LEASE_FRACTION`` of a second's worth, at least what the request needs)
  and spends it locally for at most ``LEASE_SECONDS``; what is left of a lease goes back
  with the next one.  So a worker asks Redis about once per slice, never more than once
  per request, and the tenant's budget is shared exactly (a slice held by one worker is
  at most 5 % of a second's budget).

A request refused by one limit takes nothing from the others.  A request larger than a
whole second of the tenant's budget can never pass: 413, not a 429 to retry forever.

Redis down means fail closed: when a worker's lease runs out and Redis cannot be asked,
503 ``rate_limiter_unavailable``.  Accepting unmetered traffic would let one tenant starve
the others exactly when the platform is already degraded; devices retry after a 503.

Every answer carries the limits it was measured against, as the IETF RateLimit fields
(draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy`` names each quota ``q`` per
window ``w`` (seconds), ``RateLimit`` what remains ``r`` and when the bucket is full
again ``t`` (seconds).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import time
from dataclasses import dataclass, field

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from config.errors import PayloadTooLarge, RateLimited, ServiceUnavailable

KEY_PREFIX = "sluice:ingest"
LEASE_FRACTION = 0.05  # of a second's budget per lease
LEASE_SECONDS = 0.25  # a lease not spent by then goes back
REDIS_TIMEOUT = 0.5  # seconds: a stuck Redis costs a request half a second, not a worker
# A pooled connection that a Redis restart closed fails its next command at once: that one
# is tried again on a new connection (redis-py's clients made by from_url retry nothing).
# A timeout is not retried: a stuck Redis still costs a request REDIS_TIMEOUT, not twice it.
IDLE_DEVICE_SECONDS = 5.0  # a bucket untouched this long is full again: forget it


@dataclass(frozen=True, slots=True)
class Budget:
    """The limits that apply to one request and what it costs."""

    tenant_id: int
    device_pk: int
    device_requests_per_second: int
    tenant_records_per_second: int
    tenant_bytes_per_second: int
    records: int
    body_bytes: int


@dataclass(slots=True)
class Verdict:
    """What was left after a request was let through (for the RateLimit fields)."""

    device_remaining: int
    device_reset: int
    tenant_records_remaining: int


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Lease:
    records: int = 0
    bytes: int = 0
    expires: float = 0.0
    remote_records: int = 0  # what Redis said was left after the last lease
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _unavailable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The rate limiter (Redis) is not reachable ({type(exc).__name__}); nothing was produced. Try again shortly.",
        code="rate_limiter_unavailable",
    )


def _retry_after(missing: float, rate: float) -> int:
    """Whole seconds until ``missing`` tokens have refilled (at least 1: Retry-After is whole seconds)."""
    return max(1, math.ceil(missing / rate))


@functools.lru_cache(maxsize=4096)
def _policy(device: int, records: int, sent_bytes: int) -> str:
    return (
        f'"device";q={device};w=1, '
        f'"tenant-records";q={records};w=1, '
        f'"tenant-bytes";q={sent_bytes};w=1;qu="content-bytes"'
    )


def policy_header(budget: Budget) -> str:
    return _policy(budget.device_requests_per_second, budget.tenant_records_per_second, budget.tenant_bytes_per_second)


def remaining_header(verdict: Verdict) -> str:
    return (
        f'"device";r={verdict.device_remaining};t={verdict.device_reset}, '
        f'"tenant-records";r={verdict.tenant_records_remaining};t=1'
    )


# Both of a tenant's buckets in one round trip (a Lua script runs atomically in Redis).
# KEYS: records bucket, bytes bucket (hashes of tokens and the time they were counted).
# ARGV: records rate, bytes rate, records needed, bytes needed, records wanted, bytes
# wanted, records given back, bytes given back.  Each bucket holds one second's worth.
# Returns {granted records, granted bytes, records left, bytes left, milliseconds until
# the request would fit}; nothing is taken unless both buckets grant.
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, rate, back)
  local b = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(b[1]), tonumber(b[2])
  if tokens == nil then tokens, at = rate, now end
  return math.min(rate, tokens + math.max(0, now - at) * rate + back)
end
local rrate, brate = tonumber(ARGV[1]), tonumber(ARGV[2])
local rneed, bneed = tonumber(ARGV[3]), tonumber(ARGV[4])
local rwant, bwant = tonumber(ARGV[5]), tonumber(ARGV[6])
local r = level(KEYS[1], rrate, tonumber(ARGV[7]))
local b = level(KEYS[2], brate, tonumber(ARGV[8]))
local rgrant, bgrant, wait = 0, 0, 0
if r >= rneed and b >= bneed then
  rgrant = math.max(rneed, math.min(rwant, math.floor(r)))
  bgrant = math.max(bneed, math.min(bwant, math.floor(b)))
  r, b = r - rgrant, b - bgrant
else
  wait = math.max((rneed - r) / rrate, (bneed - b) / brate) * 1000
end
redis.call('HSET', KEYS[1], 'tokens', r, 'at', now)
redis.call('HSET', KEYS[2], 'tokens', b, 'at', now)
redis.call('PEXPIRE', KEYS[1], 2000)
redis.call('PEXPIRE', KEYS[2], 2000)
return {rgrant, bgrant, math.floor(r), math.floor(b), math.ceil(wait)}
"""
LEASE_SCRIPT_SHA = hashlib.sha1(LEASE_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


class RateLimiter:
    """One per ingest worker, used from its event loop only."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._client: redis.asyncio.Redis | None = None
        self._devices: dict[int, _Bucket] = {}
        self._leases: dict[int, _Lease] = {}
        self._swept = time.monotonic()

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            self._client = redis.asyncio.Redis.from_url(
                self._redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )  # fmt: skip
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def take(self, budget: Budget) -> Verdict:
        """Let the request through (and say what is left), or raise ``RateLimited``,
        ``PayloadTooLarge`` or ``ServiceUnavailable``."""
        too_big = []
        if budget.records > budget.tenant_records_per_second:
            too_big.append(f"{budget.records} records (limit {budget.tenant_records_per_second} per second)")
        if budget.body_bytes > budget.tenant_bytes_per_second:
            too_big.append(f"{budget.body_bytes} bytes (limit {budget.tenant_bytes_per_second} per second)")
        if too_big:
            raise PayloadTooLarge(
                f"This request alone exceeds the tenant's rate limit: {' and '.join(too_big)}; send smaller batches.",
                code="exceeds_tenant_limit",
            )
        now = time.monotonic()
        bucket = self._device_bucket(budget, now)
        if bucket.tokens < 1:
            raise RateLimited(
                f"This device may send {budget.device_requests_per_second} request(s) per second (its group's "
                "limit); nothing was produced.",
                retry_after=_retry_after(1 - bucket.tokens, budget.device_requests_per_second),
            )
        bucket.tokens -= 1
        try:
            remote_left = await self._take_tenant(budget)
        except BaseException:
            bucket.tokens += 1  # refused (or failed) for the tenant: nothing taken from the device
            raise
        rate = budget.device_requests_per_second
        return Verdict(
            device_remaining=int(bucket.tokens),
            device_reset=math.ceil((rate - bucket.tokens) / rate),
            tenant_records_remaining=remote_left,
        )

    def _device_bucket(self, budget: Budget, now: float) -> _Bucket:
        if now - self._swept > IDLE_DEVICE_SECONDS:
            self._sweep(now)
        rate = budget.device_requests_per_second
        bucket = self._devices.get(budget.device_pk)
        if bucket is None:
            bucket = self._devices[budget.device_pk] = _Bucket(float(rate), now)
        else:
            bucket.tokens = min(float(rate), bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
        return bucket

    def _sweep(self, now: float) -> None:
        self._swept = now
        idle = [pk for pk, b in self._devices.items() if now - b.at > IDLE_DEVICE_SECONDS]
        for pk in idle:
            del self._devices[pk]

    async def _take_tenant(self, budget: Budget) -> int:
        lease = self._leases.get(budget.tenant_id)
        if lease is None:
            lease = self._leases[budget.tenant_id] = _Lease()
        if self._spend(lease, budget):
            return lease.remote_records + lease.records
        async with lease.lock:  # one lease request per tenant and worker at a time
            if self._spend(lease, budget):
                return lease.remote_records + lease.records
            await self._renew(lease, budget)
        return lease.remote_records + lease.records

    @staticmethod
    def _spend(lease: _Lease, budget: Budget) -> bool:
        if lease.expires > time.monotonic() and lease.records >= budget.records and lease.bytes >= budget.body_bytes:
            lease.records -= budget.records
            lease.bytes -= budget.body_bytes
            return True
        return False

    async def _renew(self, lease: _Lease, budget: Budget) -> None:
        """Give back what is left of the lease, and take a new one that covers this request."""
        rrate, brate = budget.tenant_records_per_second, budget.tenant_bytes_per_second
        keys = (f"{KEY_PREFIX}:tb:{budget.tenant_id}:records", f"{KEY_PREFIX}:tb:{budget.tenant_id}:bytes")
        args = (rrate, brate, budget.records, budget.body_bytes,
                max(budget.records, math.ceil(rrate * LEASE_FRACTION)),
                max(budget.body_bytes, math.ceil(brate * LEASE_FRACTION)),
                lease.records, lease.bytes)  # fmt: skip
        lease.records = lease.bytes = 0
        lease.expires = 0.0
        try:
            granted_records, granted_bytes, records_left, bytes_left, wait_ms = await self._lease(keys, args)
        except (redis.RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        lease.remote_records = int(records_left)
        if not granted_records:
            over = []
            if budget.records > int(records_left):
                over.append(f"{rrate} records per second")
            if budget.body_bytes > int(bytes_left) or not over:
                over.append(f"{brate} bytes per second")
            error = RateLimited(
                f"The tenant's ingest limit of {' and '.join(over)} is reached; nothing was produced.",
                retry_after=max(1, math.ceil(int(wait_ms) / 1000)),
            )
            error.scope = "tenant"
            raise error
        lease.records = int(granted_records) - budget.records
        lease.bytes = int(granted_bytes) - budget.body_bytes
        lease.expires = time.monotonic() + LEASE_SECONDS

    async def _lease(self, keys: tuple[str, str], args: tuple[int, ...]) -> list[int]:
        """Run ``LEASE_SCRIPT`` by its hash (EVALSHA), loading it (EVAL) when Redis does not
        know it yet (first use, or after a restart or SCRIPT FLUSH)."""
        try:
            return await self.client.evalsha(LEASE_SCRIPT_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self.client.eval(LEASE_SCRIPT, len(keys), *keys, *args)


def redis_client() -> redis.Redis:
    """A blocking client (the control plane's view of the same Redis: metrics, tests)."""
    from django.conf import settings

    once = redis.retry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    return redis.Redis.from_url(settings.SLUICE_RUNTIME.redis_url(), socket_timeout=REDIS_TIMEOUT,
                                socket_connect_timeout=REDIS_TIMEOUT, retry=once)  # fmt: skip
