"""Tests of the benchmark's own machinery (pure logic and real processes; no platform).

.venv/bin/python -m pytest -p no:django bench/tests
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench"))]

from bench import noop_app, produce_app  # noqa: E402
from bench.ingestbench.ceiling import build_items  # noqa: E402
from bench.ingestbench.clients import Connection  # noqa: E402
from bench.ingestbench.floor import APP_SPEC, _move  # noqa: E402
from bench.ingestbench.stack import ProcTable  # noqa: E402
from bench.ingestbench.windows import LogWatch, Meter, Spread, Window  # noqa: E402


def test_a_child_that_exits_between_two_snapshots_is_counted() -> None:
    # given a snapshot taken while a child burns CPU
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"]
    )
    time.sleep(0.1)
    before = ProcTable.read().tree_cpu(_self())
    # when the child exits and is reaped before the next snapshot
    child.wait()
    after = ProcTable.read().tree_cpu(_self())
    # then its CPU after the first snapshot is in the difference (it was reaped by us)
    assert after - before >= 0.25


def _self() -> int:
    import os

    return os.getpid()


def _connection_reading(response: bytes) -> tuple[int, bool, bytes]:
    ours, theirs = socket.socketpair()
    conn = Connection.__new__(Connection)
    conn.sock = ours  # type: ignore[assignment]
    conn.buffer = bytearray()
    theirs.sendall(response)
    try:
        return conn.exchange(b"")
    finally:
        ours.close()
        theirs.close()


def test_a_response_is_read_by_its_content_length() -> None:
    # given / when
    status, closing, body = _connection_reading(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    # then
    assert (status, closing, body) == (200, False, b"hello")


def test_a_chunked_response_is_read_to_its_last_chunk_and_close_is_seen() -> None:
    # given / when
    status, closing, body = _connection_reading(
        b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    # then
    assert (status, closing, body) == (429, True, b"abcde")


def test_the_ceiling_writes_sluices_headers_with_the_device_and_a_request_id_per_run() -> None:
    # given the headers Sluice wrote for device "a"
    written = [("sluice-tenant", b"t"), ("sluice-group", b"g"), ("sluice-device", b"a"), ("sluice-request-id", b"x")]
    # when
    items = build_items(headers=written, sample_key=b"a", keys=[b"a", b"b"], run_length=3, at_least=12)
    # then: runs of 3 per key, the device header follows the key, one request id per run
    assert [key for key, _ in items] == [b"a"] * 3 + [b"b"] * 3 + [b"a"] * 3 + [b"b"] * 3
    first, fourth = dict(items[0][1]), dict(items[3][1])
    assert (first["sluice-tenant"], first["sluice-group"], first["sluice-device"]) == (b"t", b"g", b"a")
    assert fourth["sluice-device"] == b"b"
    assert items[0][1] is items[2][1]
    assert first["sluice-request-id"] != fourth["sluice-request-id"]
    assert len(first["sluice-request-id"]) == 32


def test_the_floor_moves_what_the_platform_writes_and_keeps_what_it_reads() -> None:
    # given the platform's directories and ports
    moves = [(Path("/s/run"), Path("/f/run")), (Path("/s/logs"), Path("/f/logs")), (Path("/s/nginx"), Path("/f/nginx"))]
    ports, floor_ports = {"web": 8443, "crl": 8080}, {"web": 9443, "crl": 9080}
    # when / then
    assert _move(Path("/s/run/web.sock"), moves, ports, floor_ports) == Path("/f/run/web.sock")
    assert _move("/s/logs", moves, ports, floor_ports) == "/f/logs"
    assert _move(Path("/s/pki/web.pem"), moves, ports, floor_ports) == Path("/s/pki/web.pem")
    assert _move("/s/running", moves, ports, floor_ports) == "/s/running"
    assert _move(8443, moves, ports, floor_ports) == 9443
    assert _move(True, moves, ports, floor_ports) is True


def test_the_application_is_found_in_uvicorn_and_granian_commands_only() -> None:
    # given / when / then: a module:attribute, not a host:port or an option
    assert APP_SPEC.match("config.asgi:application")
    assert not APP_SPEC.match("127.0.0.1:8000")
    assert not APP_SPEC.match("--uds")


def test_a_window_with_a_reload_or_a_foreign_request_is_discarded(tmp_path: Path) -> None:
    # given nginx logs with one request of ours, one foreign request and a reload
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    access.write_bytes(b"")
    error.write_bytes(b"")
    watch = LogWatch("platform", access, error)
    meter = Meter(sources=None, logs=[watch], token=b"bench/123")  # type: ignore[arg-type]
    before = watch.offsets()
    access.write_bytes(
        b'127.0.0.1 - - [x] "POST /ingest/v1/records HTTP/1.1" 200 9 "-" "bench/123"\n'
        b'127.0.0.1 - - [x] "GET /crl/platform-root.crl HTTP/1.1" 200 9 "-" "Java/17"\n'
    )
    error.write_bytes(b"... signal 1 (SIGHUP) received from 42, reconfiguring\n")
    after = watch.offsets()
    # when
    reloads, foreign, examples, own = watch.between(before, after, meter.token)
    window = Window(0, 1, {}, 0.0, reloads, foreign, examples, own, (None, None))
    # then
    assert (reloads, foreign, own) == (1, 1, 1)
    assert examples == ["platform: GET /crl/platform-root.crl HTTP/1.1"]
    assert window.problems(max_foreign=0.15) == [
        "1 nginx reload(s)",
        "1 foreign request(s): platform: GET /crl/platform-root.crl HTTP/1.1",
    ]


def test_spread_is_the_median_and_range_of_numbers_only() -> None:
    # given / when
    spread = Spread.of([3.0, 1.0, float("nan"), 2.0])
    # then
    assert (spread.median, spread.low, spread.high, spread.n) == (2.0, 1.0, 3.0, 3)
    assert Spread.of([]).fmt() == "n/a"


def test_the_noop_app_reads_the_body_and_answers_200_with_json() -> None:
    # given a request whose body comes in two parts
    incoming = [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.request", "body": b"}"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # when
    asyncio.run(noop_app.app({"type": "http"}, receive, send))
    # then
    assert incoming == []
    assert sent[0]["status"] == 200
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert sent[1]["body"].startswith(b'{"accepted":1')


def test_the_noop_app_completes_startup_and_shutdown() -> None:
    # given the server's lifespan events
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # when
    asyncio.run(noop_app.app({"type": "lifespan"}, receive, send))
    # then
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


class _Outcome:
    def __init__(self, complete: bool) -> None:
        self.complete = complete


class _Producer:
    def __init__(self, complete: bool = True) -> None:
        self.sent: list[Any] = []
        self.complete = complete

    async def produce_and_wait_async(self, topic: str, outgoing: Any) -> _Outcome:
        self.sent.append((topic, outgoing))
        return _Outcome(self.complete)


def _call(app: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    incoming = [{"type": "http.request", "body": body}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "headers": headers}, receive, send))
    return sent


def test_the_produce_app_writes_a_single_record_keyed_by_the_serial_with_sluices_headers(monkeypatch: Any) -> None:
    # given a producer that acknowledges everything
    producer = _Producer()
    monkeypatch.setattr(produce_app, "_producer", producer)
    monkeypatch.setattr(produce_app, "_topic", "iot.t.g")
    # when one record is sent by a device whose certificate has serial 0A
    sent = _call(produce_app.app, b'{"celsius": 21.5}', [(b"x-sluice-client-serial", b"0A")])
    # then it is produced as sent, keyed by the serial, with the five headers Sluice's records carry
    topic, outgoing = producer.sent[0]
    assert (topic, outgoing.key, outgoing.values) == ("iot.t.g", b"0A", [b'{"celsius": 21.5}'])
    assert [name for name, _ in outgoing.headers] == ["sluice-tenant", "sluice-group", "sluice-device",
                                                      "sluice-request-id"]  # fmt: skip
    assert sent[0]["status"] == 200


def test_the_produce_app_writes_each_record_of_a_batch_and_answers_503_when_kafka_does_not_acknowledge(
    monkeypatch: Any,
) -> None:
    # given a producer that acknowledges nothing
    producer = _Producer(complete=False)
    monkeypatch.setattr(produce_app, "_producer", producer)
    # when a batch of two is sent
    sent = _call(produce_app.app, b'{"records": [{"a": 1}, {"b": 2}]}', [])
    # then each record is one value, and the answer is 503
    assert producer.sent[0][1].values == [b'{"a":1}', b'{"b":2}']
    assert sent[0]["status"] == 503
