"""The ACLs the tenancy model implies (pure: no database, no Kafka)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from ingest.acls import (
    CertificateFacts,
    ClientFacts,
    GroupSnapshot,
    TenantSnapshot,
    acl_bindings_for,
    describe_binding,
    is_managed,
    managed_tenant_slugs,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=30)
PRODUCE = frozenset({"kafka:produce", "ingest:write"})


def cert(group: str, cid: str, **facts: object) -> CertificateFacts:
    values: dict[str, object] = {"principal": f"User:acme.{group}.{cid}", "status": "active", "not_after": LATER}
    values.update(facts)
    return CertificateFacts(**values)  # type: ignore[arg-type]


def client(cid: str, **facts: object) -> ClientFacts:
    values: dict[str, object] = {"client_id": cid, "active": True, "scopes": PRODUCE, "device_active": True}
    values.update(facts)
    return ClientFacts(**values)  # type: ignore[arg-type]


SENSORS = GroupSnapshot(slug="sensors", topic="iot.acme.eu.temperature", kafka_direct=True, credential_policy="both",
                        certificates=(cert("sensors", "crt_a1"), cert("sensors", "crt_a2")),
                        clients=(client("sc_g1"),))  # fmt: skip
CAMERAS = GroupSnapshot(slug="cameras", topic="iot.acme.eu.video", kafka_direct=True, credential_policy="mtls",
                        certificates=(cert("cameras", "crt_c1"),))  # fmt: skip
METERS = GroupSnapshot(slug="meters", topic="iot.acme.eu.temperature", kafka_direct=True, credential_policy="oauth2",
                       clients=(client("sc_m1"),))  # fmt: skip
HTTPS_ONLY = GroupSnapshot(slug="fleet", topic="iot.acme.eu.temperature", kafka_direct=False,
                           certificates=(cert("fleet", "crt_f1"),), clients=(client("sc_f1"),))  # fmt: skip
ACME = TenantSnapshot(slug="acme", active=True, groups=(SENSORS, CAMERAS, METERS, HTTPS_ONLY))


def allow(
    principal: str,
    topic: str,
    operation: AclOperation,
    pattern: ResourcePatternType = ResourcePatternType.LITERAL,
    restype: ResourceType = ResourceType.TOPIC,
) -> AclBinding:
    return AclBinding(restype, topic, pattern, principal, "*", operation, AclPermissionType.ALLOW)


def grants(bindings: list[AclBinding]) -> set[tuple[str, str]]:
    assert {b.operation for b in bindings} <= {AclOperation.WRITE}
    return {(b.principal, b.name) for b in bindings}


def principals_of(group: GroupSnapshot, *, now: dt.datetime = NOW, active: bool = True) -> set[str]:
    return {b.principal for b in acl_bindings_for(TenantSnapshot(slug="acme", active=active, groups=(group,)), now=now)}


def test_each_usable_credential_of_a_kafka_direct_group_may_write_its_stream_topic_only() -> None:
    # when the bindings of an active tenant are generated
    bindings = acl_bindings_for(ACME, now=NOW)
    # then each credential's own principal gets exactly one WRITE on its group's topic, literally, from any host
    assert grants(bindings) == {
        ("User:acme.cameras.crt_c1", "iot.acme.eu.video"),
        ("User:acme.meters.sc_m1", "iot.acme.eu.temperature"),
        ("User:acme.sensors.crt_a1", "iot.acme.eu.temperature"),
        ("User:acme.sensors.crt_a2", "iot.acme.eu.temperature"),
        ("User:acme.sensors.sc_g1", "iot.acme.eu.temperature"),
    }
    assert {(b.restype, b.resource_pattern_type, b.host, b.permission_type) for b in bindings} == {
        (ResourceType.TOPIC, ResourcePatternType.LITERAL, "*", AclPermissionType.ALLOW)
    }
    # and the group principals of the old naming get nothing
    assert not {b.principal for b in bindings} & {"User:acme.sensors", "User:acme.cameras", "User:acme.meters"}


def test_a_group_without_kafka_direct_gets_no_acl_at_all() -> None:
    assert principals_of(HTTPS_ONLY) == set()
    assert principals_of(dataclasses.replace(HTTPS_ONLY, kafka_direct=True)) == {"User:acme.fleet.crt_f1"}


def test_the_credential_policy_decides_which_kind_of_credential_is_granted() -> None:
    # given a group with both a certificate and a client
    group = dataclasses.replace(SENSORS, clients=(client("sc_g1"),))
    # then each policy grants exactly the credentials it admits
    assert principals_of(dataclasses.replace(group, credential_policy="mtls")) == {
        "User:acme.sensors.crt_a1", "User:acme.sensors.crt_a2"}  # fmt: skip
    assert principals_of(dataclasses.replace(group, credential_policy="oauth2")) == {"User:acme.sensors.sc_g1"}
    assert len(principals_of(dataclasses.replace(group, credential_policy="both"))) == 3


@pytest.mark.parametrize(
    ("facts", "usable"),
    [
        ({}, True),
        ({"status": "revoked"}, False),
        ({"status": "superseded", "overlap_until": NOW + dt.timedelta(hours=1)}, True),
        ({"status": "superseded", "overlap_until": NOW - dt.timedelta(seconds=1)}, False),
        ({"status": "superseded", "overlap_until": None}, False),
        ({"not_after": NOW}, False),
        ({"device_active": False}, False),
        # issued for another group (the device moved): acts for no group until revoked
        ({"principal": "User:acme.cameras.crt_x"}, False),
        # another tenant's principal, or one of the old group naming
        ({"principal": "User:globex.sensors.crt_x"}, False),
        ({"principal": "User:acme.sensors"}, False),
    ],
    ids=[
        "active",
        "revoked",
        "superseded-in-overlap",
        "overlap-ended",
        "superseded-no-overlap",
        "expired",
        "device-disabled",
        "other-group",
        "other-tenant",
        "group-principal",
    ],
)
def test_which_certificates_are_usable(facts: dict[str, object], usable: bool) -> None:
    group = dataclasses.replace(SENSORS, clients=(), certificates=(cert("sensors", "crt_x", **facts),))
    assert principals_of(group) == ({facts.get("principal", "User:acme.sensors.crt_x")} if usable else set())


@pytest.mark.parametrize(
    ("facts", "usable"),
    [
        ({}, True),
        ({"device_active": None}, True),  # a gateway client
        ({"active": False}, False),
        ({"scopes": frozenset({"ingest:write"})}, False),
        ({"device_active": False}, False),
    ],
    ids=["device-client", "gateway", "revoked", "no-kafka-scope", "device-disabled"],
)
def test_which_oauth_clients_are_usable(facts: dict[str, object], usable: bool) -> None:
    group = dataclasses.replace(METERS, clients=(client("sc_x", **facts),))
    assert principals_of(group) == ({"User:acme.meters.sc_x"} if usable else set())


def test_bindings_are_deterministic_and_sorted() -> None:
    # given the same tenant with its groups listed in another order, one twice
    shuffled = TenantSnapshot(slug="acme", active=True, groups=(METERS, CAMERAS, HTTPS_ONLY, SENSORS, SENSORS))
    # then the output is the same list, in the same order, with no duplicates
    first, second = acl_bindings_for(ACME, now=NOW), acl_bindings_for(shuffled, now=NOW)
    assert [describe_binding(b) for b in first] == [describe_binding(b) for b in second]
    assert len(first) == len(set(first)) == 5
    assert [b.principal for b in first] == sorted(b.principal for b in first)


def test_suspended_tenant_gets_no_bindings() -> None:
    assert acl_bindings_for(TenantSnapshot(slug="acme", active=False, groups=(SENSORS, CAMERAS)), now=NOW) == []


def test_tenant_without_groups_gets_no_bindings() -> None:
    assert acl_bindings_for(TenantSnapshot(slug="acme", active=True), now=NOW) == []


@pytest.mark.parametrize(
    "topic", ["iot.globex.eu.temperature", "iot.acme-eu.temperature", "someone-else.topic"]
)  # fmt: skip
def test_a_grant_outside_the_tenants_namespace_is_refused(topic: str) -> None:
    group = dataclasses.replace(SENSORS, topic=topic)
    with pytest.raises(ValueError, match="not a topic of tenant"):
        acl_bindings_for(TenantSnapshot(slug="acme", active=True, groups=(group,)), now=NOW)


def test_describe_binding_reads_like_the_acl() -> None:
    line = describe_binding(acl_bindings_for(ACME, now=NOW)[0])
    assert line == "ALLOW User:acme.cameras.crt_c1 WRITE TOPIC:LITERAL:iot.acme.eu.video host=*"


@pytest.mark.parametrize(
    ("binding", "slugs"),
    [
        # the tenant's credential principals and its old group principals, whatever the resource
        (allow("User:acme.sensors.crt_0a1b", "iot.acme.eu.temperature", AclOperation.WRITE), {"acme"}),
        (allow("User:acme.sensors.sc_0a1b", "anything", AclOperation.READ, restype=ResourceType.GROUP), {"acme"}),
        (allow("User:acme.sensors", "iot.acme.eu.temperature", AclOperation.WRITE), {"acme"}),
        (allow("User:acme.old-group", "anything", AclOperation.READ, restype=ResourceType.GROUP), {"acme"}),
        # anyone's grant on a topic under iot.<tenant>. (literal or prefixed)
        (allow("User:someone-else", "iot.acme.eu.temperature", AclOperation.READ), {"acme"}),
        (allow("User:someone-else", "iot.acme.", AclOperation.READ, ResourcePatternType.PREFIXED), {"acme"}),
        # a cross-tenant stray belongs to both namespaces
        (allow("User:globex.sensors.crt_1", "iot.acme.eu.temperature", AclOperation.WRITE), {"acme", "globex"}),
        # a tenant whose slug extends another's is a different namespace
        (allow("User:acme-eu.sensors.crt_1", "iot.acme-eu.x", AclOperation.WRITE), {"acme-eu"}),
        # never Sluice's: platform principals, other principals on other topics, DNs, wildcards,
        # consumer groups, principals with more parts than Sluice makes
        (allow("User:sluice-admin", "iot.", AclOperation.ALL, ResourcePatternType.PREFIXED), set()),
        (allow("User:someone-else", "someone-else.topic", AclOperation.WRITE), set()),
        (allow("User:CN=dev,OU=sensors,O=acme", "other", AclOperation.WRITE), set()),
        (allow("User:*", "*", AclOperation.DESCRIBE), set()),
        (allow("User:someone-else", "iot.acme.readers", AclOperation.READ, restype=ResourceType.GROUP), set()),
        (allow("User:acme.sensors.crt_1.extra", "other", AclOperation.WRITE), set()),
        (allow("User:acme.sensors.CRT_1", "other", AclOperation.WRITE), set()),
    ],
)
def test_which_bindings_sluice_manages(binding: AclBinding, slugs: set[str]) -> None:
    assert managed_tenant_slugs(binding) == slugs
    assert is_managed(binding, "acme") is ("acme" in slugs)
