"""``python -m ingest.mqtt_bridge``: MQTT devices' records to Kafka, through ingest's own path.

Mosquitto (``ingest.mqtt_auth`` deciding) lets a device publish only to its own records topic
``sluice/<tenant>/<group>/<device>/records``, one JSON record per message.  This process
subscribes, as the one bridge identity, to the shared subscription over all of them
(``$share/sluice-bridge/sluice/+/+/+/records``, QoS 1, a persistent MQTT 5 session on
Mosquitto's Unix-socket listener), and runs each device's messages, in batches, through
``ingest.pipeline`` -- the same rate limits, schema, validation, encoding and idempotent
producer (acks=all) as HTTPS ingest -- with dead letters on, since MQTT has no answer to
carry a 422:

* valid records go to the group's stream, invalid ones to the tenant's dead-letter topic
  with their reasons (``ingest.services`` DLQ headers);
* a batch over the device's or the tenant's rate goes to the dead-letter topic whole, code
  ``rate_limited``, and so does one no record of which could pass (the group's subject has no
  schema: ``schema_not_found``): held back, it would stall every other device behind it in
  Mosquitto's in-flight window; dropped, it would be lost;
* a device refused now (disabled, deleted, moved, its tenant suspended: ``services.
  bridge_verdict``) has its messages acknowledged and not written, logged with the code: its
  right ended, as HTTPS would answer 403;
* Kafka or the registry away (503): the batch is retried with a growing pause, never
  acknowledged before Kafka acknowledged it;
* but a device whose stream Kafka keeps refusing (its topic deleted, say) **while it takes
  other devices' records** has its batches go to the dead-letter topic, code
  ``stream_unavailable``, after ``SPILL_AFTER`` seconds (the stream is tried again every
  ``STREAM_RETRY`` seconds): held, its records would fill Mosquitto's in-flight window that
  every device waits behind.  When Kafka refuses everyone, nothing is spilled: everyone waits.

Each message is acknowledged to Mosquitto (PUBACK) only once Kafka acknowledged its record
(acks=all), so a bridge that dies keeps its messages in its session, and Mosquitto sends them
again when it is back.  What this does **not** change: Mosquitto acknowledges a device's
QoS 1 publish when it has received it, as every MQTT broker does; from then on the record
rests on Mosquitto (its persistence, written every ``PERSIST_SECONDS``) and on this session.
Delivery to Kafka is at least once: a bridge killed between Kafka's acknowledgement and its
PUBACK writes those records again.

A publisher that sends each record with an MQTT 5 user property ``sluice-idempotency-key``
(``sluice-agent --mqtt`` does) gets more: a record whose key the bridge wrote for the same device
in the last ``SLUICE_INGEST_IDEMPOTENCY_SECONDS`` (24 h) is acknowledged and not written again,
so a publisher's retry after a lost PUBACK or a cut connection never duplicates (``Seen``: one
Redis MGET per batch that carries keys, and the keys set once Kafka acknowledged).  And it is
told when its records are in Kafka: once Kafka acknowledged a batch, the bridge publishes to
the device's ``sluice/<tenant>/<group>/<device>/acks`` (QoS 1) what became of each key,
``{"written": [...], "dead_lettered": [...], "dropped": [...]}``; a resent key is answered
with its first outcome.  A publisher that keeps a record until its key is confirmed there
(``sluice-agent --mqtt``) is acknowledged only after acks=all, end to end, whatever happens
to Mosquitto or the bridge in between.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (ingest.mqtt_auth imports nothing of Django at import time: the launcher imports this module.)
from ingest.mqtt_auth import BRIDGE_SUBSCRIPTION, BRIDGE_USERNAME, device_acks_topic, records_topic_parts

log = logging.getLogger("sluice.mqtt.bridge")

# How many messages Mosquitto may have sent the bridge unacknowledged (MQTT 5 Receive Maximum,
# and Mosquitto's max_inflight_messages), and how many it keeps for the bridge's session
# while the bridge is away (then it drops the newest and logs it).
INFLIGHT = 1000
MAX_QUEUED = 1_000_000
PERSIST_SECONDS = 5  # Mosquitto's autosave_interval
# A message holds one record: ingest's size limit (ingest.records.MAX_BODY_BYTES; a test holds
# them equal: this module is imported by the launcher, before Django), plus room for the topic
# and properties.
MAX_RECORD_BYTES = 2**20
MAX_PACKET_BYTES = MAX_RECORD_BYTES + 8192
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
# A device's stream failing this long while other devices' records are written: its batches go
# to the DLQ (``stream_unavailable``), and its stream is tried again every STREAM_RETRY seconds.
SPILL_AFTER, STREAM_RETRY = 30.0, 30.0
STREAM_UNAVAILABLE = "stream_unavailable"
DRAIN_SECONDS = 15.0  # on SIGTERM, how long batches in progress may take to finish
CLIENT_ID = "sluice-bridge"


def ready_file(runtime: Any, number: int = 0) -> Path:
    """Written once the bridge's subscription is granted (the launcher's readiness check)."""
    return Path(runtime.platform_run_dir) / ("mqtt-bridge.ready" if not number else f"mqtt-bridge-{number}.ready")


def client_id(number: int = 0) -> str:
    """``sluice-bridge``, or ``sluice-bridge-<n>`` for another member of the shared subscription."""
    return CLIENT_ID if not number else f"{CLIENT_ID}-{number}"


# The MQTT 5 user property that names a record for deduplication, and what a key may be.
IDEMPOTENCY_PROPERTY = "sluice-idempotency-key"
_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(slots=True)
class Message:
    mid: int
    payload: bytes
    received_at: float
    key: str | None = None


def message_key(properties: Any) -> str | None:
    """The record's idempotency key (its MQTT 5 user property), if it carries a well-formed one."""
    for name, value in getattr(properties, "UserProperty", None) or ():
        if name == IDEMPOTENCY_PROPERTY and _KEY.match(value):
            return str(value)
    return None


