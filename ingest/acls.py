"""The Kafka ACLs the tenancy model implies: pure, so they can be read and tested alone.

``acl_bindings_for`` turns a :class:`TenantSnapshot` (no ORM, no network) and the current
time into the exact, sorted list of ``AclBinding`` the cluster should hold for that tenant.
``acl_sync`` makes the cluster match it; this module only decides.

What a tenant gets, and why (the broker runs ``StandardAuthorizer`` with
``allow.everyone.if.no.acl.found=false``, so whatever is not granted here is denied):

* Only device groups with ``kafka_direct`` get anything: Kafka-direct access is opt-in.
  HTTPS ingest produces as the platform admin (a super user) and needs no ACL.
* In such a group, **each usable credential** gets one ALLOW WRITE binding on the group's
  stream topic, as a LITERAL pattern, from any host, for its own principal
  ``User:<tenant>.<group>.<credential id>`` (``certs.principals``).  Kafka checks a
  certificate only at the TLS handshake and a token only when a connection authenticates,
  and it cannot close a connection on request; it does authorize every request against the
  ACLs.  So ending one credential's right is removing its one binding, and an
  already-connected producer is refused at its next produce.
  Who is usable is ``tenants.policy``'s to decide (``Use.KAFKA_CERTIFICATE``, ``Use.KAFKA_CLIENT``):
  - A certificate is usable while it is active (or superseded and inside its overlap), has
    not expired, its device is active and still in the group its principal names, and the
    group's credential policy admits certificates.
  - An OAuth client (device or gateway) is usable while it is active, holds
    ``kafka:produce``, its device (if any) is active, and the policy admits OAuth2.
  LITERAL and not the tenant prefix ``iot.<tenant>.``: a prefixed grant would let group A1
  write into group A2's topic.  WRITE only: Kafka's authorizer implies DESCRIBE from WRITE,
  and an idempotent producer needs no ``IDEMPOTENT_WRITE`` on the cluster since Kafka 3.0
  (InitProducerId is allowed to any principal with WRITE on some topic, KIP-679).  Devices
  get no READ, no consumer-group grant and nothing on the DLQ.
* A **consumer** (a tenant's backend, ``devices.models.Consumer``) that is active: each usable
  credential -- a certificate from the tenant CA, or an OAuth client holding
  ``kafka:consume`` -- is its own principal ``User:<tenant>.consumers.<consumer>.<id>`` and
  gets ALLOW READ on each topic the consumer is granted (every stream of the tenant, or the
  selected ones, and the tenant's DLQ if granted), LITERAL, and ALLOW READ on the consumer
  groups ``<tenant>.<consumer>.`` PREFIXED.  Nothing else: READ implies DESCRIBE on the
  same topic or group (Kafka's authorizer), so a consumer fetches, lists offsets, reads
  metadata and commits offsets for its own groups; it cannot write, describe or read any
  other topic, or join any other group (another consumer's prefix included).
* A suspended tenant gets nothing.

Sluice owns a namespace on the cluster: every principal ``User:<slug>.<slug>`` (the group
principal of certificates issued before credential ids, which no longer gets a grant),
``User:<slug>.<slug>.<id>`` and ``User:<slug>.consumers.<slug>.<id>``, and every topic
under ``iot.<slug>.``.  Any ACL in it that the
model does not produce is stale and is removed by a sync; ACLs outside it (the platform's
own, ``User:someone-else`` on other topics, wildcard grants) are never touched.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from devices.principals import (
    CONSUMERS,
    CREDENTIAL_ID,
    consumer_group_prefix,
    consumer_principal,
    credential_principal,
    group_principal,
)
from tenants import policy

ANY_HOST = "*"
# Mirrors tenants.models.SLUG_REGEX (kept here so this module needs no Django): lowercase,
# digits, hyphens, never a dot.  The dot is the separator in ``<tenant>.<group>.<id>`` and in
# ``iot.<tenant>.``, so a slug is always recovered unambiguously.
_SLUG = r"[a-z][a-z0-9-]{0,38}[a-z0-9]"
_MANAGED_PRINCIPAL = re.compile(rf"^User:({_SLUG})\.({_SLUG})(?:\.({CREDENTIAL_ID}))?$")
_CONSUMER_PRINCIPAL = re.compile(rf"^User:({_SLUG})\.{CONSUMERS}\.({_SLUG})\.({CREDENTIAL_ID})$")
_TENANT_TOPIC = re.compile(rf"^iot\.({_SLUG})\.")
CREDENTIAL_OPERATION = AclOperation.WRITE
CONSUMER_OPERATION = AclOperation.READ


@dataclass(frozen=True)
class CertificateFacts:
    """What the ACLs need of one certificate of a device now in the group."""

    principal: str  # as issued: User:<tenant>.<group at issuance>.<id>
    status: str  # active | superseded | revoked
    not_after: dt.datetime
    overlap_until: dt.datetime | None = None
    device_active: bool = True


@dataclass(frozen=True)
class ClientFacts:
    """What the ACLs need of one OAuth client speaking for the group (a device client of
    one of its devices, or a gateway client of the group)."""

    client_id: str
    active: bool
    scopes: frozenset[str]
    device_active: bool | None = None  # None: a gateway, which has no device


@dataclass(frozen=True)
class GroupSnapshot:
    """What the ACLs need of one device group: its stream's topic, its policy and the
    credentials that may speak for it."""

    slug: str
    topic: str
    kafka_direct: bool = False
    credential_policy: str = "mtls"
    certificates: tuple[CertificateFacts, ...] = ()
    clients: tuple[ClientFacts, ...] = ()


@dataclass(frozen=True)
class ConsumerSnapshot:
    """What the ACLs need of one consumer: the topics it is granted (its streams' and the
    DLQ, resolved) and the credentials that read as it."""

    slug: str
    active: bool = True
    topics: tuple[str, ...] = ()
    certificates: tuple[CertificateFacts, ...] = ()
    clients: tuple[ClientFacts, ...] = ()


@dataclass(frozen=True)
class TenantSnapshot:
    """What the ACLs need of one tenant, taken from the database by ``acl_sync``."""

    slug: str
    active: bool
    groups: tuple[GroupSnapshot, ...] = ()
    consumers: tuple[ConsumerSnapshot, ...] = ()

    @property
    def topic_prefix(self) -> str:
        return f"iot.{self.slug}."


def enum_name(field: Enum | str | int) -> str:
    """The name of a binding's enum field.  AclBinding's constructor turns a str or int into
    the enum; confluent-kafka's annotations keep the union the constructor accepts."""
    assert isinstance(field, Enum)
    return field.name


