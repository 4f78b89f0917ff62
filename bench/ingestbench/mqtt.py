"""MQTT devices: N connections (one device certificate each) publishing QoS 1, one record
per message, pipelined, over a few processes; what they delivered is counted in Kafka.

Two clients, so that the client's own cost can be measured and kept from being the
bottleneck (client CPU is never server CPU, but the clients share the machine's cores):

* ``raw``: a minimal MQTT 5 publisher over an ``ssl`` socket (CONNECT, then PUBLISH packets
  built once per connection with only the packet id changing, PUBACKs parsed from the
  stream), up to ``inflight`` unacknowledged PUBLISHes per connection, sent as one write;
* ``paho``: paho-mqtt 2.1 (``loop_start`` thread per connection, ``publish`` from another),
  the same in-flight bound.

A PUBACK from Mosquitto only says "Mosquitto received it"; the bridge acknowledges to
Mosquitto after Kafka did.  So the load is closed end to end: a controller in the parent
reads how far the stream topic's end offsets have advanced since the load started
(``delivered``) and hands the publishers credits so that at most ``backlog`` messages are
published and not yet in Kafka.  Without that bound, publishers would outrun the bridge,
Mosquitto would queue for the bridge's session up to its ``max_queued_messages`` and then
drop QoS 1 messages: records/s would count what Mosquitto accepted, not what reached Kafka.
Each window's records are ``delivered`` at its end minus at its start; the backlog
(published - delivered) at each window edge is reported.  At the end the load stops
publishing and waits for Kafka to catch up with what Mosquitto acknowledged: anything
acknowledged and never delivered is reported as lost.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.ingestbench.windows import Window

# Per-process counters in shared memory (doubles): published, PUBACK accepted, PUBACK refused,
# connections up (CONNACK 0 and a first accepted PUBACK), connection errors.
SENT, ACKED, REFUSED, UP, ERRORS = range(5)
SLOTS = 5
ACCEPTED = (0, 16)  # PUBACK success, or "no matching subscribers" (accepted, nobody listens)

# -- MQTT 5 packets (only what a QoS 1 publisher needs) -----------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, *, keepalive: int = 60) -> bytes:
    """CONNECT, MQTT 5, clean start, no properties, no user name (the certificate is the identity)."""
    body = b"\x00\x04MQTT\x05\x02" + keepalive.to_bytes(2, "big") + b"\x00" + utf8(client_id)
    return b"\x10" + varint(len(body)) + body


def publish_parts(topic: str, payload: bytes) -> tuple[bytes, bytes]:
    """A QoS 1 PUBLISH as (what precedes the packet id, what follows it)."""
    head_topic = utf8(topic)
    length = len(head_topic) + 2 + 1 + len(payload)
    return b"\x32" + varint(length) + head_topic, b"\x00" + payload


def read_varint(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """(value, offset after it), or None when ``data`` ends inside it."""
    value = shift = 0
    while at < len(data):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def take_packet(buffer: bytearray) -> tuple[int, bytes] | None:
    """Remove one whole packet from ``buffer``: (first byte, body), or None if incomplete."""
    if not buffer:
        return None
    found = read_varint(buffer, 1)
    if found is None:
        return None
    length, start = found
    if len(buffer) < start + length:
        return None
    first, body = buffer[0], bytes(buffer[start : start + length])
    del buffer[: start + length]
    return first, body


# Property identifier -> size (int) or kind, for skipping CONNACK properties.
_PROPERTY_SIZES: dict[int, int | str] = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "b", 0x11: 4, 0x12: "s", 0x13: 2, 0x15: "s", 0x16: "b",
    0x17: 1, 0x19: 1, 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p",
    0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


def connack(body: bytes) -> tuple[int, dict[int, int]]:
    """A CONNACK's reason code and its integer properties (e.g. 0x21 Receive Maximum)."""
    reason = body[1]
    props: dict[int, int] = {}
    found = read_varint(body, 2)
    if found is None:
        return reason, props
    length, at = found
    end = at + length
    while at < end:
        ident = body[at]
        at += 1
        size = _PROPERTY_SIZES.get(ident)
        if isinstance(size, int):
            props[ident] = int.from_bytes(body[at : at + size], "big")
            at += size
        elif size in ("s", "b"):
            at += 2 + int.from_bytes(body[at : at + 2], "big")
        elif size == "p":
            for _ in range(2):
                at += 2 + int.from_bytes(body[at : at + 2], "big")
        else:
            break  # unknown property: stop reading them
    return reason, props