# What became of a keyed record, as the bridge tells its device on its acks topic.
WRITTEN, DEAD_LETTERED, DROPPED = "written", "dead_lettered", "dropped"
_OUTCOMES = {WRITTEN.encode(): WRITTEN, DEAD_LETTERED.encode(): DEAD_LETTERED}


class Seen:
    """The idempotency keys the bridge wrote, per device, for ``window`` seconds (Redis, beside
    the rate limiter's data)."""

    def __init__(self, client: Any, window: int) -> None:
        self.client = client  # () -> redis.asyncio.Redis
        self.window = window

    @staticmethod
    def _name(device_pk: int, key: str) -> str:
        return f"sluice:mqtt-seen:{device_pk}:{key}"

    async def unseen(self, device_pk: int, batch: list[Message]) -> tuple[list[Message], dict[str, str]]:
        """``batch`` without the records whose key was written already (or comes twice in it),
        and what became of each key left out (``WRITTEN`` or ``DEAD_LETTERED``)."""
        keys = [message.key for message in batch if message.key is not None]
        if not keys:
            return batch, {}
        found = await self.client().mget([self._name(device_pk, key) for key in keys])
        before = {key: _OUTCOMES.get(value, WRITTEN) for key, value in zip(keys, found, strict=True) if value}
        fresh: list[Message] = []
        taken: set[str] = set()
        replayed: dict[str, str] = {}
        for message in batch:
            key = message.key
            if key is not None:
                if key in before:
                    replayed[key] = before[key]
                    continue
                if key in taken:
                    continue  # the same key twice in one batch: the second copy of a resend
                taken.add(key)
            fresh.append(message)
        return fresh, replayed

    async def remember(self, device_pk: int, outcomes: dict[str, str]) -> None:
        """Keep what became of each key (after Kafka acknowledged it) for the window."""
        if not outcomes:
            return
        try:
            async with self.client().pipeline(transaction=False) as pipe:
                for key, outcome in outcomes.items():
                    pipe.set(self._name(device_pk, key), outcome.encode(), ex=self.window)
                await pipe.execute()
        except Exception:
            # Written and acknowledged by Kafka: never retried for this (a retry would write it
            # again); a publisher's own retry of these keys may then duplicate them.
            log.warning("mqtt bridge: could not remember %d idempotency key(s)", len(outcomes), exc_info=True)


