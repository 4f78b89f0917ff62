"""The ACLs the tenancy model implies (pure: no database, no Kafka)."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from ingest.acls import (
    GroupSnapshot,
    TenantSnapshot,
    acl_bindings_for,
    describe_binding,
    group_snapshot,
    is_managed,
    managed_tenant_slugs,
)

SENSORS = group_snapshot(tenant="acme", group="sensors", topic="iot.acme.eu.temperature")
CAMERAS = group_snapshot(tenant="acme", group="cameras", topic="iot.acme.eu.video")
METERS = group_snapshot(tenant="acme", group="meters", topic="iot.acme.eu.temperature")  # shares SENSORS' stream
ACME = TenantSnapshot(slug="acme", active=True, groups=(SENSORS, CAMERAS, METERS))


def allow(
    principal: str,
    topic: str,
    operation: AclOperation,
    pattern: ResourcePatternType = ResourcePatternType.LITERAL,
    restype: ResourceType = ResourceType.TOPIC,
) -> AclBinding:
    return AclBinding(restype, topic, pattern, principal, "*", operation, AclPermissionType.ALLOW)


def grants(bindings: list[AclBinding]) -> set[tuple[str, str, str]]:
    return {(b.principal, b.name, b.operation.name) for b in bindings}


def test_each_group_may_write_and_describe_its_own_stream_topic_only() -> None:
    # when the bindings of an active tenant are generated
    bindings = acl_bindings_for(ACME)
    # then each group's principal gets WRITE and DESCRIBE on its stream's topic, literally, from any host
    assert grants(bindings) == {
        ("User:acme.cameras", "iot.acme.eu.video", "DESCRIBE"),
        ("User:acme.cameras", "iot.acme.eu.video", "WRITE"),
        ("User:acme.meters", "iot.acme.eu.temperature", "DESCRIBE"),
        ("User:acme.meters", "iot.acme.eu.temperature", "WRITE"),
        ("User:acme.sensors", "iot.acme.eu.temperature", "DESCRIBE"),
        ("User:acme.sensors", "iot.acme.eu.temperature", "WRITE"),
    }
    assert {(b.restype, b.resource_pattern_type, b.host, b.permission_type) for b in bindings} == {
        (ResourceType.TOPIC, ResourcePatternType.LITERAL, "*", AclPermissionType.ALLOW)
    }


def test_no_group_can_write_another_groups_topic_or_the_dlq() -> None:
    bindings = acl_bindings_for(ACME)
    # then cameras cannot write the temperature topic, nobody gets the DLQ, a prefix or READ
    assert ("User:acme.cameras", "iot.acme.eu.temperature", "WRITE") not in grants(bindings)
    assert not any(b.name == "iot.acme.dlq" for b in bindings)
    assert not any(b.resource_pattern_type != ResourcePatternType.LITERAL for b in bindings)
    assert not any(
        b.operation in (AclOperation.READ, AclOperation.ALL, AclOperation.IDEMPOTENT_WRITE) for b in bindings
    )


def test_bindings_are_deterministic_and_sorted() -> None:
    # given the same tenant with its groups listed in another order
    shuffled = TenantSnapshot(slug="acme", active=True, groups=(METERS, CAMERAS, SENSORS, SENSORS))
    # then the output is the same list, in the same order, with no duplicates
    first, second = acl_bindings_for(ACME), acl_bindings_for(shuffled)
    assert [describe_binding(b) for b in first] == [describe_binding(b) for b in second]
    assert len(first) == len(set(first)) == 6
    assert [b.principal for b in first] == sorted(b.principal for b in first)


def test_suspended_tenant_gets_no_bindings() -> None:
    assert acl_bindings_for(TenantSnapshot(slug="acme", active=False, groups=(SENSORS, CAMERAS))) == []


def test_tenant_without_groups_gets_no_bindings() -> None:
    assert acl_bindings_for(TenantSnapshot(slug="acme", active=True)) == []


@pytest.mark.parametrize(
    "group",
    [
        group_snapshot(tenant="acme", group="sensors", topic="iot.globex.eu.temperature"),
        group_snapshot(tenant="globex", group="sensors", topic="iot.acme.eu.temperature"),
        group_snapshot(tenant="acme", group="sensors", topic="iot.acme-eu.temperature"),
    ],
)
def test_a_grant_outside_the_tenants_namespace_is_refused(group: GroupSnapshot) -> None:
    with pytest.raises(ValueError, match="not a"):
        acl_bindings_for(TenantSnapshot(slug="acme", active=True, groups=(group,)))


def test_describe_binding_reads_like_the_acl() -> None:
    line = describe_binding(acl_bindings_for(ACME)[0])
    assert line == "ALLOW User:acme.cameras DESCRIBE TOPIC:LITERAL:iot.acme.eu.video host=*"


@pytest.mark.parametrize(
    ("binding", "slugs"),
    [
        # the tenant's group principals, whatever the resource
        (allow("User:acme.sensors", "iot.acme.eu.temperature", AclOperation.WRITE), {"acme"}),
        (allow("User:acme.old-group", "anything", AclOperation.READ, restype=ResourceType.GROUP), {"acme"}),
        # anyone's grant on a topic under iot.<tenant>. (literal or prefixed)
        (allow("User:someone-else", "iot.acme.eu.temperature", AclOperation.READ), {"acme"}),
        (allow("User:someone-else", "iot.acme.", AclOperation.READ, ResourcePatternType.PREFIXED), {"acme"}),
        # a cross-tenant stray belongs to both namespaces
        (allow("User:globex.sensors", "iot.acme.eu.temperature", AclOperation.WRITE), {"acme", "globex"}),
        # a tenant whose slug extends another's is a different namespace
        (allow("User:acme-eu.sensors", "iot.acme-eu.x", AclOperation.WRITE), {"acme-eu"}),
        # never Sluice's: platform principals, other principals on other topics, DNs, wildcards, consumer groups
        (allow("User:sluice-admin", "iot.", AclOperation.ALL, ResourcePatternType.PREFIXED), set()),
        (allow("User:someone-else", "someone-else.topic", AclOperation.WRITE), set()),
        (allow("User:CN=dev,OU=sensors,O=acme", "other", AclOperation.WRITE), set()),
        (allow("User:*", "*", AclOperation.DESCRIBE), set()),
        (allow("User:someone-else", "iot.acme.readers", AclOperation.READ, restype=ResourceType.GROUP), set()),
    ],
)
def test_which_bindings_sluice_manages(binding: AclBinding, slugs: set[str]) -> None:
    assert managed_tenant_slugs(binding) == slugs
    assert is_managed(binding, "acme") is ("acme" in slugs)
