"""The one place that builds Kafka client configurations and clients.

Every client of the platform itself authenticates on the mTLS listener with the platform
admin certificate (``User:sluice-admin``, a super user).  Tenant credentials are built by
``client_config`` from PEM strings.  librdkafka verifies the broker's certificate and host
name by default (``ssl.endpoint.identification.algorithm=https``).

Ingest produces through one idempotent producer per process (``ingest_producer``), created
at first use so a forked worker never inherits another process's librdkafka threads.  Its
event loop serves the delivery reports, so each request waits for the reports of its own
records only (``IngestProducer.produce_and_wait_async``), never for a global flush.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from certs.platform_pki import PlatformPki
from config.env import Runtime

_quiet = logging.getLogger("sluice.kafka.librdkafka")

# librdkafka gives up on a record after this long (message.timeout.ms, alias
# delivery.timeout.ms): its default, 5 minutes, far longer than any request waits.  A record
# that times out inside an idempotent producer makes librdkafka bump the producer's epoch
# and send what was still in flight again under the new one, which the broker cannot tell
# from new records: with 10 s here, a leader killed under load had one acknowledged record
# written twice (tests/integration/test_cluster_faults.py; librdkafka issue 4953).  So the
# producer keeps retrying through a failover or an outage, and the request stops waiting on
# its own deadline instead: 503, saying its records may still be written.
DELIVERY_TIMEOUT_MS = 300_000
DELIVERY_WAIT_SECONDS = 10.0
# How often the event loop collects delivery reports while a request waits (seconds), and
# otherwise.
POLL_INTERVAL = 0.001
IDLE_POLL_INTERVAL = 0.2


@dataclass(frozen=True)
class AdminFiles:
    """The PEM files Sluice's own admin client presents on the mTLS listener."""

    ca: str
    cert: str
    key: str


def admin_files(runtime: Runtime) -> AdminFiles:
    """Sluice's platform admin certificate (``User:sluice-admin``) and trust bundle, unless an
    external cluster gave Sluice its own (``SLUICE_KAFKA_CERT_FILE``/``_KEY_FILE``/``_CA_FILE``)."""
    pki = PlatformPki(runtime.pki_dir)
    external = runtime.external_kafka
    ca, cert, key = pki.trust_bundle, pki.cert("admin"), pki.key("admin")
    if external is not None:
        ca = external.ca_file or ca
        if external.cert_file is not None and external.key_file is not None:
            cert, key = external.cert_file, external.key_file
    return AdminFiles(ca=str(ca), cert=str(cert), key=str(key))


def admin_config(runtime: Runtime) -> dict[str, Any]:
    """librdkafka settings for the platform admin principal."""
    files = admin_files(runtime)
    return {
        "bootstrap.servers": runtime.kafka_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": files.ca,
        "ssl.certificate.location": files.cert,
        "ssl.key.location": files.key,
        "logger": _quiet,
    }


def client_config(runtime: Runtime, *, certificate_pem: str, key_pem: str, ca_pem: str | None = None) -> dict[str, Any]:
    """librdkafka settings for a client holding its own certificate and key (PEM strings)."""
    pki = PlatformPki(runtime.pki_dir)
    return {
        "bootstrap.servers": runtime.kafka_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.pem": ca_pem if ca_pem is not None else pki.trust_bundle.read_text(),
        "ssl.certificate.pem": certificate_pem,
        "ssl.key.pem": key_pem,
        "logger": _quiet,
    }


# librdkafka's ``oauth_cb``: given ``sasl.oauthbearer.config``, returns (token, expiry as
# epoch seconds[, principal]).  librdkafka calls it again at 80 % of the token's lifetime.
OAuthTokenCallback = Callable[[str | None], tuple[Any, ...]]


