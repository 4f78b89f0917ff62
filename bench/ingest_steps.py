"""Micro-benchmark of the ingest steps that run per request in one process: parsing a body,
preparing its records (validate + encode), the producer's per-request loop, and the
``ingest.pipeline`` indirection.  Wall time per call (best of 7 ``timeit`` repeats), so run
it on a quiet machine, or alternate two trees as below and compare minima.

    SLUICE_ENV=test SLUICE_STATE_DIR=var/test .venv/bin/python bench/ingest_steps.py
    # another tree (e.g. ``git worktree add /tmp/before HEAD~7``), from inside it (Django's
    # settings put the working directory first on the path), with this tree's script:
    cd /tmp/before && SLUICE_ENV=test SLUICE_STATE_DIR=$OLDPWD/var/test PYTHONPATH=$PWD \
        $OLDPWD/.venv/bin/python $OLDPWD/bench/ingest_steps.py

The producer points at a closed port: records queue in librdkafka and each request's wait
ends at once (``timeout=0``), so what is measured is the loop that hands records to
librdkafka, not Kafka.  Figures of the dead-letter work: bench/results/ingest-steps-dlq.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

if "PYTHONPATH" not in os.environ:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from confluent_kafka.schema_registry import Schema  # noqa: E402

from devices.registry import LatestSchema, _compile  # noqa: E402
from ingest import records, services  # noqa: E402
from ingest.identity import Writer  # noqa: E402
from ingest.kafka import IngestProducer, Outgoing  # noqa: E402

SCHEMA = {"type": "object", "properties": {"celsius": {"type": "number"}, "site": {"type": "string"}},
          "required": ["celsius"], "additionalProperties": False}  # fmt: skip
ONE = b'{"celsius": 21.5, "site": "berlin-1"}'
TEN = json.dumps({"records": [{"celsius": 20.0 + i, "site": f"site-{i}"} for i in range(10)]}).encode()
WRITER = Writer(pk=1, device_id="d-1", status="active", tenant_id=1, tenant_slug="acme", tenant_status="active",
                tenant_max_records_per_second=1000, tenant_max_bytes_per_second=10**6, group_id=1, group_slug="g",
                group_tenant_id=1, credential_policy="both", rate_limit_per_second=100, schema_subject="s",
                stream_tenant_id=1, topic="iot.acme.eu.temperature")  # fmt: skip


def best(call: Callable[[], object], number: int) -> float:
    """Microseconds per call, the best of 7 repeats."""
    return min(timeit.repeat(call, number=number, repeat=7)) / number * 1e6


def looped(make: Callable[[], Coroutine[Any, Any, object]], count: int) -> Callable[[], None]:
    async def loop() -> None:
        for _ in range(count):
            await make()

    return lambda: asyncio.run(loop())


async def produce_loop() -> float:
    producer = IngestProducer({"bootstrap.servers": "127.0.0.1:1", "enable.idempotence": True,
                               "queue.buffering.max.messages": 2_000_000, "log_level": 0})  # fmt: skip
    outgoing = Outgoing(b"d-1", [("sluice-tenant", b"acme"), ("sluice-request-id", b"r")], [b"x" * 60] * 10)
    loop = asyncio.get_running_loop()
    results = []
    for _ in range(7):
        count = 2000
        started = loop.time()
        for _ in range(count):
            await producer.produce_and_wait_async("t", outgoing, timeout=0)
        results.append((loop.time() - started) / count * 1e6)
        producer._producer.purge()
    return min(results)


def main() -> None:
    schema: LatestSchema = _compile("iot.acme.eu.temperature-value", 42, 3, Schema(json.dumps(SCHEMA), "JSON"))
    one, ten = records.parse_body(ONE), records.parse_body(TEN)
    print(f"parse_body, 1 record          {best(lambda: records.parse_body(ONE), 100_000):7.2f} us")
    print(f"parse_body, 10 records        {best(lambda: records.parse_body(TEN), 50_000):7.2f} us")
    prepare_one = best(lambda: services.records_prepare(writer=WRITER, parsed=one, schema=schema, request_id="r"),
                       100_000)  # fmt: skip
    print(f"records_prepare, 1 record     {prepare_one:7.2f} us")
    prepare_ten = best(lambda: services.records_prepare(writer=WRITER, parsed=ten, schema=schema, request_id="r"),
                       50_000)  # fmt: skip
    print(f"records_prepare, 10 records   {prepare_ten:7.2f} us")
    print(f"produce_and_wait_async, 10    {asyncio.run(produce_loop()):7.2f} us")
    try:
        from ingest import pipeline
    except ImportError:  # a tree from before ingest.pipeline
        return

    class Schemas:
        async def get(self, subject: str) -> LatestSchema:
            return schema

    class Plane:
        schemas = Schemas()

    plane: Any = Plane()

    async def direct() -> object:
        found = await plane.schemas.get(WRITER.schema_subject)
        return services.records_prepare(writer=WRITER, parsed=one, schema=found, request_id="r")

    async def through_pipeline() -> object:
        return await pipeline.prepare(plane, WRITER, one, request_id="r")

    count = 50_000
    print(f"prepare, services directly    {best(looped(direct, count), 1) / count:7.2f} us")
    print(f"prepare, through pipeline     {best(looped(through_pipeline, count), 1) / count:7.2f} us")


if __name__ == "__main__":
    main()
