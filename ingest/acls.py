"""The Kafka ACLs the tenancy model implies: pure, so they can be read and tested alone.

``acl_bindings_for`` turns a :class:`TenantSnapshot` (no ORM, no network) into the exact,
sorted list of ``AclBinding`` the cluster should hold for that tenant.  ``acl_sync`` makes
the cluster match it; this module only decides.

What a tenant gets, and why (the broker runs ``StandardAuthorizer`` with
``allow.everyone.if.no.acl.found=false``, so whatever is not granted here is denied):

* Each device group's principal ``User:<tenant>.<group>`` (``ssl.principal.mapping.rules``,
  see ``certs.principals``) gets ALLOW WRITE and DESCRIBE on its stream's topic, as a
  LITERAL pattern, from any host.  LITERAL and not the tenant prefix ``iot.<tenant>.``: a
  prefixed grant would let group A1 write into group A2's topic.  Groups that share a
  stream share that topic's grant, which is what sharing a stream means.
* Nothing else.  An idempotent producer needs no ``IDEMPOTENT_WRITE`` on the cluster since
  Kafka 3.0: InitProducerId is allowed to any principal with WRITE on some topic (KIP-679),
  so no cluster-wide grant exists to leak.  Devices get no READ (a device must not read
  its neighbours' telemetry), no consumer-group grant and nothing on the DLQ
  (``iot.<tenant>.dlq`` is written by Sluice's ingest, a super user).  DESCRIBE is implied
  by WRITE in Kafka's authorizer; it is granted explicitly so the intent is visible.
* A suspended tenant gets nothing: removing the ALLOW bindings is what makes the broker
  refuse its devices' next produce request (every request is authorized).

Sluice owns a namespace on the cluster: every principal ``User:<slug>.<slug>`` and every
topic under ``iot.<slug>.``.  Any ACL in it that the model does not produce is stale and
is removed by reconcile; ACLs outside it (the platform's own, ``User:someone-else`` on
other topics, wildcard grants) are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from certs.principals import group_principal

ANY_HOST = "*"
# Mirrors tenants.models.SLUG_REGEX (kept here so this module needs no Django): lowercase,
# digits, hyphens, never a dot.  The dot is the separator in ``<tenant>.<group>`` and in
# ``iot.<tenant>.``, so a slug is always recovered unambiguously.
_SLUG = r"[a-z][a-z0-9-]{0,38}[a-z0-9]"
_GROUP_PRINCIPAL = re.compile(rf"^User:({_SLUG})\.({_SLUG})$")
_TENANT_TOPIC = re.compile(rf"^iot\.({_SLUG})\.")
DEVICE_GROUP_OPERATIONS = (AclOperation.DESCRIBE, AclOperation.WRITE)


@dataclass(frozen=True)
class GroupSnapshot:
    """What the ACLs need of one device group: its Kafka principal and its stream's topic."""

    principal: str
    topic: str


@dataclass(frozen=True)
class TenantSnapshot:
    """What the ACLs need of one tenant, taken from the database by ``acl_sync``."""

    slug: str
    active: bool
    groups: tuple[GroupSnapshot, ...] = ()

    @property
    def topic_prefix(self) -> str:
        return f"iot.{self.slug}."

    @property
    def principal_prefix(self) -> str:
        return f"User:{self.slug}."


def group_snapshot(*, tenant: str, group: str, topic: str) -> GroupSnapshot:
    return GroupSnapshot(principal=group_principal(tenant=tenant, group=group), topic=topic)


def binding_key(binding: AclBinding) -> tuple[str, ...]:
    """A total order on bindings by their readable fields (the enums have no order)."""
    return (
        binding.principal,
        binding.restype.name,
        binding.name,
        binding.resource_pattern_type.name,
        binding.operation.name,
        binding.permission_type.name,
        binding.host,
    )


def sorted_bindings(bindings: Iterable[AclBinding]) -> list[AclBinding]:
    return sorted(set(bindings), key=binding_key)


def describe_binding(binding: AclBinding) -> str:
    """One line for reports and the audit log, e.g.
    ``ALLOW User:acme.sensors WRITE TOPIC:LITERAL:iot.acme.eu.temperature host=*``."""
    return (
        f"{binding.permission_type.name} {binding.principal} {binding.operation.name} "
        f"{binding.restype.name}:{binding.resource_pattern_type.name}:{binding.name} host={binding.host}"
    )


def acl_bindings_for(tenant: TenantSnapshot) -> list[AclBinding]:
    """Every binding ``tenant`` should have on the cluster, sorted and without duplicates."""
    if not tenant.active:
        return []
    bindings: list[AclBinding] = []
    for group in tenant.groups:
        # A grant outside the tenant's own namespace would be a cross-tenant leak; the
        # model cannot produce one (a group's stream is its tenant's), so refuse loudly.
        if not group.principal.startswith(tenant.principal_prefix) or not _GROUP_PRINCIPAL.match(group.principal):
            raise ValueError(f"{group.principal} is not a device-group principal of tenant '{tenant.slug}'")
        if not group.topic.startswith(tenant.topic_prefix):
            raise ValueError(f"{group.topic} is not a topic of tenant '{tenant.slug}'")
        bindings += [
            AclBinding(ResourceType.TOPIC, group.topic, ResourcePatternType.LITERAL, group.principal, ANY_HOST,
                       operation, AclPermissionType.ALLOW)
            for operation in DEVICE_GROUP_OPERATIONS
        ]  # fmt: skip
    return sorted_bindings(bindings)


def managed_tenant_slugs(binding: AclBinding) -> frozenset[str]:
    """The tenants (by slug) in whose namespace ``binding`` lies: the tenant of a
    ``User:<tenant>.<group>`` principal and the tenant of a topic under ``iot.<tenant>.``.
    Empty when the binding is none of Sluice's business."""
    slugs: set[str] = set()
    principal = _GROUP_PRINCIPAL.match(binding.principal)
    if principal:
        slugs.add(principal.group(1))
    if binding.restype == ResourceType.TOPIC:
        topic = _TENANT_TOPIC.match(binding.name)
        if topic:
            slugs.add(topic.group(1))
    return frozenset(slugs)


def is_managed(binding: AclBinding, tenant_slug: str) -> bool:
    """Whether Sluice owns ``binding`` on behalf of ``tenant_slug`` (and may delete it)."""
    return tenant_slug in managed_tenant_slugs(binding)