def puback(body: bytes) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK (MQTT 5 omits the reason when it is 0)."""
    return int.from_bytes(body[:2], "big"), body[2] if len(body) > 2 else 0


# -- the publishers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    client_id: str
    topic: str
    chain: str
    key: str


class Credits:
    """Messages the publishers may still send (shared by all processes)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def take(self, want: int) -> int:
        with self.value.get_lock():
            got = min(want, self.value.value)
            self.value.value -= got
        return got


def _context(spec: dict[str, Any], device: Device) -> ssl.SSLContext | None:
    if not spec["tls"]:
        return None
    context = ssl.create_default_context(cafile=spec["ca_file"])
    context.load_cert_chain(device.chain, device.key)
    return context


def _open(spec: dict[str, Any], device: Device) -> socket.socket:
    raw = socket.create_connection((spec["host"], spec["port"]), timeout=60)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    context = _context(spec, device)
    return context.wrap_socket(raw, server_hostname=spec["server_hostname"]) if context else raw


def run_raw(spec: dict[str, Any], device: Device, stop: Any, credits: Credits, count: Callable[..., None]) -> None:
    """One connection of the raw client until ``stop``; then waits for its PUBACKs."""
    sock = _open(spec, device)
    buffer = bytearray()

    def packet() -> tuple[int, bytes]:
        while (found := take_packet(buffer)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("Mosquitto closed the connection")
            buffer.extend(chunk)
        return found

    try:
        sock.sendall(connect_packet(device.client_id))
        first, body = packet()
        reason, props = connack(body)
        if first >> 4 != 2 or reason != 0:
            raise ConnectionError(f"CONNACK {reason}")
        inflight = min(spec["inflight"], props.get(0x21, 65535))
        head, tail = publish_parts(device.topic, spec["payload"])
        pid = 0
        outstanding = 0
        counted_up = False
        while True:
            want = 0 if stop.value else inflight - outstanding
            got = credits.take(want) if want else 0
            if got:
                out = bytearray()
                for _ in range(got):
                    pid = pid % 65535 + 1
                    out += head
                    out += pid.to_bytes(2, "big")
                    out += tail
                sock.sendall(out)
                outstanding += got
                count(sent=got)
            if not outstanding:
                if stop.value:
                    break
                time.sleep(0.002)  # no credits: Kafka has not caught up yet
                continue
            # Read at least one packet, then whatever else is already buffered.
            acked = refused = 0
            first, body = packet()
            while True:
                kind = first >> 4
                if kind == 4:
                    _, code = puback(body)
                    outstanding -= 1
                    if code in ACCEPTED:
                        acked += 1
                    else:
                        refused += 1
                elif kind == 14:
                    raise ConnectionError(f"DISCONNECT {body[:1].hex() or '00'} from Mosquitto")
                nxt = take_packet(buffer)
                if nxt is None:
                    break
                first, body = nxt
            count(acked=acked, refused=refused)
            if acked and not counted_up:
                counted_up = True
                count(up=1)
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def run_paho(spec: dict[str, Any], device: Device, stop: Any, credits: Credits, count: Callable[..., None]) -> None:
    """One connection of paho-mqtt 2.1 (its network loop in its own thread) until ``stop``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device.client_id, protocol=mqtt.MQTTv5)
    context = _context(spec, device)
    if context is not None:
        client.tls_set_context(context)
    client.max_inflight_messages_set(spec["inflight"])
    state = {"outstanding": 0, "connack": -1, "up": False}
    cond = threading.Condition()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with cond:
            state["connack"] = reason.value
            cond.notify_all()

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        ok = reason.value in ACCEPTED
        count(acked=int(ok), refused=int(not ok))
        with cond:
            state["outstanding"] -= 1
            if ok and not state["up"]:
                state["up"] = True
                count(up=1)
            cond.notify_all()

    client.on_connect, client.on_publish = on_connect, on_publish
    client.connect(spec["host"], spec["port"], keepalive=60)
    client.loop_start()
    try:
        with cond:
            if not cond.wait_for(lambda: state["connack"] != -1, timeout=30) or state["connack"] != 0:
                raise ConnectionError(f"CONNACK {state['connack']}")
        payload, topic, inflight = spec["payload"], device.topic, spec["inflight"]
        while not stop.value:
            with cond:
                cond.wait_for(lambda: state["outstanding"] < inflight or stop.value, timeout=1)
                want = inflight - state["outstanding"]
            got = credits.take(want) if want > 0 and not stop.value else 0
            if not got:
                time.sleep(0.002)
                continue
            with cond:
                state["outstanding"] += got
            for _ in range(got):
                client.publish(topic, payload, qos=1)
            count(sent=got)
        with cond:
            cond.wait_for(lambda: state["outstanding"] <= 0, timeout=10)
        client.disconnect()
    finally:
        client.loop_stop()


def publisher_process(
    spec: dict[str, Any], index: int, stop: Any, credits_value: Any, counters: Any, results: Any
) -> None:
    """One process: a thread per device; counters in ``counters[index * SLOTS:]``."""
    run = run_raw if spec["client"] == "raw" else run_paho
    credits = Credits(credits_value)
    lock = threading.Lock()
    base = index * SLOTS
    errors: list[str] = []

    def count(*, sent: int = 0, acked: int = 0, refused: int = 0, up: int = 0, errors_: int = 0) -> None:
        with lock:
            counters[base + SENT] += sent
            counters[base + ACKED] += acked
            counters[base + REFUSED] += refused
            counters[base + UP] += up
            counters[base + ERRORS] += errors_

    def thread(device: Device) -> None:
        while not stop.value:
            try:
                run(spec, device, stop, credits, count)
                return
            except (OSError, ConnectionError, ssl.SSLError) as exc:
                count(errors_=1)
                with lock:
                    if len(errors) < 5:
                        errors.append(f"{device.client_id}: {type(exc).__name__}: {exc}")
                time.sleep(0.5)

    threads = [threading.Thread(target=thread, args=(Device(*d),)) for d in spec["devices"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put({"errors": errors})


# -- the load ---------------------------------------------------------------------------------


@dataclass
class MqttLoad:
    """``devices`` publishing over ``procs`` processes; ``delivered()`` says how many records
    have reached Kafka so far (any origin: it is read relative to its value at ``start``)."""

    host: str
    port: int
    server_hostname: str
    ca_file: str
    devices: list[tuple[str, str, str, str]]  # client id, topic, chain, key
    payload: bytes
    delivered: Callable[[], int]
    client: str = "raw"  # raw | paho
    procs: int = 2
    inflight: int = 20  # unacknowledged PUBLISHes per connection
    backlog: int = 400  # published and not yet in Kafka, over all connections
    poll: float = 0.05  # seconds between two readings of ``delivered``
    tls: bool = True
    drain_timeout: float = 30.0
    # Called when nothing reached Kafka for ``stall_seconds`` while messages waited (the
    # bridge stopped taking them).  The stall and the end of ``on_stall`` each count an event:
    # every window holding one is flagged (the restart, and a changed pid, fall inside it).
    on_stall: Callable[[], None] | None = None
    stall_seconds: float = 3.0
    outcome: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ctx = ctx
        self._stop = ctx.RawValue("b", 0)
        self._credits = ctx.Value("q", 0)
        self._counters = ctx.RawArray("d", SLOTS * self.procs)
        self._results = ctx.Queue()
        self._processes: list[Any] = []
        self._base = 0
        self._delivered = 0  # since start, as last read by the controller
        self._controller: threading.Thread | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.readings = 0
        self.stalls = 0
        self.events = 0  # stalls noticed + restarts finished
        self.stall_notes: list[str] = []

    # counters
    def _sum(self, slot: int) -> float:
        return sum(self._counters[i * SLOTS + slot] for i in range(self.procs))

    def _read(self) -> int:
        value = self.delivered() - self._base
        with self._lock:
            self._delivered = value
            self.readings += 1
        return value

    def _control(self) -> None:
        granted = 0
        moved = time.monotonic()
        while not self._halt.is_set():
            try:
                delivered = self._read()
            except Exception:  # noqa: BLE001 - a failed reading is retried at the next poll
                delivered = granted
            now = time.monotonic()
            if delivered > granted:
                with self._credits.get_lock():
                    self._credits.value += delivered - granted
                granted = delivered
                moved = now
            waiting = self._sum(SENT) - delivered
            if waiting <= 0 or self._stop.value:
                moved = now
            elif now - moved > self.stall_seconds and self.on_stall is not None:
                note = f"nothing reached Kafka for {now - moved:.1f} s with {waiting:,.0f} messages published"
                self.stalls += 1
                self.events += 1
                self.stall_notes.append(note)
                try:
                    self.on_stall()
                finally:
                    self.events += 1
                # A restarted consumer takes back what Mosquitto held for its session first.
                moved = time.monotonic() + self.stall_seconds
            self._halt.wait(self.poll)

    def start(self) -> None:
        self._base = self.delivered()
        self._credits.value = self.backlog
        self._controller = threading.Thread(target=self._control, daemon=True)
        self._controller.start()
        spec = {
            "client": self.client,
            "host": self.host,
            "port": self.port,
            "server_hostname": self.server_hostname,
            "ca_file": self.ca_file,
            "payload": self.payload,
            "inflight": self.inflight,
            "tls": self.tls,
        }
        groups = [self.devices[i :: self.procs] for i in range(self.procs)]
        for index, group in enumerate(groups):
            process = self._ctx.Process(
                target=publisher_process,
                args=({**spec, "devices": group}, index, self._stop, self._credits, self._counters, self._results),
                daemon=True,
            )
            process.start()
            self._processes.append(process)
        # Started = every connection has had an accepted PUBACK and Kafka holds a record.
        deadline = time.monotonic() + 90
        while self._sum(UP) < len(self.devices) or self._delivered <= 0:
            if time.monotonic() > deadline or not all(p.is_alive() for p in self._processes):
                up, delivered = self._sum(UP), self._delivered
                self.stop()
                raise RuntimeError(
                    f"MQTT load never started: {up:.0f}/{len(self.devices)} connections up, {delivered} records in "
                    f"Kafka; errors: {self.outcome.get('errors')}"
                )
            time.sleep(0.1)

    def pids(self) -> set[int]:
        return {p.pid for p in self._processes if p.pid}

    def mark(self) -> tuple[int, float, float, float, float, int]:
        """(delivered to Kafka, published, PUBACK accepted, PUBACK refused, connection errors,
        stalls), all since ``start``; ``delivered`` read now, not the controller's last reading."""
        delivered = self._read()
        return delivered, self._sum(SENT), self._sum(ACKED), self._sum(REFUSED), self._sum(ERRORS), self.events

    def problems(self, window: Window) -> list[str]:
        (*_, a), (*_, b) = window.mark
        if a == b:
            return []
        # Event 2k+1 is stall k's notice, 2k+2 its restart's end.
        notes = self.stall_notes[a // 2 : (b + 1) // 2]
        return [f"the bridge stalled ({'; '.join(notes)}) and was restarted (or was being restarted)"]

    def stop(self) -> None:
        self._stop.value = 1
        errors: list[str] = []
        for _ in self._processes:
            try:
                errors += self._results.get(timeout=60)["errors"]
            except queue.Empty:
                break
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        # Kafka catches up with what Mosquitto acknowledged (the bridge's backlog drains).
        acked = self._sum(ACKED)
        deadline = time.monotonic() + self.drain_timeout
        began = time.monotonic()
        delivered = self._delivered
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                delivered = self.delivered() - self._base
            if delivered >= acked:
                break
            time.sleep(0.1)
        self._halt.set()
        if self._controller is not None:
            self._controller.join(timeout=5)
        self.outcome = {
            "published": self._sum(SENT),
            "acknowledged": acked,
            "refused": self._sum(REFUSED),
            "delivered": delivered,
            "lost": max(0.0, acked - delivered),
            "extra_in_kafka": max(0.0, delivered - acked),
            "drained_in": time.monotonic() - began,
            "errors": errors,
            "readings": self.readings,
            "stalls": self.stall_notes,
        }

    def tally(self, window: Window) -> dict[str, Any]:
        (d_a, s_a, a_a, r_a, e_a, _), (d_b, s_b, a_b, r_b, e_b, _) = window.mark
        records = d_b - d_a
        statuses = {"PUBACK ok": int(a_b - a_a), "backlog at start": int(s_a - d_a), "backlog at end": int(s_b - d_b)}
        if r_b - r_a:
            statuses["PUBACK refused"] = int(r_b - r_a)
        if e_b - e_a:
            statuses["connection errors"] = int(e_b - e_a)
        return {
            "records": records,
            "requests": records,  # one record per message
            "latencies": [],
            "statuses": statuses,
            "published": s_b - s_a,
            "backlog": s_b - d_b,
        }


def kafka_end_offsets(config: dict[str, Any], topic: str, timeout: float = 10.0) -> Callable[[], int]:
    """A reader of the sum of ``topic``'s end offsets (one ListOffsets request per call)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient(config)
    partitions = admin.list_topics(topic, timeout=timeout).topics[topic].partitions
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}

    def read() -> int:
        futures = admin.list_offsets(request, request_timeout=timeout)
        return sum(f.result().offset for f in futures.values())

    return read
