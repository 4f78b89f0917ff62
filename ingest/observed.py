"""What periodic tasks observe of Kafka for ``/metrics`` (config.metrics): the ACL drift the
last reconcile found, and each tenant consumer's lag.

Both are kept in Redis, where any web node's ``/metrics`` reads them without asking Kafka
on a scrape:

* ``ACL_DRIFT_KEY``: tenant slug -> bindings missing or extra at the last reconcile
  (ingest.acl_sync), replaced whole by each run; ``ACL_RECONCILED_KEY``: when it finished;
* ``CONSUMER_LAG_KEY``: ``<tenant>/<consumer>`` -> records behind, summed over the
  consumer's groups (``<tenant>.<consumer>.*``) and their partitions, written every
  ``CONSUMER_LAG_SECONDS`` by ``consumer_lag_refresh`` (a beat task) and expiring after
  ``CONSUMER_LAG_TTL`` so that a stopped task shows as absent numbers, not frozen ones.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from django.conf import settings

from devices.models import Consumer
from ingest.kafka_admin import TIMEOUT, admin_client
from ingest.ratelimit import redis_client

log = logging.getLogger("sluice.ingest")

ACL_DRIFT_KEY = "sluice:metrics:acl-drift"
ACL_RECONCILED_KEY = "sluice:metrics:acl-reconciled-at"
CONSUMER_LAG_KEY = "sluice:metrics:consumer-lag"
CONSUMER_LAG_SECONDS = 30.0
CONSUMER_LAG_TTL = 120


def record_acl_drift(per_tenant: dict[str, int], now: float | None = None) -> None:
    """Keep what a reconcile found (best effort: a Redis error costs the metric, never the
    reconcile)."""
    try:
        pipe = redis_client().pipeline(transaction=True)
        pipe.delete(ACL_DRIFT_KEY)
        if per_tenant:
            pipe.hset(ACL_DRIFT_KEY, mapping=dict(per_tenant.items()))
        pipe.set(ACL_RECONCILED_KEY, str(time.time() if now is None else now))
        pipe.execute()
    except Exception:
        log.warning("could not record the ACL drift for /metrics", exc_info=True)


def acl_drift() -> tuple[dict[str, int], float | None]:
    """The last reconcile's drift per tenant, and when it finished (None: never yet)."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.hgetall(ACL_DRIFT_KEY)
    pipe.get(ACL_RECONCILED_KEY)
    drift, finished = pipe.execute()
    return {_text(k): int(v) for k, v in drift.items()}, (float(finished) if finished else None)


def consumer_groups(admin: AdminClient, prefixes: dict[str, tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """The consumer groups of each ``(tenant, consumer)``, by their ``<tenant>.<consumer>.`` prefix."""
    listed = admin.list_consumer_groups(request_timeout=TIMEOUT).result(TIMEOUT)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for listing in listed.valid:
        for prefix, owner in prefixes.items():
            if listing.group_id.startswith(prefix):
                groups[owner].append(listing.group_id)
                break
    return groups


def consumer_lag(admin: AdminClient | None = None) -> dict[tuple[str, str], int]:
    """Records behind per ``(tenant slug, consumer slug)``: for every partition a group of
    the consumer committed an offset on, the partition's high watermark minus that offset,
    summed (one number per consumer, whatever its groups and partitions)."""
    admin = admin or admin_client(settings.SLUICE_RUNTIME)
    consumers = Consumer.objects.select_related("tenant").order_by("tenant__slug", "slug")
    prefixes = {f"{c.tenant.slug}.{c.slug}.": (c.tenant.slug, c.slug) for c in consumers}
    lag = dict.fromkeys(prefixes.values(), 0)
    if not prefixes:
        return lag
    committed: dict[tuple[str, str], list[TopicPartition]] = defaultdict(list)
    for owner, groups in consumer_groups(admin, prefixes).items():
        for group in groups:
            # One group per request (confluent-kafka's ListConsumerGroupOffsets).
            future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                       request_timeout=TIMEOUT)[group]  # fmt: skip
            result = future.result(TIMEOUT)
            committed[owner] += [tp for tp in result.topic_partitions if tp.offset >= 0 and tp.error is None]
    partitions = {TopicPartition(tp.topic, tp.partition) for tps in committed.values() for tp in tps}
    if not partitions:
        return lag
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=TIMEOUT)
    high = {(tp.topic, tp.partition): future.result(TIMEOUT).offset for tp, future in futures.items()}
    for owner, tps in committed.items():
        lag[owner] = sum(max(0, high.get((tp.topic, tp.partition), tp.offset) - tp.offset) for tp in tps)
    return lag


def consumer_lag_refresh(admin: AdminClient | None = None) -> dict[tuple[str, str], int]:
    """Measure every consumer's lag and keep it for ``/metrics``."""
    lag = consumer_lag(admin)
    pipe = redis_client().pipeline(transaction=True)
    pipe.delete(CONSUMER_LAG_KEY)
    if lag:
        pipe.hset(CONSUMER_LAG_KEY, mapping={f"{t}/{c}": n for (t, c), n in lag.items()})
        pipe.expire(CONSUMER_LAG_KEY, CONSUMER_LAG_TTL)
    pipe.execute()
    return lag


def consumer_lags() -> dict[tuple[str, str], int]:
    """The last refresh's lag per ``(tenant, consumer)`` (empty once it is too old)."""
    raw = redis_client().hgetall(CONSUMER_LAG_KEY)
    found = {}
    for key, value in raw.items():
        tenant, _, consumer = _text(key).partition("/")
        found[(tenant, consumer)] = int(value)
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
