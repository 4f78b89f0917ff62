"""What ingest workers keep between flushes (pure), and what one flush writes to the real
Redis of this run and the console's selectors read back."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator

import pytest
import redis

from config.env import Runtime
from devices.models import Device
from ingest import metrics
from ingest.ratelimit import redis_client
from ingest.selectors import device_activity, refusals_counted

NOW = 1_800_000_000.0  # a fixed epoch second, so minute buckets are known


def test_a_worker_remembers_devices_seen_and_writes_the_database_at_most_once_a_minute() -> None:
    # given a worker that accepted records of devices 1 and 2
    outcomes = metrics.Outcomes()
    outcomes.accepted(3, 1)
    outcomes.accepted(1, 2)
    outcomes.accepted(2, 1)

    # when it flushes, then both are seen, due in the database, and the records counted
    first = outcomes.take(now=100.0)
    assert first.seen == [1, 2]
    assert sorted(first.due_for_database) == [1, 2]
    assert first.counts == {metrics.ACCEPTED: 6}

    # when device 1 sends again 30 s later, then Redis hears of it, the database not yet
    outcomes.accepted(1, 1)
    second = outcomes.take(now=130.0)
    assert second.seen == [1]
    assert second.due_for_database == []

    # and a minute after its last database write it is due again
    outcomes.accepted(1, 1)
    assert outcomes.take(now=160.0).due_for_database == [1]


def test_refusals_are_counted_by_code_and_attributed_by_device() -> None:
    outcomes = metrics.Outcomes()
    for _ in range(3):
        outcomes.refused("schema_validation_failed")
        outcomes.refused_device(7, 70, "schema_validation_failed")
    outcomes.refused("no_client_certificate")  # no device to name
    flush = outcomes.take()
    assert flush.counts == {"schema_validation_failed": 3, "no_client_certificate": 1}
    (key, refusal), *others = flush.refusals.items()
    assert not others
    assert key == (7, 70, "schema_validation_failed")
    assert refusal.count == 3
    assert metrics.Refusal.decode(refusal.encode()) == refusal
    assert not outcomes.take()  # emptied


def test_a_refusal_storm_is_attributed_to_a_bounded_number_of_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_ATTRIBUTED_PER_FLUSH", 2)
    outcomes = metrics.Outcomes()
    for device in range(5):
        outcomes.refused("certificate_revoked")
        outcomes.refused_device(1, device, "certificate_revoked")
    flush = outcomes.take()
    assert flush.counts == {"certificate_revoked": 5}  # every one counted
    assert [key[1] for key in flush.refusals] == [0, 1]  # two attributed


@pytest.fixture
def client(runtime: Runtime) -> Iterator[redis.Redis]:
    client = redis_client()
    yield client
    keys = [metrics.refused_bucket_key(int(NOW) // 60 - m) for m in range(0, 62)]
    client.delete(*keys)


def _device(pk: int) -> Device:
    return Device(pk=pk, device_id=f"d{pk}")


def test_one_flush_writes_sightings_and_refusals_the_console_reads_back(client: redis.Redis) -> None:
    # given two devices of tenant 1, one of tenant 2 (ids no test database hands out)
    tenant_a, tenant_b = 10**9 + secrets.randbelow(10**6), 2 * 10**9 + secrets.randbelow(10**6)
    seen, refused, other = (_device(10**12 + secrets.randbelow(10**9) + i) for i in range(3))
    try:
        # when a worker flushes sightings and refusals, 25 flushes of one device's refusals
        for i in range(25):
            outcomes = metrics.Outcomes()
            outcomes.accepted(1, seen.pk)
            outcomes.refused("schema_validation_failed")
            outcomes.refused_device(tenant_a, refused.pk, "schema_validation_failed" if i < 24 else "rate_limited")
            metrics.flush_to_redis(client, outcomes.take(), now=NOW + i)
        outcomes = metrics.Outcomes()
        outcomes.refused("certificate_revoked")
        outcomes.refused_device(tenant_b, other.pk, "certificate_revoked")
        outcomes.refused("no_client_certificate")
        metrics.flush_to_redis(client, outcomes.take(), now=NOW - 3600)  # 60 minutes ago: outside the hour

        # then the console sees when the device was last seen (the flush's second)
        activity = device_activity(device=seen)
        assert activity.known
        assert activity.last_seen == dt.datetime.fromtimestamp(int(NOW + 24), tz=dt.UTC)
        assert activity.refusals == ()

        # and the refusing device's latest refusals, newest first, at most REFUSALS_KEPT
        activity = device_activity(device=refused)
        assert activity.last_seen is None
        assert len(activity.refusals) == metrics.REFUSALS_KEPT
        assert activity.refusals[0].code == "rate_limited"
        assert {r.code for r in activity.refusals[1:]} == {"schema_validation_failed"}
        assert client.ttl(metrics.refusals_key(refused.pk)) > 6 * 24 * 3600

        # and refusals of the last hour, per tenant, only inside the hour
        assert refusals_counted(tenant_ids=[tenant_a], now=NOW + 30) == 25
        assert refusals_counted(tenant_ids=[tenant_a, tenant_b], now=NOW + 30) == 25
        assert refusals_counted(tenant_ids=[tenant_b], now=NOW - 3600 + 30) == 1
        assert refusals_counted(tenant_ids=[], now=NOW + 30) == 0
        # operators see all of them, also those no device was named for
        assert refusals_counted(tenant_ids=None, now=NOW + 30) == 25
        assert refusals_counted(tenant_ids=None, now=NOW - 3600 + 30) == 2
        assert 0 < client.ttl(metrics.refused_bucket_key(int(NOW) // 60)) <= metrics.BUCKET_TTL_SECONDS
    finally:
        client.hdel(metrics.LAST_SEEN_KEY, str(seen.pk))
        client.delete(*(metrics.refusals_key(d.pk) for d in (seen, refused, other)))


# -- what the same flush adds to the Prometheus metrics (config.instruments) -----------------


def test_a_local_histogram_pushes_what_observe_would_have_counted() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from config.instruments import REQUEST_BUCKETS, LocalHistogram

    values = [0.0001, 0.002, 0.0021, 0.005, 0.3, 0.3, 29.9, 30.0, 31.0, 1000.0]  # bounds included
    registry = CollectorRegistry()
    observed = Histogram("observed_seconds", "by observe", registry=registry, buckets=REQUEST_BUCKETS)
    pushed = Histogram("pushed_seconds", "by push", registry=registry, buckets=REQUEST_BUCKETS)
    local = LocalHistogram(REQUEST_BUCKETS)
    for value in values:
        observed.observe(value)
        local.observe(value)
    local.push(pushed)

    def samples(name: str) -> dict[tuple[str, str], float]:
        (family,) = [f for f in registry.collect() if f.name == name]
        return {(sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
                for sample in family.samples if not sample.name.endswith("_created")}  # fmt: skip

    assert samples("pushed_seconds") == samples("observed_seconds")
    assert samples("pushed_seconds")[("_count", "")] == len(values)
    assert not local  # started over
    local.push(pushed)  # an empty push adds nothing
    assert samples("pushed_seconds")[("_count", "")] == len(values)


def test_a_worker_counts_requests_per_tenant_stream_and_status_without_prometheus_calls() -> None:
    outcomes = metrics.Outcomes()
    outcomes.accepted(3, 1, "acme", "iot.acme.eu.temperature", 120, 0.004)
    outcomes.answered("acme", 200, 0.006)
    outcomes.accepted(2, 2, "acme", "iot.acme.eu.temperature", 80, 0.003)
    outcomes.answered("acme", 200, 0.005)
    outcomes.refused("rate_limited", "acme", "tenant")
    outcomes.answered("acme", 429, 0.001)
    outcomes.refused("no_client_certificate")
    outcomes.answered("", 401, 0.001)
    outcomes.answered("acme", 503, 5.0)
    outcomes.dead_lettered("acme", ["schema_validation_failed", "schema_validation_failed", "malformed_json"])

    flush = outcomes.take()
    assert flush.metrics is not None
    assert flush.metrics.streams == {("acme", "iot.acme.eu.temperature"): [5, 200]}
    assert flush.metrics.requests == {("acme", 200): 2, ("acme", 429): 1, ("", 401): 1, ("acme", 503): 1}
    assert flush.metrics.refusals == {("acme", "rate_limited"): 1, ("", "no_client_certificate"): 1}
    assert flush.metrics.rate_limited == {("acme", "tenant"): 1}
    assert flush.metrics.dead_letters == {("acme", "schema_validation_failed"): 2, ("acme", "malformed_json"): 1}
    assert [sum(h.counts) for h in flush.metrics.durations.values()] == [2, 2, 1]  # accepted, refused, failed
    assert sum(flush.metrics.delivery.counts) == 2
    assert metrics.stream_label("acme", "iot.acme.eu.temperature.enriched") == "eu.temperature.enriched"
    # and the next flush starts from nothing
    assert outcomes.take().metrics.requests == {}  # type: ignore[union-attr]