def oauth_client_config(runtime: Runtime, *, oauth_cb: OAuthTokenCallback, ca_pem: str | None = None) -> dict[str, Any]:
    """librdkafka settings for a Sluice token holder on the broker's OAUTH listener:
    TLS (server authentication only) + SASL OAUTHBEARER (RFC 7628).  The broker takes the
    principal from the token's ``kafka_principal`` claim (``User:<tenant>.<group>``)."""
    pki = PlatformPki(runtime.pki_dir)
    return {
        "bootstrap.servers": runtime.kafka_oauth_bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "OAUTHBEARER",
        "oauth_cb": oauth_cb,
        "ssl.ca.pem": ca_pem if ca_pem is not None else pki.trust_bundle.read_text(),
        "logger": _quiet,
    }


# The launcher's health check imports this before Django is set up: it must stay light (no
# models, no DRF), hence here rather than in ingest.kafka_admin.
def kafka_cluster_check(runtime: Runtime, timeout: float = 3.0, *, every_broker: bool = False) -> str | None:
    """None when the cluster answers a metadata request for the admin principal.

    With ``every_broker`` (``/healthz``), a cluster Sluice runs itself must also list each of
    its brokers as live: one broker down still takes acks=all writes (min.insync.replicas 2
    of 3) but is a fault to report, and the detail names who is missing."""
    try:
        metadata = AdminClient(admin_config(runtime)).list_topics(timeout=timeout)
    except KafkaException as exc:
        return str(exc.args[0]) if exc.args else "Kafka did not answer"
    if not metadata.brokers:
        return "no brokers in metadata"
    if every_broker and runtime.kafka_brokers > 1:
        # Each broker asked on its own listener: the metadata one broker serves can still list
        # a dead one as live (with two of three down the quorum cannot fence anybody).
        nodes = list(runtime.kafka_nodes)
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            answers = list(pool.map(lambda n: kafka_broker_check(runtime, node=n, port=runtime.broker_ports(n).client,
                                                                 timeout=timeout), nodes))  # fmt: skip
        missing = [node for node, problem in zip(nodes, answers, strict=True) if problem is not None]
        if missing:
            live = len(nodes) - len(missing)
            writes = "acks=all writes go on" if live >= 2 else "acks=all writes refused (min.insync.replicas 2)"
            return (f"broker(s) {', '.join(map(str, missing))} not live: {live} of {len(nodes)} "
                    f"answer; {writes}")  # fmt: skip
    return None


def kafka_broker_check(runtime: Runtime, *, node: int, port: int, timeout: float = 3.0) -> str | None:
    """None when broker ``node`` answers a metadata request on its own mTLS listener and the
    cluster counts it among its live brokers (a fenced or unregistered broker is not listed)."""
    config = {**admin_config(runtime), "bootstrap.servers": f"{runtime.kafka_advertised_host}:{port}"}
    try:
        metadata = AdminClient(config).list_topics(timeout=timeout)
    except KafkaException as exc:
        return str(exc.args[0]) if exc.args else "Kafka did not answer"
    if node not in metadata.brokers:
        return f"broker {node} is not among the cluster's live brokers {sorted(metadata.brokers)}"
    return None


def ingest_producer_config(runtime: Runtime) -> dict[str, Any]:
    """The ingest producer: the platform admin principal, idempotent, every in-sync replica.

    ``enable.idempotence`` makes librdkafka's own retries exactly-once per partition and
    implies ``acks=all`` and ``max.in.flight.requests.per.connection<=5``; both are spelled
    out so a reader (and a changed default) cannot get them wrong.  ``acks=all`` is what
    makes a 2xx from ingest mean "written to every in-sync replica" (the broker's
    ``min.insync.replicas`` decides how many that must be).  Compression, linger and batch
    size come from ``SLUICE_INGEST_*`` (config/env.py), chosen by measurement."""
    settings = runtime.ingest
    return {
        **admin_config(runtime),
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        # Small: requests wait for their records, so batching must not add visible latency.
        "linger.ms": settings.linger_ms,
        "batch.size": settings.batch_bytes,
        "compression.type": settings.compression,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
    }


# Each record's position in its request (0-based), beside the request's ``sluice-request-id``:
# together they name one record of one answer, so a consumer can match what it reads
# against what ingest acknowledged (and find a duplicate or a gap).  The values are made once
# (a batch holds at most ``ingest.records.MAX_RECORDS``), so a record costs one small list.
RECORD_INDEX_HEADER = "sluice-record-index"
_INDEX_VALUES = [str(index).encode() for index in range(1000)]