class Devices:
    """The writer each records topic names, read from the database and kept until a pushed
    change of rights touches it (the channel ingest's workers follow) or ``IDENTITY_TTL``
    passes; losing the channel forgets them all."""

    def __init__(self) -> None:
        from ingest.identity import IDENTITY_TTL, IdentityCache

        self.ttl = IDENTITY_TTL
        self.entries: dict[str, tuple[float, Any]] = {}
        devices = self

        class _Cache(IdentityCache):
            def apply(self, change: Any) -> int:
                from ingest.identity import change_scopes

                touched = set(change_scopes(change))
                for topic, (_, writer) in list(devices.entries.items()):
                    if writer is None or touched & set(writer.scopes()):
                        devices.entries.pop(topic, None)
                return super().apply(change)

            def set_live(self, live: bool) -> None:
                if not live:
                    devices.entries.clear()
                super().set_live(live)

        self.cache = _Cache()

    async def writer(self, topic: str, tenant: str, device: str) -> Any:
        """The device's Writer, or None (no such device)."""
        from ingest import identity

        cache = self.cache
        now = time.monotonic()
        found = self.entries.get(topic) if cache.live else None
        if found is not None and now - found[0] < self.ttl:
            return found[1]

        # IdentityCache's rule: keep what was read only while the push channel is live and no
        # change arrived during the read (it may have been read before that change committed).
        generation = cache.generation
        writer = await identity.read(lambda: identity.load_device(tenant_slug=tenant, device_id=device))
        if cache.live and generation == cache.generation:
            self.entries[topic] = (now, writer)
        return writer