def binding_key(binding: AclBinding) -> tuple[str, ...]:
    """A total order on bindings by their readable fields (the enums have no order)."""
    return (
        binding.principal,
        enum_name(binding.restype),
        binding.name,
        enum_name(binding.resource_pattern_type),
        enum_name(binding.operation),
        enum_name(binding.permission_type),
        binding.host,
    )


def sorted_bindings(bindings: Iterable[AclBinding]) -> list[AclBinding]:
    return sorted(set(bindings), key=binding_key)


def describe_binding(binding: AclBinding) -> str:
    """One line for reports and the audit log, e.g.
    ``ALLOW User:acme.sensors.crt_1f… WRITE TOPIC:LITERAL:iot.acme.eu.temperature host=*``."""
    return (
        f"{enum_name(binding.permission_type)} {binding.principal} {enum_name(binding.operation)} "
        f"{enum_name(binding.restype)}:{enum_name(binding.resource_pattern_type)}:{binding.name} host={binding.host}"
    )


def credential_binding(principal: str, topic: str) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal, ANY_HOST,
                      CREDENTIAL_OPERATION, AclPermissionType.ALLOW)  # fmt: skip


def consumer_topic_binding(principal: str, topic: str) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal, ANY_HOST,
                      CONSUMER_OPERATION, AclPermissionType.ALLOW)  # fmt: skip


def consumer_group_binding(principal: str, prefix: str) -> AclBinding:
    return AclBinding(ResourceType.GROUP, prefix, ResourcePatternType.PREFIXED, principal, ANY_HOST,
                      CONSUMER_OPERATION, AclPermissionType.ALLOW)  # fmt: skip