def record_index_value(index: int) -> bytes:
    return _INDEX_VALUES[index] if index < len(_INDEX_VALUES) else str(index).encode()


# Record headers in the type Producer.produce takes (a list is invariant: list[tuple[str, bytes]]
# would not be accepted, though it is all Sluice ever sends).
KafkaHeaders = list[tuple[str, str | bytes | None]]


# Not frozen: one is made per request, and a frozen dataclass's __init__ sets each field
# through object.__setattr__ (3x the cost); nothing changes one after it is made.
@dataclass(slots=True)
class Outgoing:
    """One request's records for Kafka: every record of a request has the same key (the
    device id) and headers (identity and request id), only the values differ (and the
    ``sluice-record-index`` header the producer adds to each).

    When only some of a request's records go to one topic (the valid ones to the stream,
    the others to the dead-letter topic), ``indexes`` holds each value's position in the
    request (what its ``sluice-record-index`` says), and ``record_headers`` the headers
    that differ per record (a dead letter's reasons)."""

    key: bytes
    headers: KafkaHeaders
    values: list[bytes]
    indexes: list[int] | None = None
    record_headers: list[KafkaHeaders] | None = None


@dataclass(frozen=True)
class DeliveryOutcome:
    """What Kafka said about each record of one request, in order: ``delivered[i]`` is its
    (partition, offset), or None when no report came (``errors[i]`` says why, if Kafka said)."""

    delivered: list[tuple[int, int] | None]
    errors: list[KafkaError | None]
    queued: int  # how many of the records reached the producer's queue at all
    # When the request stopped waiting before every queued record had its report: awaits the
    # final outcome, once librdkafka has reported on each (it keeps trying for
    # DELIVERY_TIMEOUT_MS, so at most that long).
    settle: Callable[[], Awaitable[DeliveryOutcome]] | None = None

    @property
    def complete(self) -> bool:
        return None not in self.delivered


class _Waiter:
    """Collects the delivery reports of one request's records, on the event loop's thread
    (``IngestProducer`` serves librdkafka's reports there), and completes ``future`` once
    every queued record has its report and ``seal`` was called.

    One callback serves the whole request (a closure per record cost an allocation and a
    share of the garbage collector's time for each record).  The reports are placed by
    their order of arrival: every record of a request has the same key, so it goes to one
    partition, and librdkafka reports a partition's records in the order they were
    produced (an idempotent producer keeps that order through its retries).  ``place``
    checks that this held -- one partition, offsets rising -- and otherwise (the topic's
    partition count changed while the request was produced, say) places each report by its
    record's ``sluice-record-index`` header instead."""

    __slots__ = ("count", "future", "indexes", "pending", "reports", "sealed", "settled")

    def __init__(self, count: int, future: asyncio.Future[None], indexes: list[int] | None = None) -> None:
        self.count = count
        self.indexes = indexes
        self.reports: list[tuple[KafkaError | None, Message]] = []
        self.future = future
        self.pending = 0
        self.sealed = False
        # Set by whoever still wants the reports after the request stopped waiting.
        self.settled: asyncio.Future[None] | None = None

    def seal(self) -> None:
        """No more records will be produced for this request."""
        self.sealed = True
        self._maybe_done()

    def expire(self) -> None:
        """The request's deadline: answer with whatever reports have arrived."""
        if not self.future.done():
            self.future.set_result(None)

    def _maybe_done(self) -> None:
        if self.sealed and self.pending <= 0:
            if not self.future.done():
                self.future.set_result(None)
            if self.settled is not None:
                # Thread-safe: a producer's last flush (at shutdown) serves reports off the loop.
                self.settled.get_loop().call_soon_threadsafe(_resolve, self.settled)

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        self.reports.append((error, message))
        self.pending -= 1
        self._maybe_done()

    def place(self) -> tuple[list[tuple[int, int] | None], list[KafkaError | None]]:
        """Each record's (partition, offset) or None, and each record's error or None, in
        the request's order."""
        delivered: list[tuple[int, int] | None] = [None] * self.count
        errors: list[KafkaError | None] = [None] * self.count
        reports = self.reports
        positions: Sequence[int | None] = range(len(reports))
        if not _in_produce_order(reports):
            positions = [_record_index(message) for _, message in reports]
            if self.indexes is not None:
                # The headers hold positions in the request; these records are some of them.
                where = {index: position for position, index in enumerate(self.indexes)}
                positions = [None if index is None else where.get(index) for index in positions]
        for position, (error, message) in zip(positions, reports, strict=True):
            if position is None or not 0 <= position < self.count:
                continue
            if error is None:
                # A delivered message has both (None is for messages not yet written).
                delivered[position] = (message.partition(), message.offset())  # type: ignore[assignment]
            else:
                errors[position] = error
        return delivered, errors


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _in_produce_order(reports: list[tuple[KafkaError | None, Message]]) -> bool:
    """True when the reports are visibly in produce order: one partition, and the offsets of
    the delivered ones rising."""
    if not reports:
        return True
    partition = reports[0][1].partition()
    last = -1
    for error, message in reports:
        if message.partition() != partition:
            return False
        if error is None:
            offset = message.offset()
            if offset is None or offset <= last:
                return False
            last = offset
    return True


