"""The MQTT load of ``bench/ingest.py --only mqtt`` against a plain local Mosquitto (no TLS,
anonymous): packets, credits bounded by what a subscriber has received, the drain at stop.

.venv/bin/python -m pytest -p no:django bench/tests/test_mqttbench.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench"))]

from bench.ingestbench import mqtt as mq  # noqa: E402
from bench.ingestbench.windows import Window  # noqa: E402

PORT = 24883  # below the ephemeral range, away from the platforms' offsets


def test_packets_round_trip() -> None:
    assert mq.varint(0) == b"\x00"
    assert mq.varint(127) == b"\x7f"
    assert mq.varint(128) == b"\x80\x01"
    assert mq.read_varint(mq.varint(2_097_151), 0) == (2_097_151, 3)
    head, tail = mq.publish_parts("sluice/t/g/d/records", b"{}")
    packet = bytearray(head + (7).to_bytes(2, "big") + tail + b"\x40\x02\x00\x07" + b"\x40\x03\x00\x08\x87")
    first, body = mq.take_packet(packet) or (0, b"")
    assert first == 0x32
    assert body.endswith(b"\x00\x07\x00{}")
    assert mq.puback(mq.take_packet(packet)[1]) == (7, 0)  # type: ignore[index]
    assert mq.puback(mq.take_packet(packet)[1]) == (8, 0x87)  # type: ignore[index]
    assert mq.take_packet(packet) is None
    assert not packet
    # CONNACK with Receive Maximum 20 after a string property
    props = b"\x1f\x00\x02ok" + b"\x21\x00\x14"
    assert mq.connack(b"\x00\x00" + mq.varint(len(props)) + props) == (0, {0x21: 20})


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.skip("no mosquitto")
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {PORT} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield PORT
    finally:
        proc.terminate()
        proc.wait(10)


class SlowSink:
    """A subscriber that 'delivers' at most ``rate`` messages/s (a slow bridge)."""

    def __init__(self, port: int, rate: float) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received = 0
        self.rate = rate
        self.began = time.monotonic()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sink", protocol=mqtt.MQTTv5)
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("$share/sink/sluice/+/+/+/records", qos=1)
        self.client.loop_start()
        self.lock = threading.Lock()

    def on_message(self, *_: object) -> None:
        with self.lock:
            self.received += 1
        time.sleep(1.0 / self.rate)

    def delivered(self) -> int:
        with self.lock:
            return self.received

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("client", ["raw", "paho"])
def test_publishers_never_run_further_ahead_than_the_backlog(broker: int, client: str) -> None:
    # given a sink slower than the publishers could go
    sink = SlowSink(broker, rate=2000)
    devices = [(f"t/dev-{i}", f"sluice/t/g/dev-{i}/records", "", "") for i in range(4)]
    load = mq.MqttLoad(
        host="127.0.0.1",
        port=broker,
        server_hostname="localhost",
        ca_file="",
        devices=devices,
        payload=b'{"x": 1}',
        delivered=sink.delivered,
        client=client,
        procs=2,
        inflight=10,
        backlog=50,
        tls=False,
    )
    try:
        # when the load runs for a second
        load.start()
        marks = []
        for _ in range(10):
            time.sleep(0.1)
            marks.append(load.mark())
        load.stop()
    finally:
        sink.close()
    # then what was published never ran more than the backlog (plus one controller poll's
    # worth of credits) ahead of what the sink had, it delivered at about its own pace,
    # and at the end everything acknowledged was delivered
    for delivered, sent, _acked, refused, errors, stalls in marks:
        assert sent - delivered <= 50 + 2000 * 2 * load.poll, (sent, delivered)
        assert refused == 0
        assert errors == 0
        assert stalls == 0  # stall events
    assert 500 < marks[-1][0] - marks[0][0] < 2200
    assert load.outcome["lost"] == 0
    assert load.outcome["acknowledged"] == load.outcome["published"]


def test_a_stalled_sink_is_restarted_and_its_window_flagged(broker: int) -> None:
    # given a sink that stops passing messages on after 300 (they wait, as in a stuck bridge)
    sink = SlowSink(broker, rate=5000)
    held = {"from": 300, "released": False}

    def delivered() -> int:
        return sink.delivered() if held["released"] else min(sink.delivered(), held["from"])

    def restart() -> None:
        held["released"] = True

    devices = [(f"t/dev-{i}", f"sluice/t/g/dev-{i}/records", "", "") for i in range(2)]
    load = mq.MqttLoad(
        host="127.0.0.1",
        port=broker,
        server_hostname="localhost",
        ca_file="",
        devices=devices,
        payload=b'{"x": 1}',
        delivered=delivered,
        procs=1,
        inflight=10,
        backlog=50,
        tls=False,
        on_stall=restart,
        stall_seconds=0.5,
    )
    try:
        # when the load runs through the stall
        load.start()
        first = load.mark()
        time.sleep(1.5)
        second = load.mark()
        load.stop()
    finally:
        sink.close()
    # then the stall was noticed once, the sink "restarted", the window flagged, nothing lost
    assert load.stalls == 1
    window = Window(0, 1, {}, 0, 0, 0, [], 0, (first, second))
    window.flagged = load.problems(window)
    assert window.problems(1.0)[0].startswith("the bridge stalled (nothing reached Kafka for")
    assert load.outcome["lost"] == 0
