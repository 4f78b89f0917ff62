"""Ingest outcome counters, kept in Redis so every web worker adds to the same numbers and
``/metrics`` (config/metrics.py) can read them: records accepted, requests refused by code."""

from __future__ import annotations

import contextlib

import redis

from ingest.ratelimit import DEVICE_SEEN_EVERY_SECONDS, KEY_PREFIX, device_seen_key, redis_client

COUNTERS_KEY = f"{KEY_PREFIX}:outcomes"
ACCEPTED = "accepted"


def count(outcome: str, amount: int = 1) -> None:
    """Add ``amount`` to ``outcome`` (``accepted`` counts records, any error code requests)."""
    # Counters are best effort; the answer to the device matters more.
    with contextlib.suppress(redis.RedisError):
        redis_client().hincrby(COUNTERS_KEY, outcome, amount)


def count_accepted(records: int, *, device_pk: int) -> bool:
    """Add ``records`` to ``accepted`` and, in the same round trip to Redis, ask whether
    this device's ``last_seen_at`` is due for a write (true at most once per
    ``DEVICE_SEEN_EVERY_SECONDS`` across workers: ingest must not write the database on
    every request).  Best effort, like
    both of them: Redis failing costs the count and the write, never the answer."""
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.hincrby(COUNTERS_KEY, ACCEPTED, records)
        pipe.set(device_seen_key(device_pk), b"1", nx=True, ex=DEVICE_SEEN_EVERY_SECONDS)
        _, due = pipe.execute()
    except redis.RedisError:
        return False
    return bool(due)


def counters() -> dict[str, int]:
    try:
        raw = redis_client().hgetall(COUNTERS_KEY)
    except redis.RedisError:
        return {}
    return {key.decode(): int(value) for key, value in raw.items()}
