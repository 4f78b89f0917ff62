"""The MQTT bridge's hand-over from paho's network thread to its event loop, without a broker:
every message that arrives is handed to a device task, however the two threads interleave."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

from config.env import load_runtime
from ingest.mqtt_bridge import Bridge

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