class Bridge:
    """The MQTT session (paho, on its own network thread) and the batches (on the event loop)."""

    def __init__(self, runtime: Any, plane: Any, devices: Devices, *, client_id: str = CLIENT_ID) -> None:
        """``plane``: an ``ingest.app.Worker`` (rate limiter, schemas, producer, and the
        outcomes it flushes every second: counters, the devices' last sighting, metrics)."""
        self.runtime = runtime
        self.plane = plane
        self.devices = devices
        self.seen = Seen(lambda: plane.limiter.client, runtime.ingest.idempotency_seconds)
        self.client_id = client_id
        self.loop = asyncio.get_running_loop()
        self.inbox: collections.deque[tuple[str, Message]] = collections.deque()
        self.wake = asyncio.Event()
        self.wake_pending = False  # paho's thread asked for a wake-up the loop has not taken yet
        self.pending: dict[str, list[Message]] = {}
        self.running: dict[str, asyncio.Task[None]] = {}
        # Message ids received and not yet acknowledged: Mosquitto sends them again (DUP) after
        # a reconnection, and the copy must not be written a second time.
        self.unacked: set[int] = set()
        # Topics whose stream Kafka refused: (since, last stream try), monotonic; and when
        # Kafka last took any device's records for a stream.
        self.failing: dict[str, tuple[float, float]] = {}
        self.last_written = 0.0
        self.lock = threading.Lock()
        self.subscribed = asyncio.Event()
        self.failed: str | None = None
        self.client = self._client()

    # -- MQTT (paho's thread) --------------------------------------------------------------

    def _client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             transport="unix", manual_ack=True)  # fmt: skip
        client.username_pw_set(BRIDGE_USERNAME, self.runtime.mqtt_bridge_password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def connect(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0xFFFFFFFF  # the session outlives any absence
        properties.ReceiveMaximum = INFLIGHT
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        # paho refuses port 0 even for a Unix socket, where the port means nothing.
        self.client.connect(str(self.runtime.mqtt_bridge_socket), port=1, keepalive=30, clean_start=False,
                            properties=properties)  # fmt: skip
        self.client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        if reason.is_failure:
            self.failed = f"Mosquitto refused the bridge's connection: {reason}"
            log.error("mqtt bridge: %s", self.failed)
            self.loop.call_soon_threadsafe(self.subscribed.set)
            return
        log.info("mqtt bridge: connected; subscribing")
        client.subscribe(BRIDGE_SUBSCRIPTION, qos=1)

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, reasons: list[Any], _properties: Any) -> None:
        failed = [str(reason) for reason in reasons if reason.is_failure]
        if failed:
            self.failed = f"Mosquitto refused the bridge's subscription: {', '.join(failed)}"
            log.error("mqtt bridge: %s", self.failed)
        self.loop.call_soon_threadsafe(self.subscribed.set)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        log.warning("mqtt bridge: disconnected from Mosquitto (%s); reconnecting", reason)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        key = message_key(message.properties) if message.properties is not None else None
        with self.lock:
            if message.dup and message.mid in self.unacked:
                return  # the copy of one in hand: its acknowledgement answers both
            self.unacked.add(message.mid)
            self.inbox.append((message.topic, Message(message.mid, message.payload, time.time(), key)))
            # One wake-up per drain: set here, cleared by the loop (under the lock) before it
            # drains, so a message added at any moment is either drained by the drain under way
            # or wakes the next one.  (Deciding by "was the inbox empty" lost wake-ups: a
            # message added while the loop emptied the inbox waited for ever.)
            wake = not self.wake_pending
            self.wake_pending = True
        if wake:
            self.loop.call_soon_threadsafe(self.wake.set)

    def _ack(self, messages: list[Message]) -> None:
        with self.lock:
            for message in messages:
                self.unacked.discard(message.mid)
        for message in messages:
            self.client.ack(message.mid, 1)

    # -- batches (the event loop) ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Hand what arrives to one task per device topic (a device's batches stay in order)
        until ``stop``; then let the batches in progress finish."""
        while not stop.is_set():
            waiter = asyncio.ensure_future(self.wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            self.wake.clear()
            with self.lock:
                self.wake_pending = False
            while self.inbox:
                topic, message = self.inbox.popleft()
                self.pending.setdefault(topic, []).append(message)
                if topic not in self.running:
                    self.running[topic] = asyncio.create_task(self._device(topic), name=f"bridge {topic}")
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=DRAIN_SECONDS)

    async def _device(self, topic: str) -> None:
        from ingest import records

        try:
            while batch := self.pending.pop(topic, None):
                head, rest = batch[: records.MAX_RECORDS], batch[records.MAX_RECORDS :]
                if rest:
                    self.pending[topic] = rest
                await self._settle(topic, head)
        finally:
            self.running.pop(topic, None)

    async def _settle(self, topic: str, batch: list[Message]) -> None:
        """Write one device's batch, retrying what may succeed later; then acknowledge it."""
        from config.errors import SluiceError

        delay = RETRY_FIRST
        while True:
            spill = self.spilling(topic)
            try:
                await self.write(topic, batch, spill=spill)
            except (SluiceError, OSError) as exc:  # a 503 (``later``): Kafka, the registry, Redis, the database
                self._failed(topic, spill, exc)
                log.warning("mqtt bridge: %d record(s) of %s not written yet (%s); retrying in %.1f s",
                            len(batch), topic, exc, delay)  # fmt: skip
            except Exception:
                log.exception("mqtt bridge: %d record(s) of %s not written; retrying in %.1f s", len(batch), topic,
                              delay)  # fmt: skip
            else:
                self._ack(batch)
                return
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    def spilling(self, topic: str, now: float | None = None) -> bool:
        """Whether ``topic``'s next batch goes to the DLQ instead of its stream: the stream has
        failed for ``SPILL_AFTER`` seconds, Kafka took other devices' records since it began
        failing (so the fault is this stream's, not Kafka's), and it was tried less than
        ``STREAM_RETRY`` seconds ago."""
        entry = self.failing.get(topic)
        if entry is None:
            return False
        since, tried = entry
        now = time.monotonic() if now is None else now
        return self.last_written > since and now - since >= SPILL_AFTER and now - tried < STREAM_RETRY

    def _failed(self, topic: str, spill: bool, error: Exception) -> None:
        """A batch of ``topic`` was not written: note when Kafka began to refuse it (not the
        registry or Redis, which a spill would not get past either; a failed spill says Kafka
        refuses more than this stream, and changes nothing)."""
        from ingest.services import KafkaUnacknowledged

        if spill or not isinstance(error, KafkaUnacknowledged):
            return
        now = time.monotonic()
        since = self.failing.get(topic, (now, now))[0]
        self.failing[topic] = (since, now)

    async def write(self, topic: str, batch: list[Message], *, spill: bool = False) -> Any:
        """One device's messages through ingest's path; returns its outcome (None: not written).
        ``spill``: every record to the DLQ, its stream being unavailable (``spilling``)."""
        from config.errors import RateLimited, SluiceError
        from ingest import pipeline, records, services

        parts = records_topic_parts(topic)
        if parts is None:  # mqtt_auth lets nothing else through
            log.error("mqtt bridge: %d message(s) on %r, not a records topic; dropped", len(batch), topic)
            return None
        tenant, group, device = parts
        request_id = "mqtt-" + uuid.uuid4().hex
        told: dict[str, str] = {}  # key -> what became of its record, for the device's acks topic
        try:
            writer = services.bridge_verdict(await self.devices.writer(topic, tenant, device), tenant=tenant,
                                             group=group, device=device)  # fmt: skip
        except SluiceError as error:
            if later(error):
                raise  # the database away: the batch waits, and the device is judged again
            self._log(error.code, DROPPED, len(batch), request_id, tenant, group, device)
            self._confirm(parts, _keyed(batch, DROPPED))
            return None
        fits = [message for message in batch if len(message.payload) <= MAX_RECORD_BYTES]
        if len(fits) < len(batch):
            self._log("record_too_large", DROPPED, len(batch) - len(fits), request_id, tenant, group, device)
            told.update(_keyed([m for m in batch if len(m.payload) > MAX_RECORD_BYTES], DROPPED))
        fresh, replayed = await self.seen.unseen(writer.pk, fits)
        if len(fresh) < len(fits):
            self._log("idempotency_replayed", "replayed", len(fits) - len(fresh), request_id, tenant, group, device)
        told.update(replayed)
        fits = fresh
        if not fits:
            self._confirm(parts, told)
            return None
        raws = [message.payload for message in fits]
        received_at = fits[0].received_at
        parsed = records.parse_each(raws, keep_malformed=True)
        refused: SluiceError | None = self._stream_unavailable(topic, writer.topic) if spill else None
        if refused is None:
            try:
                await pipeline.admit(self.plane, pipeline.budget(writer, parsed, sum(map(len, raws))))
                prepared = await pipeline.prepare(self.plane, writer, parsed, request_id=request_id,
                                                  options=pipeline.DEAD_LETTERS, received_at=received_at)  # fmt: skip
            except SluiceError as error:
                if later(error):
                    raise  # Redis, the registry (a subject it never read): the batch waits, tried again
                # Over the rate, or nothing this batch could ever pass (the group's subject has
                # no schema): kept in the DLQ.  Held back, it would hold Mosquitto's in-flight
                # window, which every other device's records wait behind.
                refused = error
        if refused is not None:
            message = (f"Over the {refused.scope}'s rate limit; kept here, not in the stream."
                       if isinstance(refused, RateLimited) else refused.message)  # fmt: skip
            prepared = services.records_dead(
                writer=writer, parsed=parsed, schema=await self._schema_or_none(writer), request_id=request_id,
                received_at=received_at, code=refused.code, message=message,
            )  # fmt: skip
        produced_at = time.perf_counter()
        outcome = await pipeline.produce(self.plane, prepared)
        if prepared.outgoing.values:  # Kafka took records for a stream: it is not Kafka that fails
            self.last_written = time.monotonic()
            self.failing.pop(topic, None)
        dead = prepared.dead.errors if prepared.dead is not None else {}
        outcomes = {m.key: DEAD_LETTERED if i in dead else WRITTEN for i, m in enumerate(fits) if m.key is not None}
        await self.seen.remember(writer.pk, outcomes)
        self._written(writer, prepared, raws, time.perf_counter() - produced_at)
        if dead:
            codes = collections.Counter(error["code"] for error in dead.values())
            for code, count in codes.items():
                self._log(code, DEAD_LETTERED, count, request_id, tenant, group, device)
        self._confirm(parts, {**told, **outcomes})
        return outcome

    def _stream_unavailable(self, topic: str, stream_topic: str) -> Any:
        from config.errors import SluiceError

        since = self.failing.get(topic, (time.monotonic(), 0.0))[0]
        return SluiceError(f"Kafka has not acknowledged this device's records for its stream's topic {stream_topic} "
                           f"for {time.monotonic() - since:.0f} s while it took other devices' records; kept here, "
                           "not in the stream.",
                           code=STREAM_UNAVAILABLE)  # fmt: skip

    def _confirm(self, parts: tuple[str, str, str], told: dict[str, str]) -> None:
        """Tell the device, on its acks topic, what became of its keyed records, once Kafka
        acknowledged them (QoS 1; a device that is away misses it, sends again, and is told
        then: the keys make the resend harmless)."""
        if not told:
            return
        payload: dict[str, list[str]] = {WRITTEN: [], DEAD_LETTERED: [], DROPPED: []}
        for key, outcome in told.items():
            payload[outcome].append(key)
        self.client.publish(device_acks_topic(*parts), json.dumps(payload, separators=(",", ":")), qos=1)

    async def _schema_or_none(self, writer: Any) -> Any:
        from config.errors import ServiceUnavailable, SluiceError

        try:
            return await self.plane.schemas.get(writer.schema_subject)
        except ServiceUnavailable:
            raise
        except SluiceError:
            return None

    def _written(self, writer: Any, prepared: Any, raws: list[bytes], delivery_seconds: float) -> None:
        """Count what Kafka acknowledged, as an HTTPS worker counts its requests (records and
        bytes per stream, the device's last sighting, the dead letters by code), flushed every
        second by the worker; nothing per record."""
        from config import instruments

        indexes = prepared.outgoing.indexes
        written = len(prepared.outgoing.values)
        if written:
            size = sum(len(raws[i]) for i in indexes) if indexes is not None else sum(map(len, raws))
            self.plane.outcomes.accepted(written, writer.pk, writer.tenant_slug, writer.topic, size, delivery_seconds)
            instruments.MQTT_BRIDGE_RECORDS.labels(tenant=writer.tenant_slug, outcome="written").inc(written)
        if prepared.dead is not None and prepared.dead.errors:
            self.plane.outcomes.dead_lettered(writer.tenant_slug, (e["code"] for e in prepared.dead.errors.values()))

    @staticmethod
    def _log(code: str, outcome: str, count: int, request_id: str, tenant: str, group: str, device: str) -> None:
        """One JSON line (config.logs), as HTTPS ingest logs a refusal: never the payload; and
        the bridge's count of that outcome."""
        from config import instruments

        log.info("mqtt bridge: %d record(s) %s (%s)", count, outcome, code,
                 extra={"request_id": request_id, "outcome": outcome, "code": code, "records": count,
                        "tenant": tenant, "group": group, "device": device})  # fmt: skip
        instruments.MQTT_BRIDGE_RECORDS.labels(tenant=tenant, outcome=outcome).inc(count)

    def close(self) -> None:
        """Leave the session (Mosquitto keeps it, and what is unacknowledged, for next time)."""
        self.client.disconnect()
        self.client.loop_stop()


def later(error: Any) -> bool:
    """Whether a refusal says "not now" (503: Kafka, the registry, Redis or the database away),
    so that the batch waits and is tried again, rather than "not like this"."""
    return bool(error.status == 503)


def _keyed(batch: list[Message], outcome: str) -> dict[str, str]:
    return {message.key: outcome for message in batch if message.key is not None}


async def serve(number: int = 0) -> int:
    from django.conf import settings

    from ingest.app import Worker

    runtime = settings.SLUICE_RUNTIME
    devices = Devices()
    worker = Worker(cache=devices.cache, transport="mqtt")  # it follows the rights channel into ``devices``
    bridge = Bridge(runtime, worker, devices, client_id=client_id(number))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ready = ready_file(runtime, number)
    try:
        await asyncio.to_thread(bridge.connect)
        await bridge.subscribed.wait()
        if bridge.failed:
            log.error("mqtt bridge: %s", bridge.failed)
            return 1
        ready.write_text(f"{os.getpid()}\n")
        log.warning("mqtt bridge: subscribed on %s", runtime.mqtt_bridge_socket)
        await bridge.run(stop)
    finally:
        ready.unlink(missing_ok=True)
        bridge.close()
        await worker.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ingest.mqtt_bridge")
    parser.add_argument("--number", type=int, default=0, choices=range(10000), metavar="N",
                        help="another member of the shared subscription (client id sluice-bridge-N)")  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    raise SystemExit(asyncio.run(serve(args.number)))


if __name__ == "__main__":
    main()