def _status(active: bool, inactive: str) -> str:
    return policy.ACTIVE if active else inactive


def certificate_usable(
    certificate: CertificateFacts, *, tenant: str, group: GroupSnapshot, now: dt.datetime, tenant_active: bool = True
) -> bool:
    """Whether this certificate may hold a grant in ``group`` now (``tenants.policy``)."""
    # A certificate names the group it was issued for; a device that moved has its old
    # certificates revoked, and until then they act for no group.
    prefix = group_principal(tenant=tenant, group=group.slug) + "."
    named = certificate.principal.startswith(prefix) and bool(_MANAGED_PRINCIPAL.match(certificate.principal))
    own = policy.certificate_refusal(
        policy.Use.KAFKA_CERTIFICATE,
        status=certificate.status,
        not_after=certificate.not_after,
        overlap_until=certificate.overlap_until,
        now=now,
    )
    holder = policy.holder_refusal(
        policy.Use.KAFKA_CERTIFICATE,
        tenant_status=_status(tenant_active, policy.SUSPENDED),
        device_status=_status(certificate.device_active, policy.DISABLED),
        credential_policy=group.credential_policy,
    )
    return named and own is None and holder is None


def client_usable(client: ClientFacts, *, group: GroupSnapshot, tenant_active: bool = True) -> bool:
    """Whether this OAuth client may produce on Kafka now (``tenants.policy``)."""
    refusal = policy.oauth_client_refusal(
        policy.Use.KAFKA_CLIENT,
        status=_status(client.active, policy.REVOKED),
        tenant_status=_status(tenant_active, policy.SUSPENDED),
        device_status=None if client.device_active is None else _status(client.device_active, policy.DISABLED),
        credential_policy=group.credential_policy,
        scopes=client.scopes,
    )
    return refusal is None


def consumer_certificate_usable(
    certificate: CertificateFacts, *, tenant: str, consumer: ConsumerSnapshot, now: dt.datetime,
    tenant_active: bool = True,
) -> bool:  # fmt: skip
    """Whether this certificate may read as ``consumer`` now (``tenants.policy``)."""
    parts = consumer_principal_parts(certificate.principal)
    named = parts is not None and parts[:2] == (tenant, consumer.slug)
    own = policy.certificate_refusal(policy.Use.KAFKA_CERTIFICATE, status=certificate.status,
                                     not_after=certificate.not_after, overlap_until=certificate.overlap_until,
                                     now=now)  # fmt: skip
    holder = policy.holder_refusal(policy.Use.KAFKA_CERTIFICATE, tenant_status=_status(tenant_active, policy.SUSPENDED),
                                   device_status=None, credential_policy=None,
                                   consumer_status=_status(consumer.active, policy.DISABLED))  # fmt: skip
    return named and own is None and holder is None


def consumer_client_usable(client: ClientFacts, *, consumer: ConsumerSnapshot, tenant_active: bool = True) -> bool:
    """Whether this OAuth client may read as ``consumer`` now (``tenants.policy``)."""
    refusal = policy.oauth_client_refusal(
        policy.Use.KAFKA_CONSUMER_CLIENT,
        status=_status(client.active, policy.REVOKED),
        tenant_status=_status(tenant_active, policy.SUSPENDED),
        device_status=None,
        credential_policy=None,
        scopes=client.scopes,
        consumer_status=_status(consumer.active, policy.DISABLED),
    )
    return refusal is None


def consumer_bindings(
    tenant: str, consumer: ConsumerSnapshot, *, now: dt.datetime, tenant_active: bool = True
) -> list[AclBinding]:
    """The bindings of one consumer (unsorted): READ on each granted topic and on its own
    consumer groups, for each usable credential."""
    principals = [
        c.principal
        for c in consumer.certificates
        if consumer_certificate_usable(c, tenant=tenant, consumer=consumer, now=now, tenant_active=tenant_active)
    ]
    principals += [consumer_principal(tenant=tenant, consumer=consumer.slug, credential_id=c.client_id)
                   for c in consumer.clients if consumer_client_usable(c, consumer=consumer,
                                                                       tenant_active=tenant_active)]  # fmt: skip
    prefix = consumer_group_prefix(tenant=tenant, consumer=consumer.slug)
    bindings: list[AclBinding] = []
    for principal in principals:
        bindings += [consumer_topic_binding(principal, topic) for topic in consumer.topics]
        bindings.append(consumer_group_binding(principal, prefix))
    return bindings


