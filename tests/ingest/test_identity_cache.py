"""ingest.identity's cache: pure logic (what is kept, what a change drops, what is never
served), and the listener that keeps it honest against the run's real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from config.env import Runtime
from ingest.identity import (
    STALE_GRACE,
    CertificateGrant,
    ClientGrant,
    Identity,
    IdentityCache,
    Writer,
    certificate_key,
    client_key,
)
from ingest.rights_listener import CLIENT_NAME, listen
from tenants.rights import CHANNEL, RightsChange


def writer(*, pk: int = 7, tenant: int = 1, group: int = 3) -> Writer:
    return Writer(pk=pk, device_id=f"d-{pk}", status="active", tenant_id=tenant, tenant_slug="acme",
                  tenant_status="active", tenant_max_records_per_second=10, tenant_max_bytes_per_second=10,
                  group_id=group, group_slug="g", group_tenant_id=tenant, credential_policy="mtls",
                  rate_limit_per_second=1, schema_subject="s", stream_tenant_id=tenant,
                  topic="iot.acme.eu.t")  # fmt: skip


def certificate(serial: str = "ab", *, device: int = 7, tenant: int = 1) -> Identity:
    grant = CertificateGrant(serial=serial, status="active", revoked_at=None, overlap_until=None,
                             not_after=time.time() + 3600, tenant_id=tenant, device_pk=device,
                             issuer="CN=x")  # fmt: skip
    return Identity(grant, writer(pk=device, tenant=tenant))


def client(client_id: str = "sc_1", *, device: int = 8) -> Identity:
    grant = ClientGrant(client_id=client_id, status="active", kind="device", scopes=frozenset({"ingest:write"}),
                        tenant_id=1, tenant_slug="acme", device_pk=device)  # fmt: skip
    return Identity(grant, writer(pk=device))


def live_cache(**kwargs: float) -> IdentityCache:
    cache = IdentityCache(**kwargs)  # type: ignore[arg-type]
    cache.set_live(True)
    return cache


def test_a_change_drops_exactly_the_entries_in_its_scopes() -> None:
    cache = live_cache()
    cache.put(certificate_key("a1"), certificate("a1", device=1), read_at_generation=cache.generation)
    cache.put(certificate_key("a2"), certificate("a2", device=2), read_at_generation=cache.generation)
    cache.put(client_key("sc_1"), client("sc_1", device=1), read_at_generation=cache.generation)
    cache.put(certificate_key("b1"), certificate("b1", device=9, tenant=2), read_at_generation=cache.generation)

    assert cache.apply(RightsChange(tenant_id=1, certificates=frozenset({"a2"}))) == 1
    assert cache.get(certificate_key("a2")) is None
    assert cache.get(certificate_key("a1")) is not None

    # a device change drops its certificate and its OAuth client, nothing else
    assert cache.apply(RightsChange(tenant_id=1, devices=frozenset({1}))) == 2
    assert cache.get(client_key("sc_1")) is None
    # a whole tenant drops all of that tenant and nothing of another
    cache.put(certificate_key("a1"), certificate("a1", device=1), read_at_generation=cache.generation)
    assert cache.apply(RightsChange(tenant_id=1, whole_tenant=True)) == 1
    assert cache.get(certificate_key("b1")) is not None
    # a group change drops the group's devices
    assert cache.apply(RightsChange(tenant_id=2, groups=frozenset({3}))) == 1
    assert len(cache) == 0


def test_a_read_that_raced_with_a_change_is_not_kept() -> None:
    cache = live_cache()
    before = cache.generation
    # a change arrives while a loader is reading the database
    cache.apply(RightsChange(tenant_id=1, certificates=frozenset({"zz"})))
    cache.put(certificate_key("a1"), certificate("a1"), read_at_generation=before)
    assert cache.get(certificate_key("a1")) is None


def test_nothing_is_served_or_kept_while_not_subscribed() -> None:
    cache = live_cache()
    cache.put(certificate_key("a1"), certificate("a1"), read_at_generation=cache.generation)
    cache.set_live(False)
    assert cache.get(certificate_key("a1")) is None
    cache.put(certificate_key("a1"), certificate("a1"), read_at_generation=cache.generation)
    assert len(cache) == 0
    # and subscribing again starts empty
    cache.set_live(True)
    assert cache.get(certificate_key("a1")) is None


def test_entries_expire_and_the_cache_is_bounded() -> None:
    cache = live_cache(ttl=0.05, max_entries=3)
    cache.put(certificate_key("a1"), certificate("a1"), read_at_generation=cache.generation)
    assert cache.get(certificate_key("a1")) is not None
    time.sleep(0.06)
    assert cache.get(certificate_key("a1")) is None
    for i in range(4):
        cache.put(certificate_key(f"s{i}"), certificate(f"s{i}"), read_at_generation=cache.generation)
    assert len(cache) <= 3
    # an unknown credential is remembered as unknown (and dropped by its own scope)
    cache.put(certificate_key("nobody"), None, read_at_generation=cache.generation)
    entry = cache.get(certificate_key("nobody"))
    assert entry is not None
    assert entry.identity is None
    cache.apply(RightsChange(tenant_id=1, certificates=frozenset({"nobody"})))
    assert cache.get(certificate_key("nobody")) is None


def test_an_expired_entry_answers_only_while_the_database_is_away_and_never_after_a_change() -> None:
    # given two entries whose TTL ran out
    cache = live_cache(ttl=0.01)
    cache.put(certificate_key("a1"), certificate("a1"), read_at_generation=cache.generation)
    cache.put(certificate_key("a2"), certificate("a2", device=9), read_at_generation=cache.generation)
    time.sleep(0.02)
    assert cache.get(certificate_key("a1")) is None  # a normal read goes to the database
    # then, with the database away, they still answer within the grace
    assert cache.stale(certificate_key("a1")) is not None
    assert cache.stale(certificate_key("a1"), now=time.monotonic() + STALE_GRACE) is None
    # when a change drops one, it is gone for the fallback too
    cache.apply(RightsChange(tenant_id=1, devices=frozenset({9})))
    assert cache.stale(certificate_key("a2")) is None
    # and losing the subscription drops every fallback (fail closed)
    cache.set_live(False)
    assert cache.stale(certificate_key("a1")) is None


# -- the listener, against the real Redis --------------------------------------------------


@pytest.mark.integration
def test_the_listener_applies_changes_and_fails_closed_when_its_connection_dies(services: Runtime) -> None:
    async def scenario() -> None:
        cache = IdentityCache()
        task = asyncio.get_running_loop().create_task(listen(cache, services.redis_url()))
        try:
            await _until(lambda: cache.live)
            cache.put(certificate_key("a1"), certificate("a1"), read_at_generation=cache.generation)
            cache.put(certificate_key("a2"), certificate("a2", device=2), read_at_generation=cache.generation)
            # when a change is published, it is applied within moments
            admin = redis.Redis.from_url(services.redis_url())
            admin.publish(CHANNEL, RightsChange(tenant_id=1, certificates=frozenset({"a1"})).to_message())
            await _until(lambda: cache.get(certificate_key("a1")) is None)
            assert cache.get(certificate_key("a2")) is not None
            # when the subscription's connection is killed, the cache stops serving at once
            # and comes back empty once it has subscribed again
            assert cut_rights_subscriptions(admin) >= 1
            await _until(lambda: cache.get(certificate_key("a2")) is None)
            await _until(lambda: cache.live)
            assert len(cache) == 0
            # an unreadable message empties the cache rather than being ignored
            cache.put(certificate_key("a3"), certificate("a3"), read_at_generation=cache.generation)
            admin.publish(CHANNEL, b"not json")
            await _until(lambda: len(cache) == 0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not cache.live

    asyncio.run(scenario())


async def _until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def cut_rights_subscriptions(client: redis.Redis) -> int:
    """Close every rights subscription's connection (ingest workers', and a test's own
    listener), and only those: a blanket ``CLIENT KILL TYPE pubsub`` would also cut the
    Celery result consumer of this very process, failing later tests."""
    cut = 0
    for entry in client.client_list(_type="pubsub"):
        if entry.get("name") == CLIENT_NAME:
            cut += client.client_kill_filter(_id=entry["id"])
    return cut
