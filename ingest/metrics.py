"""Ingest outcome counters, kept in Redis so every web worker adds to the same numbers and
``/metrics`` (config/metrics.py) can read them: records accepted, requests refused by code."""

from __future__ import annotations

import contextlib

import redis

from ingest.ratelimit import KEY_PREFIX, redis_client

COUNTERS_KEY = f"{KEY_PREFIX}:outcomes"
ACCEPTED = "accepted"


def count(outcome: str, amount: int = 1) -> None:
    """Add ``amount`` to ``outcome`` (``accepted`` counts records, any error code requests)."""
    # Counters are best effort; the answer to the device matters more.
    with contextlib.suppress(redis.RedisError):
        redis_client().hincrby(COUNTERS_KEY, outcome, amount)


def counters() -> dict[str, int]:
    try:
        raw = redis_client().hgetall(COUNTERS_KEY)
    except redis.RedisError:
        return {}
    return {key.decode(): int(value) for key, value in raw.items()}
