"""Reads for the pages around ingest: what a device's first POST should carry, and what
ingest saw of a device (last seen, refusals) and of a tenant (refusals in the last hour)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from config.errors import SchemaValidationFailed, SluiceError
from devices.models import Device
from devices.registry import latest_schema
from ingest import metrics, records
from ingest.ratelimit import redis_client
from tenants.scoping import Scope

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordSample:
    """A record for ``subject``'s latest schema, checked by ingest's own validator, or the
    reason there is none (``note``, one sentence for the operator)."""

    subject: str
    record: dict[str, Any] | None = None
    version: int | None = None
    note: str = ""

    @property
    def text(self) -> str:
        """The record as a device would send it, indented for a page to show."""
        return json.dumps(self.record, indent=2)


def record_sample_for(*, subject: str) -> RecordSample:
    """A sample record that ingest would accept under ``subject`` right now, from the
    registry's latest version (the cached lookup ingest itself uses).

    Never raises: the onboarding page that shows it also shows a private key exactly once,
    so a registry outage or a schema no simple rule fits must cost the sample, not the page."""
    try:
        schema = latest_schema(subject)
        record = records.sample_record(schema_str=schema.schema_str, schema_type=schema.schema_type)
        # The sample is shown as "works as is": hold it to the same check ingest applies.
        records.validate(records.Parsed(records=[record], batch=False), schema)
    except SchemaValidationFailed:
        return RecordSample(subject, note="No simple record fits this schema, so there is no sample to copy.")
    except (SluiceError, records.NoSample) as exc:
        return RecordSample(subject, note=str(getattr(exc, "message", exc)))
    except Exception:
        logger.exception("building a sample record for subject %s failed", subject)
        return RecordSample(subject, note="A sample record could not be built for this schema.")
    return RecordSample(subject, record=record, version=schema.version)


# -- what ingest saw, for the console (read from the Redis the workers flush to) --------


@dataclass(frozen=True)
class DeviceActivity:
    """What ingest saw of a device.  ``known`` is False when Redis could not be read: the
    console then says "unknown" rather than guess (or fail)."""

    known: bool
    last_seen: dt.datetime | None = None
    refusals: tuple[RecentRefusal, ...] = ()


@dataclass(frozen=True)
class RecentRefusal:
    """``count`` refusals with ``code`` within one flush, the last at ``at``."""

    code: str
    at: dt.datetime
    count: int


def device_activity(*, device: Device) -> DeviceActivity:
    """``device``'s last accepted request (Redis, at most ``metrics.FLUSH_SECONDS`` late;
    the database's throttled ``last_seen_at`` if Redis has none) and its latest refusals."""
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.hget(metrics.LAST_SEEN_KEY, str(device.pk))
        pipe.lrange(metrics.refusals_key(device.pk), 0, metrics.REFUSALS_KEPT - 1)
        seen_raw, refusals_raw = pipe.execute()
    except redis.RedisError:
        logger.warning("device activity: Redis unavailable", exc_info=True)
        return DeviceActivity(known=False)
    seen = dt.datetime.fromtimestamp(int(seen_raw), tz=dt.UTC) if seen_raw else None
    if device.last_seen_at is not None and (seen is None or device.last_seen_at > seen):
        seen = device.last_seen_at
    refusals = []
    for raw in refusals_raw:
        try:
            refusal = metrics.Refusal.decode(raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("device activity: unreadable refusal entry %r", raw[:200])
            continue
        at = dt.datetime.fromtimestamp(refusal.at, tz=dt.UTC)
        refusals.append(RecentRefusal(code=refusal.code, at=at, count=refusal.count))
    return DeviceActivity(known=True, last_seen=seen, refusals=tuple(refusals))


def refusals_last_hour(*, scope: Scope, now: float | None = None) -> int | None:
    """Ingest requests refused in the last hour, of ``scope``'s tenants; the operator scope
    counts them all, also those no device could be named for.  ``None`` when Redis cannot be
    read."""
    if not isinstance(scope, Scope):
        raise TypeError(f"refusals_last_hour() needs a Scope, not {type(scope).__name__}")
    ids = scope.tenant_ids
    return refusals_counted(tenant_ids=None if ids is None else sorted(ids), now=now)


def refusals_counted(*, tenant_ids: list[int] | None, now: float | None = None) -> int | None:
    """Ingest requests refused in the last hour (the last 60 one-minute buckets, the current
    one included): of the tenants ``tenant_ids``, or all of them (also those no device could
    be named for) when ``None``.  ``None`` when Redis cannot be read."""
    if tenant_ids is not None and not tenant_ids:
        return 0
    now = time.time() if now is None else now
    current = int(now) // metrics.BUCKET_SECONDS
    minutes = range(current - 3600 // metrics.BUCKET_SECONDS + 1, current + 1)
    fields = [metrics.ALL_FIELD] if tenant_ids is None else [metrics.tenant_field(t) for t in tenant_ids]
    try:
        pipe = redis_client().pipeline(transaction=False)
        for minute in minutes:
            pipe.hmget(metrics.refused_bucket_key(minute), fields)
        buckets = pipe.execute()
    except redis.RedisError:
        logger.warning("refusals in the last hour: Redis unavailable", exc_info=True)
        return None
    return sum(int(value) for bucket in buckets for value in bucket if value is not None)
