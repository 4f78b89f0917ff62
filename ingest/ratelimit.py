"""Ingest rate limits: fixed one-second windows counted in Redis, shared by every web worker.

Three limits apply to a request, checked in this order:

* the device group's ``rate_limit_per_second``: **requests** per second per device (a batch
  is one request, so a device can still send up to ``MAX_RECORDS`` records at once);
* the tenant's ``max_records_per_second`` and ``max_bytes_per_second`` (request body bytes),
  across all of its devices.

A refused request is not counted against the tenant (its increments are taken back), so one
noisy device cannot use up its tenant's budget with traffic that was never produced.

Redis down means fail closed: 503 ``rate_limiter_unavailable``.  Accepting unmetered traffic
would let one tenant starve the others exactly when the platform is already degraded, and
devices are expected to retry after a 503.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings

from config.errors import PayloadTooLarge, RateLimited, ServiceUnavailable

KEY_PREFIX = "sluice:ingest"
# Windows live a little longer than their second so a slow clock edge never resets one early.
WINDOW_TTL_SECONDS = 3

_client_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def redis_client() -> redis.Redis:
    """One connection pool per process; short timeouts so a stuck Redis costs a request
    half a second, not a worker."""
    url = settings.SLUICE_RUNTIME.redis_url()
    with _client_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
            _clients[url] = client
        return client


@dataclass(frozen=True)
class Budget:
    """The limits that apply to one request and what it costs."""

    tenant_id: int
    device_pk: int
    device_requests_per_second: int
    tenant_records_per_second: int
    tenant_bytes_per_second: int
    records: int
    body_bytes: int


def _unavailable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The rate limiter (Redis) is not reachable ({type(exc).__name__}); nothing was produced. Try again shortly.",
        code="rate_limiter_unavailable",
    )


def _retry_after(now: float) -> int:
    """Seconds until the next window starts (at least 1: Retry-After is whole seconds)."""
    return max(1, math.ceil(math.floor(now) + 1 - now))


def rate_limit_take(budget: Budget, *, now: float | None = None) -> None:
    """Count this request in the current window, or raise ``RateLimited`` without counting it
    against the tenant.  Raises ``ServiceUnavailable`` when Redis cannot answer."""
    # A request larger than a whole second of the tenant's quota can never pass; 429 with
    # Retry-After would have the device retry it forever.  Say so (413) and how to split it.
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
    now = time.time() if now is None else now
    window = int(now)
    keys = (
        f"{KEY_PREFIX}:rl:{window}:device:{budget.device_pk}",
        f"{KEY_PREFIX}:rl:{window}:tenant:{budget.tenant_id}:records",
        f"{KEY_PREFIX}:rl:{window}:tenant:{budget.tenant_id}:bytes",
    )
    args = (budget.device_requests_per_second, budget.tenant_records_per_second, budget.tenant_bytes_per_second,
            budget.records, budget.body_bytes, WINDOW_TTL_SECONDS)  # fmt: skip
    try:
        verdict, _device_count, records, sent_bytes = _take(redis_client(), keys, args)
    except redis.RedisError as exc:
        raise _unavailable(exc) from None
    if int(verdict) == DEVICE_OVER:
        raise RateLimited(
            f"This device may send {budget.device_requests_per_second} request(s) per second (its group's "
            "limit); nothing was produced.",
            retry_after=_retry_after(now),
        )
    if int(verdict) == TENANT_OVER:
        over = []
        if int(records) > budget.tenant_records_per_second:
            over.append(f"{budget.tenant_records_per_second} records per second")
        if int(sent_bytes) > budget.tenant_bytes_per_second:
            over.append(f"{budget.tenant_bytes_per_second} bytes per second")
        raise RateLimited(
            f"The tenant's ingest limit of {' and '.join(over)} is reached; nothing was produced.",
            retry_after=_retry_after(now),
        )


# All three windows in one round trip (a Lua script runs atomically in Redis), with exactly
# the semantics of the two transactions it replaced: the device's request counter first (a
# request over it touches nothing else), then the tenant's records and bytes, taken back
# when either is over.  Returns {verdict, device count, tenant records, tenant bytes}.
TAKE_SCRIPT = """
local device = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if device > tonumber(ARGV[1]) then
  return {1, device, 0, 0}
end
local records = redis.call('INCRBY', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
local sent = redis.call('INCRBY', KEYS[3], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
if records > tonumber(ARGV[2]) or sent > tonumber(ARGV[3]) then
  redis.call('DECRBY', KEYS[2], ARGV[4])
  redis.call('DECRBY', KEYS[3], ARGV[5])
  return {2, device, records, sent}
end
return {0, device, records, sent}
"""
TAKE_SCRIPT_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
PASSED, DEVICE_OVER, TENANT_OVER = 0, 1, 2


def _take(client: redis.Redis, keys: tuple[str, ...], args: tuple[int, ...]) -> list[int]:
    """Run ``TAKE_SCRIPT`` by its hash (EVALSHA), loading it once per Redis (EVAL) when
    Redis does not know it yet (first use, or after a restart or SCRIPT FLUSH)."""
    try:
        return client.evalsha(TAKE_SCRIPT_SHA, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(TAKE_SCRIPT, len(keys), *keys, *args)


DEVICE_SEEN_EVERY_SECONDS = 60


def device_seen_key(device_pk: int) -> str:
    return f"{KEY_PREFIX}:seen:{device_pk}"
