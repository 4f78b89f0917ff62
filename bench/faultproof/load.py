"""The load of a fault run: HTTPS devices and a direct producer, every answer recorded.

* Each HTTPS device is a thread on one keep-alive mTLS connection to nginx, sending at a
  fixed pace (``rate`` requests per second) batches of 1-3 records, each request with its
  own ``X-Request-Id`` (``<run>-<device>-<sequence>``), which ingest writes to Kafka as the
  ``sluice-request-id`` header beside each record's ``sluice-record-index``.  Every
  ``invalid_every``-th request carries one record the schema refuses (a 422 whose records
  must never reach the topic).  A request that gets no HTTP answer (a connection error or a
  timeout) is recorded as status 0 and the connection is made again.
* The direct producer is a Kafka-direct credential's own idempotent producer (``acks=all``,
  librdkafka's defaults otherwise unless ``direct_timeout_ms`` is given) on the broker's mTLS
  listener, one record at a time at a fixed pace, with the same two headers; every delivery
  report is recorded.

Nothing is retried: a record is sent once, so a record found twice is a duplicate made by
the platform (or by librdkafka), never by the load."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bench.faultproof.target import Target

REQUEST_ID_HEADER = "sluice-request-id"
RECORD_INDEX_HEADER = "sluice-record-index"
NO_ANSWER = 0
# Longer than ingest's own wait for Kafka (ingest.kafka.DELIVERY_WAIT_SECONDS, 15 s): a
# request that times out here was not answered by the platform at all.
HTTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Answer:
    """One HTTPS request and what it got."""

    request_id: str
    records: int
    invalid: bool  # it carried a record the schema refuses, on purpose
    status: int  # NO_ANSWER: no HTTP answer
    code: str | None
    retry_after: str | None
    offsets: list[tuple[int, int]] | None  # a 200's (partition, offset) per record
    sent_at: float
    answered_at: float
    error: str = ""


@dataclass
class DirectRecord:
    """One record of the direct producer and its delivery report (None until it came)."""

    request_id: str
    produced_at: float
    acked: tuple[int, int] | None = None
    error: str | None = None


@dataclass
class LoadResult:
    answers: list[Answer]
    direct: list[DirectRecord]


def _body(seq: int, count: int, invalid: bool) -> bytes:
    records: list[dict[str, Any]] = [{"celsius": 20.0 + (seq % 100) / 10, "seq": seq} for _ in range(count)]
    if invalid:
        records[-1] = {"celsius": "hot", "seq": seq}
    return json.dumps({"records": records}).encode()


class _Device(threading.Thread):
    def __init__(self, load: Load, index: int) -> None:
        super().__init__(name=f"fault-device-{index}", daemon=True)
        self.load = load
        self.index = index
        target = load.target
        device = target.devices[index]
        self.context = ssl.create_default_context(cafile=str(target.ca_file))
        self.context.load_cert_chain(str(device.chain), str(device.key))
        self.connection: http.client.HTTPSConnection | None = None

    def _connect(self) -> http.client.HTTPSConnection:
        if self.connection is None:
            self.connection = http.client.HTTPSConnection("127.0.0.1", self.load.target.web_port,
                                                          context=self.context, timeout=HTTP_TIMEOUT)  # fmt: skip
        return self.connection

    def run(self) -> None:
        load = self.load
        interval = 1.0 / load.rate
        next_at = time.monotonic()
        seq = 0
        while not load.stopping.is_set():
            now = time.monotonic()
            if next_at > now:
                load.stopping.wait(next_at - now)
                continue
            next_at = max(next_at + interval, now)  # behind schedule: no burst to catch up
            load.record(self._send(seq))
            seq += 1
        if self.connection is not None:
            self.connection.close()

    def _send(self, seq: int) -> Answer:
        load = self.load
        request_id = f"{load.run_id}-{self.index:02d}-{seq:06d}"
        count = 1 + seq % 3
        invalid = load.invalid_every > 0 and seq % load.invalid_every == load.invalid_every - 1
        body = _body(seq, count, invalid)
        sent_at = time.time()
        try:
            connection = self._connect()
            connection.request("POST", "/ingest/v1/records", body=body,
                               headers={"Content-Type": "application/json", "X-Request-Id": request_id})  # fmt: skip
            response = connection.getresponse()
            payload = response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
            if response.getheader("Connection", "").lower() == "close":
                self._drop()
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            return Answer(request_id, count, invalid, NO_ANSWER, None, None, None, sent_at, time.time(),
                          error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        answered_at = time.time()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = {}
        if status == 200:
            offsets = [(r["partition"], r["offset"]) for r in parsed.get("records", [])]
            return Answer(request_id, count, invalid, status, None, retry_after, offsets, sent_at, answered_at)
        error = parsed.get("error", {}) if isinstance(parsed, dict) else {}
        return Answer(request_id, count, invalid, status, error.get("code"), retry_after, None, sent_at, answered_at,
                      error=str(error.get("message", payload[:200]))[:300])  # fmt: skip

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class _DirectProducer(threading.Thread):
    def __init__(self, load: Load) -> None:
        super().__init__(name="fault-direct-producer", daemon=True)
        self.load = load
        target = load.target
        self.config: dict[str, Any] = {
            "bootstrap.servers": target.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(target.ca_file),
            "ssl.certificate.pem": target.direct.certificate_pem,
            "ssl.key.pem": target.direct.key_pem,
            # What ingest's producer promises too: idempotent, every in-sync replica.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
        if load.direct_timeout_ms is not None:
            # librdkafka's default is 300 s.  A shorter one makes records time out during an
            # outage, and librdkafka then bumps the producer epoch and sends again records
            # the broker had already written (confluentinc/librdkafka#4953): duplicates.
            self.config["message.timeout.ms"] = load.direct_timeout_ms
        self.records: list[DirectRecord] = []
        self.fatal: list[str] = []

    def _report(self, record: DirectRecord) -> Any:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is None:
                record.acked = (message.partition() or 0, message.offset() or 0)
            else:
                record.error = error.str()

        return on_delivery

    def run(self) -> None:
        load = self.load
        producer = Producer(self.config)
        interval = 1.0 / load.direct_rate
        next_at = time.monotonic()
        seq = 0
        while not load.stopping.is_set():
            try:
                producer.poll(0)
            except KafkaException as exc:
                # A fatal error (e.g. the producer id fenced): this producer is done; its
                # unreported records stay unreported (neither acknowledged nor failed).
                self.fatal.append(str(exc))
                producer = Producer(self.config)
            now = time.monotonic()
            if next_at > now:
                load.stopping.wait(min(next_at - now, 0.05))
                continue
            next_at = max(next_at + interval, now)
            request_id = f"{load.run_id}-direct-{seq:07d}"
            seq += 1
            record = DirectRecord(request_id, time.time())
            try:
                producer.produce(load.target.topic, value=json.dumps({"celsius": 1.0, "seq": seq}).encode(),
                                 key=b"direct", headers=[(REQUEST_ID_HEADER, request_id.encode()),
                                                         (RECORD_INDEX_HEADER, b"0")],
                                 on_delivery=self._report(record))  # fmt: skip
            except (BufferError, KafkaException) as exc:
                record.error = f"not queued: {exc}"
            self.records.append(record)
        producer.flush(30)


class Load:
    """Start, let run, stop; ``result()`` holds every answer and delivery report."""

    def __init__(self, target: Target, run_id: str, *, rate: float = 10.0, direct_rate: float = 20.0,
                 invalid_every: int = 10, direct_timeout_ms: int | None = None) -> None:  # fmt: skip
        self.target = target
        self.direct_timeout_ms = direct_timeout_ms
        self.run_id = run_id
        self.rate = rate
        self.direct_rate = direct_rate
        self.invalid_every = invalid_every
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._devices = [_Device(self, i) for i in range(len(target.devices))]
        self._direct = _DirectProducer(self)

    def record(self, answer: Answer) -> None:
        with self._lock:
            self._answers.append(answer)

    def start(self) -> None:
        for thread in (*self._devices, self._direct):
            thread.start()

    def stop(self, timeout: float = 60.0) -> LoadResult:
        """Stop sending and wait for the answers still in flight (each is bounded by
        ``HTTP_TIMEOUT``, the direct producer's flush by 30 s)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in (*self._devices, self._direct):
            thread.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in (*self._devices, self._direct) if t.is_alive()]
        if alive:
            raise RuntimeError(f"the load did not stop within {timeout:.0f} s: {', '.join(alive)}")
        return self.result()

    def result(self) -> LoadResult:
        with self._lock:
            return LoadResult(list(self._answers), list(self._direct.records))

    def statuses(self) -> Counter[int]:
        """Answers so far by status (NO_ANSWER for none): for progress lines."""
        with self._lock:
            return Counter(a.status for a in self._answers)

    def wait_for_answers(self, status: int, count: int, timeout: float) -> bool:
        """Until ``count`` more answers with ``status`` than now arrived (or ``timeout``)."""
        start = self.statuses()[status]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.statuses()[status] - start >= count:
                return True
            time.sleep(0.2)
        return False

    def first_answer_after(self, status: int, since: float) -> float | None:
        """When the first request sent at or after ``since`` (epoch seconds) got ``status``."""
        with self._lock:
            times = [a.answered_at for a in self._answers if a.status == status and a.sent_at >= since]
        return min(times, default=None)

    @property
    def fatal_errors(self) -> list[str]:
        return list(self._direct.fatal)
