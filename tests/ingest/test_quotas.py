"""The Kafka client quotas the tenancy model implies (pure: no database, no Kafka)."""

from __future__ import annotations

from ingest.quotas import (
    QuotaChanges,
    QuotaPlan,
    describe_quota,
    desired_quotas,
    managed_entity_tenant,
    quota_changes,
)

PLAN = QuotaPlan(producer_byte_rate=1_048_576, request_percentage=10.0)
WANT = {"producer_byte_rate": 1_048_576.0, "request_percentage": 10.0}


def test_every_granted_principal_gets_its_tenants_plan_by_user_name() -> None:
    quotas = desired_quotas(["User:acme.sensors.crt_1", "User:acme.meters.sc_2", "User:acme.sensors.crt_1"], PLAN)
    assert quotas == {"acme.meters.sc_2": WANT, "acme.sensors.crt_1": WANT}


def test_changes_set_what_differs_and_remove_what_nobody_wants() -> None:
    # given one entity in sync, one with an old rate, one no longer granted, one missing
    existing = {
        "acme.sensors.crt_1": dict(WANT),
        "acme.sensors.crt_2": {**WANT, "producer_byte_rate": 1024.0},
        "acme.sensors.crt_gone": dict(WANT),
    }
    desired = {"acme.sensors.crt_1": WANT, "acme.sensors.crt_2": WANT, "acme.sensors.crt_new": WANT}
    # when the changes are computed
    changes = quota_changes(existing, desired)
    # then only the difference is written, and removal names Sluice's keys
    assert changes.set == {"acme.sensors.crt_2": {"producer_byte_rate": 1_048_576.0}, "acme.sensors.crt_new": WANT}
    assert changes.remove == {"acme.sensors.crt_gone": ("producer_byte_rate", "request_percentage")}
    assert not quota_changes(desired, desired)


def test_keys_sluice_does_not_set_are_left_alone() -> None:
    existing = {"acme.sensors.crt_1": {**WANT, "consumer_byte_rate": 5.0}}
    assert quota_changes(existing, {"acme.sensors.crt_1": WANT}) == QuotaChanges(set={}, remove={})
    assert quota_changes(existing, {}).remove == {"acme.sensors.crt_1": ("producer_byte_rate", "request_percentage")}


def test_which_quota_entities_sluice_manages() -> None:
    assert managed_entity_tenant("acme.sensors.crt_1") == "acme"
    assert managed_entity_tenant("acme.sensors") == "acme"  # the old group principal
    for foreign in ("sluice-admin", "<default>", "someone-else", "acme.sensors.crt_1.x", "Acme.sensors.crt_1"):
        assert managed_entity_tenant(foreign) is None


def test_describe_quota_reads_like_the_quota() -> None:
    line = describe_quota("acme.sensors.crt_1", WANT)
    assert line == "QUOTA user=acme.sensors.crt_1 producer_byte_rate=1048576 request_percentage=10"