def group_bindings(
    tenant: str, group: GroupSnapshot, *, now: dt.datetime, tenant_active: bool = True
) -> list[AclBinding]:
    """The bindings of one group (unsorted)."""
    if not group.kafka_direct:
        return []
    principals = [
        c.principal
        for c in group.certificates
        if certificate_usable(c, tenant=tenant, group=group, now=now, tenant_active=tenant_active)
    ]
    principals += [credential_principal(tenant=tenant, group=group.slug, credential_id=c.client_id)
                   for c in group.clients if client_usable(c, group=group, tenant_active=tenant_active)]  # fmt: skip
    return [credential_binding(principal, group.topic) for principal in principals]


def acl_bindings_for(tenant: TenantSnapshot, *, now: dt.datetime) -> list[AclBinding]:
    """Every binding ``tenant`` should have on the cluster at ``now``, sorted and without
    duplicates."""
    if not tenant.active:
        return []  # the policy refuses every credential of a suspended tenant
    bindings: list[AclBinding] = []
    for group in tenant.groups:
        # A grant outside the tenant's own namespace would be a cross-tenant leak; the
        # model cannot produce one (a group's stream is its tenant's), so refuse loudly.
        if not group.topic.startswith(tenant.topic_prefix):
            raise ValueError(f"{group.topic} is not a topic of tenant '{tenant.slug}'")
        bindings += group_bindings(tenant.slug, group, now=now, tenant_active=tenant.active)
    for consumer in tenant.consumers:
        for topic in consumer.topics:
            if not topic.startswith(tenant.topic_prefix):
                raise ValueError(f"{topic} is not a topic of tenant '{tenant.slug}'")
        bindings += consumer_bindings(tenant.slug, consumer, now=now, tenant_active=tenant.active)
    for binding in bindings:
        if managed_tenant_slugs(binding) != {tenant.slug}:
            raise ValueError(f"{binding.principal} is not a credential principal of tenant '{tenant.slug}'")
    return sorted_bindings(bindings)


def principal_parts(principal: str) -> tuple[str, str, str | None] | None:
    """(tenant, group, credential id or None) of a principal in Sluice's namespace, or None."""
    match = _MANAGED_PRINCIPAL.match(principal)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def consumer_principal_parts(principal: str) -> tuple[str, str, str] | None:
    """(tenant, consumer, credential id) of a consumer principal, or None."""
    match = _CONSUMER_PRINCIPAL.match(principal)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def managed_principal_tenant(principal: str) -> str | None:
    """The tenant (by slug) whose namespace ``principal`` lies in, or None."""
    parts = principal_parts(principal) or consumer_principal_parts(principal)
    return parts[0] if parts else None


def managed_tenant_slugs(binding: AclBinding) -> frozenset[str]:
    """The tenants (by slug) in whose namespace ``binding`` lies: the tenant of a
    ``User:<tenant>.<group>[.<id>]`` or ``User:<tenant>.consumers.<consumer>.<id>``
    principal and the tenant of a topic under
    ``iot.<tenant>.``.  Empty when the binding is none of Sluice's business."""
    slugs: set[str] = set()
    principal_tenant = managed_principal_tenant(binding.principal)
    if principal_tenant:
        slugs.add(principal_tenant)
    if binding.restype == ResourceType.TOPIC:
        topic = _TENANT_TOPIC.match(binding.name)
        if topic:
            slugs.add(topic.group(1))
    return frozenset(slugs)


def is_managed(binding: AclBinding, tenant_slug: str) -> bool:
    """Whether Sluice owns ``binding`` on behalf of ``tenant_slug`` (and may delete it)."""
    return tenant_slug in managed_tenant_slugs(binding)
