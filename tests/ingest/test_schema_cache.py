"""The data plane's schema cache while the registry comes and goes (pure logic: the registry
is a function here; tests/integration/test_supervised_faults.py kills the real one)."""

from __future__ import annotations

import asyncio
import json

import pytest
from confluent_kafka.schema_registry import Schema

from config.errors import Conflict, RegistryUnavailable
from devices.registry import LatestSchema, SchemaCache, _compile

SUBJECT = "iot.acme.eu.temperature-value"


def schema(schema_id: int) -> LatestSchema:
    return _compile(SUBJECT, schema_id, schema_id, Schema(json.dumps({"type": "object"}), "JSON"))


class Registry:
    """Answers with its current schema, or fails as an unreachable registry does; counts asks."""

    def __init__(self) -> None:
        self.current: LatestSchema | None = schema(1)
        self.away = False
        self.asked = 0

    def __call__(self, subject: str) -> LatestSchema:
        self.asked += 1
        if self.away:
            raise RegistryUnavailable("The schema registry is not reachable (connection refused); try again shortly.")
        if self.current is None:
            raise Conflict("No schema.", code="schema_not_found")
        return self.current


async def settle() -> None:
    """Let the background refresh (a thread) finish."""
    for _ in range(50):
        await asyncio.sleep(0.01)


def test_a_held_schema_keeps_validating_for_as_long_as_the_registry_is_away() -> None:
    async def scenario() -> None:
        # given a worker that read the subject's schema once, with a short freshness
        registry = Registry()
        cache = SchemaCache(registry, ttl=0.0, retry=60.0)
        assert (await cache.get(SUBJECT)).schema_id == 1
        # when the registry goes away
        registry.away = True
        # then every request still gets the schema it holds, without waiting
        for _ in range(100):
            assert (await cache.get(SUBJECT)).schema_id == 1
            await asyncio.sleep(0)
        await settle()
        # and the registry was asked again once, not once per request (next try in 60 s)
        assert registry.asked == 2
        # and a subject this worker never read is refused as "registry unavailable" (503)
        with pytest.raises(RegistryUnavailable) as refused:
            await cache.get("iot.acme.eu.humidity-value")
        assert refused.value.status == 503
        assert refused.value.retry_after == 5

    asyncio.run(scenario())


def test_a_new_version_applies_once_the_registry_is_back() -> None:
    async def scenario() -> None:
        # given a held schema, a registry that was away, and a retry due at once
        registry = Registry()
        cache = SchemaCache(registry, ttl=0.0, retry=0.0)
        await cache.get(SUBJECT)
        registry.away = True
        await cache.get(SUBJECT)
        await settle()
        # when it is back with a newer version
        registry.away = False
        registry.current = schema(2)
        await cache.get(SUBJECT)
        await settle()
        # then the next request uses it
        assert (await cache.get(SUBJECT)).schema_id == 2

    asyncio.run(scenario())


def test_a_subject_whose_schemas_were_deleted_is_not_served_from_memory() -> None:
    async def scenario() -> None:
        registry = Registry()
        cache = SchemaCache(registry, ttl=0.0)
        await cache.get(SUBJECT)
        # when the registry answers that the subject has no schema any more
        registry.current = None
        await cache.get(SUBJECT)
        await settle()
        # then the next request is refused as the registry says, not validated by the old one
        with pytest.raises(Conflict):
            await cache.get(SUBJECT)

    asyncio.run(scenario())
