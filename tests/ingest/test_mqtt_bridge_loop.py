"""The MQTT bridge's hand-over from paho's network thread to its event loop, without a broker:
every message that arrives is handed to a device task, however the two threads interleave."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from config.env import load_runtime
from config.errors import RegistryUnavailable
from ingest import mqtt_bridge
from ingest.kafka import DeliveryOutcome
from ingest.mqtt_bridge import Bridge, Message
from ingest.services import KafkaUnacknowledged

TOPICS = [f"sluice/acme/sensors/m-{n}/records" for n in range(7)]


def message(mid: int) -> Any:
    return SimpleNamespace(mid=mid, dup=False, properties=None, topic=TOPICS[mid % len(TOPICS)], payload=b"{}")


def test_no_message_waits_for_a_wake_up_that_never_comes() -> None:
    runtime = load_runtime({"SLUICE_MQTT_BRIDGE_PASSWORD": "x"})
    total = 30_000
    # The threads switch as often as the interpreter allows, so they interleave at every line.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    async def scenario() -> int:
        bridge = Bridge(runtime, SimpleNamespace(limiter=SimpleNamespace(client=None)), None)  # type: ignore[arg-type]
        handed = 0

        async def device(topic: str) -> None:  # a device task that takes its batch at once
            nonlocal handed
            await asyncio.sleep(0)
            handed += len(bridge.pending.pop(topic, []))
            bridge.running.pop(topic, None)

        bridge._device = device  # type: ignore[method-assign]
        stop = asyncio.Event()
        runner = asyncio.create_task(bridge.run(stop))

        def deliver() -> None:  # paho's thread, in bursts with pauses, racing the loop's drains
            for mid in range(total):
                bridge._on_message(None, None, message(mid))
                if mid % 97 == 0:
                    time.sleep(0.0002)

        thread = threading.Thread(target=deliver)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 5
        while handed < total and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seen = handed  # before the stop, whose last drain would hide a lost wake-up
        stop.set()
        await runner
        return seen

    try:
        assert asyncio.run(scenario()) == total
    finally:
        sys.setswitchinterval(before)


# -- a device whose stream Kafka keeps refusing ------------------------------------------

STUCK, FINE = TOPICS[0], TOPICS[1]


def unacknowledged() -> KafkaUnacknowledged:
    """What the pipeline raises when Kafka did not acknowledge a batch's records."""
    return KafkaUnacknowledged("Kafka did not acknowledge 1 of 1 record(s). None was written.", topic="iot.t.eu.x",
                               outcome=DeliveryOutcome([None], [None], 0))  # fmt: skip


def bare_bridge() -> Bridge:
    async def make() -> Bridge:
        runtime = load_runtime({"SLUICE_MQTT_BRIDGE_PASSWORD": "x"})
        return Bridge(runtime, SimpleNamespace(limiter=SimpleNamespace(client=None)), None)  # type: ignore[arg-type]

    return asyncio.run(make())


def test_a_stream_is_spilled_only_when_kafka_takes_other_devices_records_meanwhile() -> None:
    bridge = bare_bridge()
    # a stream that never failed goes to its stream
    assert not bridge.spilling(STUCK, now=1000.0)
    # failing since t=0, tried last at t=29
    bridge.failing[STUCK] = (0.0, 29.0)
    # Kafka took nobody's records since: the fault is Kafka's, everyone waits, nothing spilled
    bridge.last_written = -1.0
    assert not bridge.spilling(STUCK, now=31.0)
    # Kafka took another device's records since the stream began failing
    bridge.last_written = 5.0
    assert not bridge.spilling(STUCK, now=mqtt_bridge.SPILL_AFTER - 1)  # not for long enough yet
    assert bridge.spilling(STUCK, now=mqtt_bridge.SPILL_AFTER + 1)
    # the stream is tried again once STREAM_RETRY has passed since its last try
    assert not bridge.spilling(STUCK, now=29.0 + mqtt_bridge.STREAM_RETRY + 1)
    # another device's stream is not touched by this one's failing
    assert not bridge.spilling(FINE, now=mqtt_bridge.SPILL_AFTER + 1)


