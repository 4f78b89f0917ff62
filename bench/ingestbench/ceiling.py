"""The ceiling: the best a producer can do with the bytes Sluice writes.

One process with a confluent-kafka producer configured by Sluice's own
``ingest.kafka.ingest_producer_config`` (imported when the process starts, so it follows
whatever compression, ``linger.ms`` and ``batch.size`` the application chooses), writing to
the same topic the exact value, key and headers Sluice wrote for the same record (read back
from the topic after the warm-up requests).  Everything is built before the timed loop; the
loop does nothing per record but ``produce`` (no uuid, no encoding, no per-record callback:
``delivery.report.only.error`` leaves only failures to report, which do not change what
goes over the wire), with one ``poll(0)`` per pass over the pre-built records to serve
reports.  Records come in runs of ``run_length`` with one key and one request id, as a
request of that many records does in Sluice.

Acknowledged records at any instant = produced - still queued or in flight
(``len(producer)``) - failed; the process publishes those counters in shared memory and
the parent reads them at each window's edges.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.ingestbench.windows import Window

if TYPE_CHECKING:
    from ingest.kafka import KafkaHeaders

REQUEST_ID_HEADER = "sluice-request-id"
DEVICE_HEADER = "sluice-device"
PRODUCED, IN_FLIGHT, FAILED, REFUSED, READY = range(5)


def build_items(
    *, headers: list[tuple[str, bytes]], sample_key: bytes, keys: list[bytes], run_length: int, at_least: int = 20_000
) -> list[tuple[bytes, KafkaHeaders]]:
    """(key, headers) per record: runs of ``run_length`` records per key, each run with its
    own request id; the device header follows the key.  Headers Sluice wrote that are
    neither are copied as they were."""
    runs = max(len(keys), -(-at_least // run_length))
    items = []
    for run in range(runs):
        key = keys[run % len(keys)]
        request_id = uuid.uuid4().hex.encode()
        these: KafkaHeaders = [
            (name, request_id if name == REQUEST_ID_HEADER else key if value == sample_key else value)
            for name, value in headers
        ]
        items += [(key, these)] * run_length
    return items


def producer_process(spec: dict[str, Any], stop: Any, counters: Any, results: Any) -> None:
    os.environ.update(spec["env"])
    from confluent_kafka import Producer

    from config.env import load_runtime
    from ingest.kafka import ingest_producer_config

    def on_failure(error: Any, _message: Any) -> None:
        if error is not None:
            counters[FAILED] += 1

    config = {**ingest_producer_config(load_runtime()), "delivery.report.only.error": True, "on_delivery": on_failure}
    producer = Producer(config)
    items = build_items(
        headers=spec["headers"], sample_key=spec["sample_key"], keys=spec["keys"], run_length=spec["run_length"]
    )
    topic: str = spec["topic"]
    value: bytes = spec["value"]
    produce, poll = producer.produce, producer.poll
    # Connected, metadata known, one record acknowledged: only then is the load "started".
    key, headers = items[0]
    produce(topic, value, key, headers=headers)
    producer.flush(30)
    counters[READY] = 1
    passes = refused = 0
    while not stop.value:
        for key, headers in items:
            try:
                produce(topic, value, key, headers=headers)
            except BufferError:  # the local queue is full: serve reports, drop this one
                refused += 1
                poll(0.0005)
        passes += 1
        poll(0)
        counters[PRODUCED] = passes * len(items) - refused
        counters[IN_FLIGHT] = len(producer)
        counters[REFUSED] = refused
    unflushed = producer.flush(60)
    # One record at a time, each waiting for its acks=all acknowledgement: the least a
    # single-record request waits for (linger.ms, the broker's append, the answer).
    round_trips = []
    for _ in range(spec["round_trips"]):
        began = time.perf_counter()
        producer.produce(topic, value, key, headers=headers)
        producer.flush(10)
        round_trips.append((time.perf_counter() - began) * 1000)
    results.put(
        {
            "unflushed": unflushed,
            "round_trips": round_trips,
            "settings": {
                k: v
                for k, v in config.items()
                if isinstance(v, str | int | float | bool) and "ssl" not in k and "bootstrap" not in k
            },
        }
    )


@dataclass
class ProducerLoad:
    env: dict[str, str]
    topic: str
    value: bytes
    headers: list[tuple[str, bytes]]
    sample_key: bytes
    keys: list[bytes]
    run_length: int
    round_trips: int = 200
    outcome: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ctx = ctx
        self._stop = ctx.RawValue("b", 0)
        self._counters = ctx.RawArray("d", 5)
        self._results = ctx.Queue()
        self._process: Any = None

    def start(self) -> None:
        spec = {
            "env": self.env,
            "topic": self.topic,
            "value": self.value,
            "headers": self.headers,
            "sample_key": self.sample_key,
            "keys": self.keys,
            "run_length": self.run_length,
            "round_trips": self.round_trips,
        }
        self._process = self._ctx.Process(
            target=producer_process, args=(spec, self._stop, self._counters, self._results), daemon=True
        )
        self._process.start()
        deadline = time.monotonic() + 90
        while not self._counters[READY]:
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the direct producer never got its first record acknowledged")
            time.sleep(0.1)

    def pids(self) -> set[int]:
        return {self._process.pid} if self._process is not None and self._process.pid else set()

    def mark(self) -> tuple[float, float]:
        """(acknowledged so far, failed so far)."""
        c = self._counters
        return c[PRODUCED] - c[IN_FLIGHT] - c[FAILED], c[FAILED]

    def stop(self) -> None:
        self._stop.value = 1
        self.outcome = self._results.get(timeout=180)
        self._process.join(timeout=30)

    def tally(self, window: Window) -> dict[str, Any]:
        (acked_a, failed_a), (acked_b, failed_b) = window.mark
        return {
            "records": acked_b - acked_a,
            "requests": 0,
            "latencies": [],
            "failed": failed_b - failed_a,
            "statuses": {},
        }