def _record_index(message: Message) -> int | None:
    """The record's position in its request, from its ``sluice-record-index`` header."""
    # A delivery report's headers are the list of (name, value) pairs the record was produced
    # with (the stubs also allow a dict, which only ``produce`` takes).
    headers: list[tuple[str, bytes | None]] = list(message.headers() or ())  # type: ignore[arg-type]
    for name, value in headers:
        if name == RECORD_INDEX_HEADER and value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


class IngestProducer:
    """One librdkafka producer, served on the event loop that produces with it.

    librdkafka hands delivery reports to whoever calls ``poll``.  A thread polling for them
    would cost a hand-over of the GIL and a cross-thread wake-up of the event loop for every
    report; instead the loop itself polls -- without blocking, every ``POLL_INTERVAL`` while
    a request waits for Kafka, and every ``IDLE_POLL_INTERVAL`` otherwise (librdkafka's logs
    and errors come the same way) -- so a report costs one callback on the loop, and a
    request's acknowledgement arrives at most ``POLL_INTERVAL`` after librdkafka has it.
    The polls are timer callbacks, not a task: a request that starts waiting while the
    timer is set for the idle interval moves it to ``POLL_INTERVAL`` at once (a sleeping
    task could not be woken, and the request would wait for the idle interval)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self.broken = False
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_idle = False

    @property
    def queued(self) -> int:
        """Messages in librdkafka's queue: produced, not yet acknowledged or failed."""
        return len(self._producer)

    @property
    def usable(self) -> bool:
        return not self.broken

    def _serve(self) -> None:
        try:
            self._producer.poll(0)
        except KafkaException as exc:
            # librdkafka raises a fatal error (e.g. a fenced idempotent producer) from poll();
            # the producer cannot continue: mark it for replacement (see ingest_producer).
            _quiet.error("ingest producer: %s; it will be replaced", exc)
            self.broken = True

    def _schedule(self, loop: asyncio.AbstractEventLoop, idle: bool) -> None:
        self._timer = loop.call_later(IDLE_POLL_INTERVAL if idle else POLL_INTERVAL, self._on_timer)
        self._timer_idle = idle

    def _on_timer(self) -> None:
        self._serve()
        if self.broken or self._loop is None:
            self._timer = None
            return
        self._schedule(self._loop, idle=not self._waiting)

    def _ensure_ticking(self) -> None:
        """Poll every ``POLL_INTERVAL`` from now on (a request is about to wait)."""
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._loop is loop and not self._timer_idle:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._loop = loop
        self._schedule(loop, idle=False)

    async def produce_and_wait_async(
        self, topic: str, outgoing: Outgoing, *, timeout: float | None = None
    ) -> DeliveryOutcome:
        """Produce ``records`` to ``topic`` and wait (at most ``timeout`` s) for Kafka's
        report on each.  Never raises for Kafka's sake: the outcome says what happened.  The
        wait is an ``await``, so one worker has many requests in flight (their records share
        librdkafka's batches)."""
        loop = asyncio.get_running_loop()
        self._ensure_ticking()
        values, indexes, extras = outgoing.values, outgoing.indexes, outgoing.record_headers
        waiter = _Waiter(len(values), loop.create_future(), indexes)
        # Each record's sluice-record-index value, looked up rather than computed per record.
        if indexes is None and len(values) <= len(_INDEX_VALUES):
            labels = _INDEX_VALUES
        else:
            labels = [record_index_value(index) for index in (range(len(values)) if indexes is None else indexes)]
        deadline = time.monotonic() + (DELIVERY_WAIT_SECONDS if timeout is None else timeout)
        queued = 0
        produce, key, headers, callback = self._producer.produce, outgoing.key, outgoing.headers, waiter.on_delivery
        for index, value in enumerate(values):
            indexed = [*headers, (RECORD_INDEX_HEADER, labels[index])]
            if extras is not None:
                indexed += extras[index]
            try:
                while True:
                    try:
                        produce(topic, value, key, headers=indexed, on_delivery=callback)
                        break
                    except BufferError:
                        # The local queue is full: let librdkafka drain it, within this
                        # request's deadline, rather than refusing at once.
                        if time.monotonic() + 0.01 >= deadline:
                            raise
                        self._serve()
                        await asyncio.sleep(0.01)
            except (BufferError, KafkaException) as exc:
                _quiet.warning("ingest: record %d of %d to %s not queued: %s", index, len(values), topic, exc)
                self._note_fatal(exc)
                break
            waiter.pending += 1
            queued += 1
        waiter.seal()
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), waiter.expire)
        self._waiting += 1
        try:
            await waiter.future
        finally:
            self._waiting -= 1
            timer.cancel()
        outcome = self._outcome(waiter, queued)
        if waiter.pending > 0:
            # librdkafka still holds some of these records (it retries them for up to
            # DELIVERY_TIMEOUT_MS): whoever needs their final outcome can await it.
            waiter.settled = loop.create_future()
            if waiter.pending <= 0:  # the last report came meanwhile (a flush on another thread)
                _resolve(waiter.settled)
            outcome = replace(outcome, settle=functools.partial(self._settle, waiter, queued))
        return outcome

    async def _settle(self, waiter: _Waiter, queued: int) -> DeliveryOutcome:
        assert waiter.settled is not None
        await waiter.settled
        return self._outcome(waiter, queued)

    def _outcome(self, waiter: _Waiter, queued: int) -> DeliveryOutcome:
        delivered, errors = waiter.place()
        for error in errors:
            if error is not None and error.fatal():
                # A fatal idempotence error leaves this producer unusable; the next request
                # builds a new one (a new producer id), see ingest_producer.
                self.broken = True
        return DeliveryOutcome(delivered=delivered, errors=errors, queued=queued)

    def _note_fatal(self, exc: Exception) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is not None and error.fatal():
            self.broken = True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (blocking)."""
        self._producer.flush(timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop serving on this loop and deliver what is queued, off the loop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        await asyncio.to_thread(self._producer.flush, timeout)


_producer_lock = threading.Lock()
_producers: dict[tuple[int, str], IngestProducer] = {}


def ingest_producer(runtime: Runtime) -> IngestProducer:
    """The process-wide ingest producer, created at first use (after any fork: keyed by pid)."""
    key = (os.getpid(), str(runtime.state_dir))
    with _producer_lock:
        producer = _producers.get(key)
        if producer is not None and not producer.usable:
            # Let the broken one deliver what it still can, off this request's path.
            threading.Thread(target=producer.close, daemon=True).start()
            producer = None
        if producer is None:
            producer = IngestProducer(ingest_producer_config(runtime))
            _producers[key] = producer
        return producer
