"""CPU per record of the ingest producer's own path (``IngestProducer.produce_and_wait_async``)
against a running platform's Kafka, beside a bare producer writing the same records.

    platform/bin/sluice up                     # or any running platform (SLUICE_STATE_DIR)
    .venv/bin/python bench/produce_path.py [--compare OTHER_KAFKA_MODULE.py]

One process: ``--concurrency`` requests of ``--records`` records in flight at a time on one
event loop, each request's records under one key (a device), as ingest produces them.  CPU
is the whole process's (``process_time``: the event loop and librdkafka's threads), divided
by the records Kafka acknowledged.  ``--compare`` loads another version of
``ingest/kafka.py`` (for example ``git show HEAD~1:ingest/kafka.py > /tmp/old.py``) and
measures it in alternation with today's, so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from config.env import load_runtime  # noqa: E402
from ingest import kafka as today  # noqa: E402

TOPIC = "bench.produce-path"
# A ~300 B record in the Confluent wire format (magic byte + schema id + JSON).
VALUE = b"\x00\x00\x00\x00\x01" + b'{"ts":"2026-12-04T12:00:00.000Z","site":"plant-7","note":"' + b"x" * 230 + b'"}'

HEADERS: list = [("sluice-tenant", b"bench"), ("sluice-group", b"fleet"), ("sluice-device", b"dev-0001"),
                 ("sluice-request-id", b"0123456789abcdef0123456789abcdef")]  # fmt: skip


def load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafka_compared", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ensure_topic(config: dict, partitions: int) -> None:
    admin = AdminClient(config)
    if TOPIC in admin.list_topics(timeout=10).topics:
        return
    for future in admin.create_topics([NewTopic(TOPIC, partitions, 1)]).values():
        future.result()
    time.sleep(2)


async def run_module(module: ModuleType, config: dict, *, records: int, concurrency: int, seconds: float) -> float:
    producer = module.IngestProducer(config)
    outgoing = [module.Outgoing(f"dev-{n:04d}".encode(), HEADERS, [VALUE] * records) for n in range(concurrency)]
    done = 0

    async def loop(n: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            outcome = await producer.produce_and_wait_async(TOPIC, outgoing[n])
            if not outcome.complete:
                raise RuntimeError(f"not acknowledged: {outcome.errors[:3]}")
            done += records

    stop = time.monotonic() + 1.0  # warm-up
    await asyncio.gather(*(loop(n) for n in range(concurrency)))
    done = 0
    began_cpu = time.process_time()
    stop = time.monotonic() + seconds
    await asyncio.gather(*(loop(n) for n in range(concurrency)))
    used = time.process_time() - began_cpu
    await producer.aclose()
    return used / done * 1e6


def run_bare(config: dict, *, records: int, seconds: float) -> float:
    """The ceiling's way: pre-built records, failures reported only."""
    producer = Producer({**config, "delivery.report.only.error": True})
    indexed = [[*HEADERS, (today.RECORD_INDEX_HEADER, today.record_index_value(i))] for i in range(records)]
    keys = [f"dev-{n:04d}".encode() for n in range(32)]
    done = 0
    began_cpu = time.process_time()
    stop = time.monotonic() + seconds
    n = 0
    while time.monotonic() < stop:
        key = keys[n % len(keys)]
        n += 1
        for i in range(records):
            while True:
                try:
                    producer.produce(TOPIC, VALUE, key, headers=indexed[i])
                    break
                except BufferError:
                    producer.poll(0.005)
        producer.poll(0)
        done += records
    producer.flush(30)
    used = time.process_time() - began_cpu
    return used / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", help="another ingest/kafka.py to measure beside today's")
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=100)
    args = parser.parse_args()
    runtime = load_runtime()
    config = today.ingest_producer_config(runtime)
    ensure_topic(today.admin_config(runtime), args.partitions)
    modules = {"today": today}
    if args.compare:
        modules["compared"] = load_module(args.compare)
    figures: dict[str, list[float]] = {name: [] for name in [*modules, "bare producer"]}
    for _ in range(args.rounds):
        for name, module in modules.items():
            run = run_module(module, config, records=args.records, concurrency=args.concurrency, seconds=args.seconds)
            figures[name].append(asyncio.run(run))
        figures["bare producer"].append(run_bare(config, records=args.records, seconds=args.seconds))
    print(f"CPU per acknowledged record, {args.records} records per request, {args.concurrency} in flight, "
          f"{args.rounds} rounds of {args.seconds:g} s (median, range):")  # fmt: skip
    for name, values in figures.items():
        print(f"  {name:14s} {statistics.median(values):6.2f} us  ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
