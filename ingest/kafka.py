"""The one place that builds Kafka client configurations and clients.

Every client of the platform itself authenticates on the mTLS listener with the platform
admin certificate (``User:sluice-admin``, a super user).  Tenant credentials are built by
``client_config`` from PEM strings.  librdkafka verifies the broker's certificate and host
name by default (``ssl.endpoint.identification.algorithm=https``).

Ingest produces through one idempotent producer per process (``ingest_producer``), created
at first use so a forked worker never inherits another process's librdkafka threads.  A
background thread serves its delivery callbacks, so each request waits for the reports of
its own records only (``IngestProducer.produce_and_wait``), never for a global flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from certs.platform_pki import PlatformPki
from config.env import Runtime

_quiet = logging.getLogger("sluice.kafka.librdkafka")
_admin_lock = threading.Lock()
_admin: dict[str, AdminClient] = {}

# librdkafka gives up on a record after this long (message.timeout.ms, alias
# delivery.timeout.ms) and reports it failed; a request waits a little longer than that, so
# every record it produced has its final report by the time it answers.
DELIVERY_TIMEOUT_MS = 10_000
DELIVERY_WAIT_SECONDS = DELIVERY_TIMEOUT_MS / 1000 + 5


def admin_config(runtime: Runtime) -> dict[str, Any]:
    """librdkafka settings for the platform admin principal."""
    pki = PlatformPki(runtime.pki_dir)
    return {
        "bootstrap.servers": runtime.kafka_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.trust_bundle),
        "ssl.certificate.location": str(pki.cert("admin")),
        "ssl.key.location": str(pki.key("admin")),
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


def admin_client(runtime: Runtime) -> AdminClient:
    """A process-wide AdminClient, created lazily (so never shared across a fork)."""
    key = str(runtime.state_dir)
    with _admin_lock:
        client = _admin.get(key)
        if client is None:
            client = AdminClient(admin_config(runtime))
            _admin[key] = client
        return client


def kafka_cluster_check(runtime: Runtime, timeout: float = 3.0) -> str | None:
    """None when the cluster answers a metadata request for the admin principal."""
    try:
        metadata = AdminClient(admin_config(runtime)).list_topics(timeout=timeout)
    except KafkaException as exc:
        return str(exc.args[0]) if exc.args else "Kafka did not answer"
    if not metadata.brokers:
        return "no brokers in metadata"
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


@dataclass(frozen=True)
class OutgoingRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Delivered:
    partition: int
    offset: int


@dataclass(frozen=True)
class DeliveryOutcome:
    """What Kafka said about each record of one request, in order (None: no report yet)."""

    delivered: list[Delivered | None]
    errors: list[KafkaError | None]
    queued: int  # how many of the records reached the producer's queue at all

    @property
    def complete(self) -> bool:
        return all(d is not None for d in self.delivered)


class _Waiter:
    """Collects the delivery reports of one request's records; callbacks run on the poll thread.

    ``notify`` is called once, on the poll thread or the producing thread, when every queued
    record has its report and ``seal`` was called: it wakes the request's event loop."""

    def __init__(self, count: int, notify: Callable[[], None]) -> None:
        self.delivered: list[Delivered | None] = [None] * count
        self.errors: list[KafkaError | None] = [None] * count
        self.pending = 0
        self._sealed = False
        self._notify: Callable[[], None] | None = notify
        self._done = threading.Lock()

    def expect(self) -> None:
        with self._done:
            self.pending += 1

    def seal(self) -> None:
        """No more records will be produced for this request."""
        with self._done:
            self._sealed = True
            self._maybe_notify()

    def _maybe_notify(self) -> None:
        if self._sealed and self.pending <= 0 and self._notify is not None:
            notify, self._notify = self._notify, None
            notify()

    def callback(self, index: int) -> Any:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            with self._done:
                if error is None:
                    self.delivered[index] = Delivered(partition=message.partition(), offset=message.offset())
                else:
                    self.errors[index] = error
                self.pending -= 1
                self._maybe_notify()

        return on_delivery


class IngestProducer:
    """One librdkafka producer and the thread that serves its delivery callbacks."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self._stopped = threading.Event()
        self.broken = False
        self._thread = threading.Thread(target=self._serve_callbacks, name="sluice-ingest-producer", daemon=True)
        self._thread.start()

    def _serve_callbacks(self) -> None:
        while not self._stopped.is_set():
            try:
                self._producer.poll(0.1)
            except KafkaException as exc:
                # librdkafka raises a fatal error (e.g. a fenced idempotent producer) from
                # poll(); the producer cannot continue, and a dead poll thread would leave
                # every later request waiting out its deadline.  Mark it for replacement.
                _quiet.error("ingest producer: %s; it will be replaced", exc)
                self.broken = True
                return
            except Exception:  # noqa: BLE001 — a delivery callback failed: never let the thread die silently
                _quiet.exception("ingest producer: delivery-report thread failed; it will be replaced")
                self.broken = True
                return

    @property
    def usable(self) -> bool:
        return not self.broken and self._thread.is_alive()

    async def produce_and_wait_async(
        self, topic: str, records: Sequence[OutgoingRecord], *, timeout: float = DELIVERY_WAIT_SECONDS
    ) -> DeliveryOutcome:
        """Produce ``records`` to ``topic`` and wait (at most ``timeout`` s) for Kafka's
        report on each.  Never raises for Kafka's sake: the outcome says what happened.  The
        wait is an ``await``, so one web worker has many requests in flight (their records
        share librdkafka's batches) instead of blocking a thread per request."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            # Runs on the poll thread: it must never raise there (that thread would stop).
            with contextlib.suppress(RuntimeError):  # the loop is gone (worker shutting down)
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        waiter = _Waiter(len(records), notify=wake)
        deadline = time.monotonic() + timeout
        queued = 0
        for index, record in enumerate(records):
            try:
                while not self._try_produce(topic, record, waiter, index):
                    # The local queue is full: the poll thread drains it; wait a moment,
                    # within this request's deadline, rather than refusing at once.
                    if time.monotonic() + 0.05 >= deadline:
                        raise BufferError("the producer's local queue stayed full")
                    await asyncio.sleep(0.05)
            except (BufferError, KafkaException) as exc:
                _quiet.warning("ingest: record %d of %d to %s not queued: %s", index, len(records), topic, exc)
                self._note_fatal(exc)
                break
            queued += 1
        waiter.seal()
        with contextlib.suppress(TimeoutError):  # the outcome says which reports are missing
            await asyncio.wait_for(done, max(0.0, deadline - time.monotonic()))
        return self._outcome(waiter, queued)

    def _outcome(self, waiter: _Waiter, queued: int) -> DeliveryOutcome:
        for error in waiter.errors:
            if error is not None and error.fatal():
                # A fatal idempotence error leaves this producer unusable; the next request
                # builds a new one (a new producer id), see ingest_producer.
                self.broken = True
        return DeliveryOutcome(delivered=list(waiter.delivered), errors=list(waiter.errors), queued=queued)

    def _try_produce(self, topic: str, record: OutgoingRecord, waiter: _Waiter, index: int) -> bool:
        """Hand one record to librdkafka; False when its local queue is full."""
        try:
            self._producer.produce(topic, key=record.key, value=record.value, headers=record.headers,
                                   on_delivery=waiter.callback(index))  # fmt: skip
        except BufferError:
            return False
        # Counted after produce() returned: the report can only come later, and if the
        # poll thread is faster, the count dips below zero for a moment and ends right.
        waiter.expect()
        return True

    def _note_fatal(self, exc: Exception) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is not None and error.fatal():
            self.broken = True

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._stopped.set()


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
