"""A produce-only ASGI application: the floor of any ingest that must write to Kafka, for
``bench/ingest.py --produce-floor``.

Like ``bench/noop_app.py`` it reads the body and answers 200 with a small JSON body, and in
between it does what no HTTPS ingest can skip: it produces the body as one record (a batch
``{"records": [...]}``: each record, parsed and written back with orjson, the least any
ingest that takes JSON batches must do) through
Sluice's own producer (``ingest.kafka.IngestProducer`` with ``ingest_producer_config``:
idempotent, ``acks=all``, the same compression and linger), keyed by the client
certificate's serial number (one key per device, as Sluice keys by device id), with the
five headers Sluice's records carry, and waits for Kafka's acknowledgement.  No identity,
rate limit, validation or encoding: its requests per server CPU-second bound what Sluice's
single-record path could reach if all of its own work cost nothing.

Configured by the benchmark through the environment: ``SLUICE_BENCH_TOPIC`` (an existing
topic), and the platform whose Kafka it writes to (``SLUICE_BENCH_PLATFORM_STATE_DIR``,
``SLUICE_BENCH_PLATFORM_PORT_OFFSET``: its admin certificate and bootstrap address)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from config.env import load_runtime
from ingest.kafka import IngestProducer, Outgoing, ingest_producer_config

BODY = b'{"accepted":1,"topic":"iot.bench-000000.eu.meter","records":[{"partition":17,"offset":123456}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
FAILED = b'{"error":{"code":"kafka_unavailable"}}'
FAILED_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(FAILED)).encode())]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_producer: IngestProducer | None = None
_topic = os.environ.get("SLUICE_BENCH_TOPIC", "")
_ids = itertools.count()


def producer() -> IngestProducer:
    global _producer
    if _producer is None:
        runtime = load_runtime({
            **os.environ,
            "SLUICE_STATE_DIR": os.environ["SLUICE_BENCH_PLATFORM_STATE_DIR"],
            "SLUICE_PORT_OFFSET": os.environ["SLUICE_BENCH_PLATFORM_PORT_OFFSET"],
        })  # fmt: skip
        _producer = IngestProducer(ingest_producer_config(runtime))
    return _producer


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                producer()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _producer is not None:
                    await _producer.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    key = b""
    for name, value in scope["headers"]:
        if name == b"x-sluice-client-serial":
            key = value
            break
    headers: Any = [("sluice-tenant", b"bench"), ("sluice-group", b"meters"), ("sluice-device", key),
                    ("sluice-request-id", b"%016x" % next(_ids))]  # fmt: skip
    body = b"".join(chunks)
    values = (
        [orjson.dumps(record) for record in orjson.loads(body)["records"]] if body.startswith(b'{"records"') else [body]
    )
    outcome = await producer().produce_and_wait_async(_topic, Outgoing(key, headers, values))
    if outcome.complete:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    else:
        await send({"type": "http.response.start", "status": 503, "headers": FAILED_HEADERS})
        await send({"type": "http.response.body", "body": FAILED})