def test_a_batch_held_by_its_failing_stream_goes_to_the_dlq_and_is_acknowledged(monkeypatch: Any) -> None:
    # given short bounds, a stream Kafka refuses (STUCK) and one it takes (FINE)
    monkeypatch.setattr(mqtt_bridge, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(mqtt_bridge, "RETRY_MAX", 0.02)
    monkeypatch.setattr(mqtt_bridge, "SPILL_AFTER", 0.2)
    bridge = bare_bridge()
    calls: list[tuple[str, bool]] = []
    acked: list[int] = []

    async def write(topic: str, batch: list[Any], *, spill: bool = False) -> None:
        calls.append((topic, spill))
        if topic == STUCK and not spill:
            raise unacknowledged()
        if not spill:  # as the real write does once Kafka took records for a stream
            bridge.last_written = time.monotonic()
            bridge.failing.pop(topic, None)

    bridge.write = write  # type: ignore[method-assign]
    bridge._ack = lambda batch: acked.extend(m.mid for m in batch)  # type: ignore[method-assign]

    async def scenario() -> None:
        stuck = asyncio.create_task(bridge._settle(STUCK, [Message(1, b"{}", 0.0)]))
        await asyncio.sleep(0.05)
        assert not stuck.done()  # held: retried, not acknowledged
        await bridge._settle(FINE, [Message(2, b"{}", 0.0)])  # Kafka takes another device's record
        await asyncio.wait_for(stuck, 5)

    # when both are settled
    asyncio.run(scenario())

    # then the stuck batch was tried on its stream, then went to the DLQ (spill), and only
    # then was acknowledged; the other device's batch went to its stream
    assert calls[0] == (STUCK, False)
    assert calls[-1] == (STUCK, True)
    assert (FINE, False) in calls
    assert sorted(acked) == [1, 2]


def test_when_kafka_refuses_every_stream_nothing_is_spilled(monkeypatch: Any) -> None:
    # given short bounds and Kafka refusing every stream
    monkeypatch.setattr(mqtt_bridge, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(mqtt_bridge, "RETRY_MAX", 0.02)
    monkeypatch.setattr(mqtt_bridge, "SPILL_AFTER", 0.05)
    bridge = bare_bridge()
    spills: list[str] = []

    async def write(topic: str, batch: list[Any], *, spill: bool = False) -> None:
        if spill:
            spills.append(topic)
            return
        raise unacknowledged()

    bridge.write = write  # type: ignore[method-assign]
    bridge._ack = lambda batch: None  # type: ignore[method-assign]

    async def scenario() -> None:
        tasks = [asyncio.create_task(bridge._settle(topic, [Message(n, b"{}", 0.0)])) for n, topic in enumerate(TOPICS)]
        await asyncio.sleep(0.5)  # ten times SPILL_AFTER
        assert not any(task.done() for task in tasks)  # every batch held, none acknowledged
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert spills == []


def test_a_device_the_registry_fails_is_held_not_spilled(monkeypatch: Any) -> None:
    # given short bounds, and the registry away for one device's subject (not Kafka: a spill
    # would not get past it, and would say the wrong reason) while another device is written
    monkeypatch.setattr(mqtt_bridge, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(mqtt_bridge, "RETRY_MAX", 0.02)
    monkeypatch.setattr(mqtt_bridge, "SPILL_AFTER", 0.05)
    bridge = bare_bridge()
    spills: list[str] = []

    async def write(topic: str, batch: list[Any], *, spill: bool = False) -> None:
        if spill:
            spills.append(topic)
        elif topic == STUCK:
            raise RegistryUnavailable("The schema registry did not answer.")
        else:
            bridge.last_written = time.monotonic()

    bridge.write = write  # type: ignore[method-assign]
    bridge._ack = lambda batch: None  # type: ignore[method-assign]

    async def scenario() -> None:
        stuck = asyncio.create_task(bridge._settle(STUCK, [Message(1, b"{}", 0.0)]))
        for n in range(20):
            await bridge._settle(FINE, [Message(100 + n, b"{}", 0.0)])
            await asyncio.sleep(0.02)
        assert not stuck.done()  # held, retried
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)

    asyncio.run(scenario())
    assert spills == []
    assert STUCK not in bridge.failing


def test_a_not_now_from_the_registry_or_the_database_holds_the_batch_instead_of_dead_lettering_it(
    monkeypatch: Any,
) -> None:
    from config.errors import DatabaseUnavailable
    from ingest import pipeline, services

    # given a device whose batch meets the registry away (a subject the bridge never read)
    bridge = bare_bridge()
    writer = SimpleNamespace(pk=1, topic="iot.acme.eu.x", schema_subject="iot.acme.eu.x-value")

    async def found(*_: Any) -> Any:
        return writer

    async def admitted(*_: Any, **__: Any) -> None:
        return None

    async def registry_away(*_: Any, **__: Any) -> Any:
        raise RegistryUnavailable("The schema registry is not reachable; try again shortly.")

    produced: list[Any] = []

    async def produce(_plane: Any, prepared: Any, **__: Any) -> None:
        produced.append(prepared)

    bridge.devices = SimpleNamespace(writer=found)  # type: ignore[assignment]
    monkeypatch.setattr(services, "bridge_verdict", lambda w, **_: w)
    monkeypatch.setattr(pipeline, "admit", admitted)
    monkeypatch.setattr(pipeline, "budget", lambda *_, **__: None)
    monkeypatch.setattr(pipeline, "prepare", registry_away)
    monkeypatch.setattr(pipeline, "produce", produce)

    # when it is written, then it raises (the batch waits, is retried, stays unacknowledged)
    # and nothing goes to Kafka, the DLQ included
    with pytest.raises(RegistryUnavailable):
        asyncio.run(bridge.write(STUCK, [Message(1, b'{"celsius": 1}', 0.0)]))
    assert produced == []

    # and the same when the database cannot say who the device is (it is not dropped)
    def database_away(*_: Any, **__: Any) -> Any:
        raise DatabaseUnavailable()

    monkeypatch.setattr(services, "bridge_verdict", database_away)
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(bridge.write(STUCK, [Message(2, b'{"celsius": 2}', 0.0)]))
    assert produced == []
