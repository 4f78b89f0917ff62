"""Sluice's own Prometheus metrics: the counters and histograms every process adds to.

The names and labels are a contract (README, "Metrics"): dashboards and alert rules use
them.  Labels are bounded: ``tenant`` is a tenant slug ("" when the request named none),
``stream`` one of a tenant's streams, ``code``/``status``/``outcome``/``task`` come from
fixed sets in the code; no label ever names a device (a fleet of a million devices would be
a million series).

Every process of a node (web and ingest workers, the Celery worker and beat) writes into
the one directory the launcher creates empty at each start, ``PROMETHEUS_MULTIPROC_DIR``
(prometheus-client's multiprocess mode, chosen when the library is imported); ``/metrics``
(config.metrics) sums them.  A process started without it (a test's own, a shell) counts in
its own registry, which ``registry()`` then reads.

The ingest data plane never calls prometheus-client per request: it counts into plain
Python structures (``ingest.metrics.Outcomes``, ``LocalHistogram``) and pushes them here
in its once-a-second flush.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Ingest answers in milliseconds when Kafka is healthy and waits up to the delivery timeout
# (seconds) when it is not.
REQUEST_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

INGEST_RECORDS = Counter(
    "sluice_ingest_records",
    "Records Kafka acknowledged through ingest (HTTPS, or MQTT by the bridge).",
    ["tenant", "stream"],
)
INGEST_BYTES = Counter("sluice_ingest_bytes", "Request body bytes of accepted ingest requests.", ["tenant", "stream"])
INGEST_REQUESTS = Counter("sluice_ingest_requests", "Ingest requests answered, by HTTP status.", ["tenant", "status"])
INGEST_REFUSALS = Counter("sluice_ingest_refusals", "Ingest requests refused, by error code.", ["tenant", "code"])
INGEST_RATE_LIMITED = Counter(
    "sluice_ingest_rate_limited", "Ingest requests refused by a rate limit (device or tenant).", ["tenant", "scope"]
)
INGEST_DEAD_LETTERS = Counter(
    "sluice_ingest_dead_letters",
    "Records Kafka acknowledged in a tenant's dead-letter topic, by the first reason and the transport.",
    ["tenant", "code", "transport"],
)
MQTT_BRIDGE_RECORDS = Counter(
    "sluice_mqtt_bridge_records",
    "Records the MQTT bridge took from Mosquitto, by outcome: written (to the stream), dead_lettered, "
    "dropped (the device's right had ended, or the record was too large), replayed (a key it had written).",
    ["tenant", "outcome"],
)
INGEST_REQUEST_DURATION = Histogram(
    "sluice_ingest_request_duration_seconds",
    "Time from the request's headers to its answer, inside the ingest worker.",
    ["outcome"],
    buckets=REQUEST_BUCKETS,
)
INGEST_DELIVERY_DURATION = Histogram(
    "sluice_ingest_delivery_duration_seconds",
    "Time from producing a request's records to Kafka's last acknowledgement (acks=all).",
    buckets=REQUEST_BUCKETS,
)
INGEST_PRODUCER_QUEUE = Gauge(
    "sluice_ingest_producer_queue_messages",
    "Messages in the ingest producers' queues (librdkafka), summed over live workers.",
    multiprocess_mode="livesum",
)
CELERY_TASKS = Counter("sluice_celery_tasks", "Celery task runs, by outcome.", ["task", "outcome"])
CELERY_TASK_DURATION = Histogram(
    "sluice_celery_task_duration_seconds", "Celery task run time.", ["task"], buckets=TASK_BUCKETS
)

# The request outcomes of sluice_ingest_request_duration_seconds.
ACCEPTED, REFUSED, FAILED = "accepted", "refused", "failed"


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def registry() -> CollectorRegistry:
    """What ``/metrics`` serves of the counters above: every process of the node's (the
    multiprocess directory), or this process's own."""
    if not multiprocess():
        return REGISTRY
    collected = CollectorRegistry()
    MultiProcessCollector(collected)
    return collected


def process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (the ingest supervisor calls it for a worker)."""
    if multiprocess():
        mark_process_dead(pid)


class LocalHistogram:
    """A histogram's bucket counts kept in a plain list (one ``bisect`` and two additions
    per observation, no lock, no file), pushed into a prometheus ``Histogram`` by ``push``."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        # prometheus-client's buckets: the upper bounds, +Inf last; an observation goes to the
        # first bound >= it (``Histogram.observe``), stored per bucket, made cumulative when
        # collected.
        self.bounds = (*buckets, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def __bool__(self) -> bool:
        return any(self.counts)

    def push(self, child: Any) -> None:
        """Add what was observed since the last push to ``child`` (a ``Histogram`` or its
        ``labels(...)``, with the same buckets), and start over.  prometheus-client has no
        call that adds n observations to a bucket; its value objects (``_buckets``,
        ``_sum``: the per-process files in multiprocess mode) are what ``observe`` adds to."""
        if len(child._buckets) != len(self.counts):
            raise ValueError("the histogram's buckets differ from the local histogram's")
        for index, count in enumerate(self.counts):
            if count:
                child._buckets[index].inc(count)
        child._sum.inc(self.total)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
