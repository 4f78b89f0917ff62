"""Ingest outcome counters and device sightings, kept per worker and flushed in the background.

Counting in Redis on every request would cost a round trip per request; instead each
worker adds to its own ``Outcomes`` and a background task flushes them every
``FLUSH_SECONDS`` into one Redis hash (so every worker adds to the same numbers and
``/metrics``, config/metrics.py, can read them) and writes ``last_seen_at`` of the devices
it saw, at most once per ``DEVICE_SEEN_EVERY_SECONDS`` per device.  All of it is best
effort: Redis or the database failing costs a count or a timestamp, never an answer.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import redis

KEY_PREFIX = "sluice:ingest"
COUNTERS_KEY = f"{KEY_PREFIX}:outcomes"
ACCEPTED = "accepted"
FLUSH_SECONDS = 1.0
DEVICE_SEEN_EVERY_SECONDS = 60.0

log = logging.getLogger("sluice.ingest")


class Outcomes:
    """One worker's counts since the last flush, and the devices it saw."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._seen: set[int] = set()
        self._written: dict[int, float] = {}

    def accepted(self, records: int, device_pk: int) -> None:
        self.counts[ACCEPTED] += records
        self._seen.add(device_pk)

    def refused(self, code: str) -> None:
        self.counts[code] += 1

    def take_counts(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts

    def take_due_sightings(self, now: float | None = None) -> list[int]:
        """Devices seen since the last call whose ``last_seen_at`` was not written by this
        worker in the last ``DEVICE_SEEN_EVERY_SECONDS``."""
        now = time.monotonic() if now is None else now
        due = [
            pk
            for pk in self._seen
            if now - self._written.get(pk, -DEVICE_SEEN_EVERY_SECONDS) >= DEVICE_SEEN_EVERY_SECONDS
        ]
        self._seen.clear()
        for pk in due:
            self._written[pk] = now
        if len(self._written) > 500_000:
            self._written = {pk: t for pk, t in self._written.items() if now - t < DEVICE_SEEN_EVERY_SECONDS}
        return due


def flush_counts(client: redis.Redis, counts: dict[str, int]) -> None:
    """Add ``counts`` to the shared hash (blocking; called off the event loop)."""
    if not counts:
        return
    pipe = client.pipeline(transaction=False)
    for outcome, amount in counts.items():
        pipe.hincrby(COUNTERS_KEY, outcome, amount)
    pipe.execute()


def write_last_seen(device_pks: list[int]) -> None:
    """Record that these devices sent accepted records (blocking; off the event loop)."""
    if not device_pks:
        return
    from django.db import close_old_connections
    from django.utils import timezone

    from devices.models import Device

    close_old_connections()
    Device.objects.filter(pk__in=device_pks).update(last_seen_at=timezone.now())


def counters() -> dict[str, int]:
    """Every worker's flushed counts (the control plane's /metrics reads these)."""
    from ingest.ratelimit import redis_client

    try:
        raw = redis_client().hgetall(COUNTERS_KEY)
    except redis.RedisError:
        return {}
    return {key.decode(): int(value) for key, value in raw.items()}
