"""A consumer's ACLs as the tenancy model implies them (pure: no database, no Kafka)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from ingest.acls import (
    CertificateFacts,
    ClientFacts,
    ConsumerSnapshot,
    GroupSnapshot,
    TenantSnapshot,
    acl_bindings_for,
    consumer_principal_parts,
    is_managed,
    managed_principal_tenant,
    principal_parts,
)
from ingest.quotas import QuotaPlan, desired_quotas, quota_changes

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=30)
CONSUME = frozenset({"kafka:consume", "registry:read"})
TOPICS = ("iot.acme.eu.temperature", "iot.acme.eu.video", "iot.acme.dlq")
CERT = "User:acme.consumers.analytics.crt_a1"
CLIENT = "User:acme.consumers.analytics.sc_c1"


def cert(consumer: str, cid: str, **facts: object) -> CertificateFacts:
    values: dict[str, object] = {"principal": f"User:acme.consumers.{consumer}.{cid}", "status": "active",
                                 "not_after": LATER}  # fmt: skip
    values.update(facts)
    return CertificateFacts(**values)  # type: ignore[arg-type]


def client(cid: str, **facts: object) -> ClientFacts:
    values: dict[str, object] = {"client_id": cid, "active": True, "scopes": CONSUME}
    values.update(facts)
    return ClientFacts(**values)  # type: ignore[arg-type]


ANALYTICS = ConsumerSnapshot(slug="analytics", topics=TOPICS, certificates=(cert("analytics", "crt_a1"),),
                             clients=(client("sc_c1"),))  # fmt: skip


def tenant(*consumers: ConsumerSnapshot, active: bool = True) -> TenantSnapshot:
    return TenantSnapshot(slug="acme", active=active, consumers=consumers)


def read(principal: str, name: str, restype: ResourceType = ResourceType.TOPIC) -> AclBinding:
    pattern = ResourcePatternType.PREFIXED if restype == ResourceType.GROUP else ResourcePatternType.LITERAL
    return AclBinding(restype, name, pattern, principal, "*", AclOperation.READ, AclPermissionType.ALLOW)


def expected(principal: str, topics: tuple[str, ...] = TOPICS) -> set[AclBinding]:
    return {read(principal, t) for t in topics} | {read(principal, "acme.analytics.", ResourceType.GROUP)}


def test_each_usable_credential_reads_the_granted_topics_and_its_own_groups_and_nothing_else() -> None:
    bindings = acl_bindings_for(tenant(ANALYTICS), now=NOW)
    assert set(bindings) == expected(CERT) | expected(CLIENT)
    # READ only (Kafka implies DESCRIBE from it): never WRITE, never another resource type.
    assert {b.operation for b in bindings} == {AclOperation.READ}
    assert {b.restype for b in bindings} == {ResourceType.TOPIC, ResourceType.GROUP}


def test_selected_streams_grant_those_topics_only() -> None:
    narrow = dataclasses.replace(ANALYTICS, topics=("iot.acme.eu.video",))
    assert set(acl_bindings_for(tenant(narrow), now=NOW)) == expected(CERT, ("iot.acme.eu.video",)) | expected(
        CLIENT, ("iot.acme.eu.video",)
    )


@pytest.mark.parametrize(
    "facts",
    [
        {"status": "revoked"},
        {"not_after": NOW},
        {"status": "superseded", "overlap_until": NOW - dt.timedelta(seconds=1)},
        # a certificate issued for another consumer of the tenant holds nothing here
        {"principal": "User:acme.consumers.billing.crt_a1"},
        # nor a device group's credential principal
        {"principal": "User:acme.analytics.crt_a1"},
    ],
)
def test_a_certificate_that_may_not_read_gets_nothing(facts: dict[str, object]) -> None:
    consumer = dataclasses.replace(ANALYTICS, certificates=(cert("analytics", "crt_a1", **facts),), clients=())
    assert acl_bindings_for(tenant(consumer), now=NOW) == []


def test_a_certificate_in_its_renewal_overlap_still_reads() -> None:
    facts = {"status": "superseded", "overlap_until": NOW + dt.timedelta(hours=1)}
    consumer = dataclasses.replace(ANALYTICS, certificates=(cert("analytics", "crt_a1", **facts),), clients=())
    assert set(acl_bindings_for(tenant(consumer), now=NOW)) == expected(CERT)


@pytest.mark.parametrize(
    "facts", [{"active": False}, {"scopes": frozenset({"registry:read"})}, {"scopes": frozenset({"kafka:produce"})}]
)
def test_a_client_that_may_not_read_gets_nothing(facts: dict[str, object]) -> None:
    consumer = dataclasses.replace(ANALYTICS, certificates=(), clients=(client("sc_c1", **facts),))
    assert acl_bindings_for(tenant(consumer), now=NOW) == []


def test_a_disabled_consumer_and_a_suspended_tenant_hold_nothing() -> None:
    assert acl_bindings_for(tenant(dataclasses.replace(ANALYTICS, active=False)), now=NOW) == []
    assert acl_bindings_for(tenant(ANALYTICS, active=False), now=NOW) == []


def test_a_topic_of_another_tenant_is_refused_loudly() -> None:
    foreign = dataclasses.replace(ANALYTICS, topics=("iot.globex.eu.temperature",))
    with pytest.raises(ValueError, match="not a topic of tenant 'acme'"):
        acl_bindings_for(tenant(foreign), now=NOW)


def test_consumer_and_group_principals_cannot_be_taken_for_each_other() -> None:
    # A group named "consumers" has three-part credential principals; a consumer's have four.
    assert principal_parts("User:acme.consumers.crt_1") == ("acme", "consumers", "crt_1")
    assert consumer_principal_parts("User:acme.consumers.crt_1") is None
    assert consumer_principal_parts(CERT) == ("acme", "analytics", "crt_a1")
    assert principal_parts(CERT) is None
    assert managed_principal_tenant(CERT) == "acme"
    assert consumer_principal_parts("User:acme.consumers.analytics.crt_a1.extra") is None
    assert consumer_principal_parts("User:acme.readers.analytics.crt_a1") is None


def test_sluice_owns_a_consumers_group_grant_and_no_one_elses() -> None:
    assert is_managed(read(CERT, "acme.analytics.", ResourceType.GROUP), "acme")
    assert not is_managed(read(CERT, "acme.analytics.", ResourceType.GROUP), "globex")
    # a hand-made group grant for someone else is not Sluice's business
    assert not is_managed(read("User:bob", "acme.analytics.", ResourceType.GROUP), "acme")


def test_a_consumer_credential_gets_a_consumer_quota_and_a_producer_keeps_its_own() -> None:
    plan = QuotaPlan(producer_byte_rate=1024, request_percentage=5.0, consumer_byte_rate=4096)
    quotas = desired_quotas([CERT, "User:acme.sensors.crt_p1"], plan)
    assert quotas == {
        "acme.consumers.analytics.crt_a1": {"consumer_byte_rate": 4096.0, "request_percentage": 5.0},
        "acme.sensors.crt_p1": {"producer_byte_rate": 1024.0, "request_percentage": 5.0},
    }
    # an operator's producer rate on a consumer entity is not Sluice's key there, and is kept
    existing = {"acme.consumers.analytics.crt_a1": {**quotas["acme.consumers.analytics.crt_a1"],
                                                    "producer_byte_rate": 1.0}}  # fmt: skip
    assert not quota_changes(existing, quotas | {"acme.sensors.crt_p1": {}}).remove
    assert quota_changes(existing, {}).remove == {
        "acme.consumers.analytics.crt_a1": ("consumer_byte_rate", "request_percentage")
    }


def test_groups_and_consumers_together() -> None:
    group = GroupSnapshot(slug="sensors", topic="iot.acme.eu.temperature", kafka_direct=True,
                          certificates=(CertificateFacts("User:acme.sensors.crt_p1", "active", LATER),))  # fmt: skip
    snapshot = TenantSnapshot(slug="acme", active=True, groups=(group,), consumers=(ANALYTICS,))
    bindings = set(acl_bindings_for(snapshot, now=NOW))
    write = AclBinding(ResourceType.TOPIC, "iot.acme.eu.temperature", ResourcePatternType.LITERAL,
                       "User:acme.sensors.crt_p1", "*", AclOperation.WRITE, AclPermissionType.ALLOW)  # fmt: skip
    assert bindings == {write} | expected(CERT) | expected(CLIENT)
