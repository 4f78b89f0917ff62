"""Keep the cluster's ACLs equal to what the tenancy model implies (``ingest.acls``).

Three writers, all through the platform admin client (``User:sluice-admin``, a super user),
one at a time under a Redis lock, each writing one audit row per binding it changes:

* ``credential_acls_sync`` -- a few principals (a certificate issued, revoked, superseded or
  retired; an OAuth client created or revoked; a device's credentials): it asks the broker
  for those principals' bindings only (exact principal filters) and makes them match the
  database.  This is the path that ends a revoked credential's open Kafka session, so it
  stays small: a handful of DescribeAcls, one CreateAcls, one DeleteAcls.
* ``tenant_acls_sync`` -- a whole tenant (a group changed, the tenant suspended, resumed or
  deleted): it asks for the bindings on each of the tenant's topics (exact topic filters)
  and the prefixed consumer-group bindings (where its consumers' group grants are).
* ``acls_reconcile`` -- the backstop Celery beat runs: every binding on the cluster, every
  tenant, and the namespaces of tenants that no longer exist.

Kafka answers CreateAcls/DeleteAcls once the controller has committed the change to the
metadata log (KRaft); each broker's ``StandardAuthorizer`` applies it a moment later.
DescribeAcls is answered from the broker's authorizer, so after changing anything these
functions poll it (with the same narrow filters) until the broker agrees: "done" means the
next produce is decided by the new ACLs (on a multi-broker cluster, by the broker that
answered).

``queue_kafka_sync`` is how ``tenants.rights.rights_changed`` reaches this module: it names
the principals (or the tenant) a change concerns while the rows still exist, and queues the
matching Celery task after commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AdminClient,
    ResourceType,
)
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from redis.exceptions import LockError

from certs.models import Certificate
from devices.models import Device, DeviceGroup
from devices.selectors import consumer_list, consumer_topics
from ingest import observed
from ingest.acls import (
    CertificateFacts,
    ClientFacts,
    ConsumerSnapshot,
    GroupSnapshot,
    TenantSnapshot,
    acl_bindings_for,
    consumer_principal_parts,
    describe_binding,
    enum_name,
    is_managed,
    managed_principal_tenant,
    managed_tenant_slugs,
    principal_parts,
    sorted_bindings,
)
from ingest.kafka_admin import (
    ALL_ACLS,
    admin_client,
    await_acls,
    consumer_groups_filter,
    create_acls,
    delete_acls,
    described,
    described_quotas,
    existing_acls,
    principal_filter,
    topic_filter,
)
from ingest.quota_sync import quotas_sync
from ingest.quotas import (
    QuotaChanges,
    QuotaPlan,
    Quotas,
    describe_quota,
    desired_quotas,
    managed_entity_tenant,
    quota_changes,
    user_entity,
)
from tenants.audit import Actor, audit_record
from tenants.models import AuditEvent, Tenant
from tenants.oauth.models import OAuthClient
from tenants.scoping import Scope

if TYPE_CHECKING:
    from tenants.rights import RightsChange

LOCK_NAME = "sluice:lock:acls"
# A pass is a describe, a batch of changes and the propagation wait: well under a minute.
# The lock outlives a crashed holder by LOCK_TIMEOUT at most.
LOCK_TIMEOUT = 300
LOCK_WAIT = 120
# More principals than this in one change (a policy switch revoking a fleet, a bulk
# issuance) are synced as the whole tenant: a few topic describes beat thousands of
# principal describes.
MAX_PRINCIPALS_PER_SYNC = 64


@dataclass
class AclSyncReport:
    """What a sync changed, one ``describe_binding`` line per binding (and one line per
    client quota entity it set or removed)."""

    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    quotas: list[str] = field(default_factory=list)


@dataclass
class AclDriftReport:
    """What reconcile found (``missing``: wanted but absent; ``stale``: managed but not
    wanted) and, with ``fix``, what it changed."""

    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Per tenant slug (every live one, and every gone one with bindings left): how many
    # bindings were missing or stale (sluice_acl_drift_bindings).
    per_tenant: dict[str, int] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        return bool(self.missing or self.stale)


@contextmanager
def acl_lock() -> Iterator[redis.lock.Lock]:
    """One ACL writer at a time, cluster-wide.  Without it a reconcile that read "active"
    just before a suspension committed could re-grant the tenant after the suspension's
    own sync removed its ACLs.  Every writer reads the database and the cluster inside the
    lock, and the suspension's sync is queued after its commit, so the last writer always
    saw the latest state.  Redis errors (including a lock not obtained in time) make the
    Celery task retry."""
    client = redis.Redis.from_url(settings.SLUICE_RUNTIME.redis_url(), socket_timeout=5)
    lock = client.lock(LOCK_NAME, timeout=LOCK_TIMEOUT, blocking_timeout=LOCK_WAIT)
    if not lock.acquire():
        raise LockError(f"{LOCK_NAME} is held by another ACL writer")
    try:
        yield lock
    finally:
        lock.release()


def _admin() -> AdminClient:
    return admin_client(settings.SLUICE_RUNTIME)


# -- what the database says ------------------------------------------------------------------


def _client_id(principal: str) -> str:
    return principal.rsplit(".", 1)[-1]


def tenant_snapshot(tenant: Tenant, *, principals: Iterable[str] | None = None) -> TenantSnapshot:
    """The model's view of ``tenant`` as ``acl_bindings_for`` takes it; with ``principals``,
    only the credentials that could be those principals (the rest of the tenant is left
    out, so the bindings it yields are those principals' only)."""
    certificates = Certificate.objects.filter(
        tenant=tenant,
        status__in=(Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED),
        device__group__kafka_direct=True,
    ).exclude(kafka_principal="")
    clients = OAuthClient.objects.filter(
        tenant=tenant, status=OAuthClient.Status.ACTIVE, kind__in=(OAuthClient.Kind.DEVICE, OAuthClient.Kind.GATEWAY)
    ).filter(Q(device__group__kafka_direct=True) | Q(group__kafka_direct=True))
    if principals is not None:
        wanted = sorted(set(principals))
        certificates = certificates.filter(kafka_principal__in=wanted)
        clients = clients.filter(client_id__in=[_client_id(p) for p in wanted])
    by_group: dict[int, tuple[list[CertificateFacts], list[ClientFacts]]] = {}
    for group_id, principal, status, not_after, overlap_until, device_status in certificates.values_list(
        "device__group_id", "kafka_principal", "status", "not_after", "overlap_until", "device__status"
    ):
        facts = CertificateFacts(principal=principal, status=status, not_after=not_after, overlap_until=overlap_until,
                                 device_active=device_status == Device.Status.ACTIVE)  # fmt: skip
        by_group.setdefault(group_id, ([], []))[0].append(facts)
    for client_id, scopes, device_group_id, gateway_group_id, device_status in clients.values_list(
        "client_id", "scopes", "device__group_id", "group_id", "device__status"
    ):
        device_active = None if device_status is None else device_status == Device.Status.ACTIVE
        client = ClientFacts(client_id=client_id, active=True, scopes=frozenset(scopes or ()),
                             device_active=device_active)  # fmt: skip
        by_group.setdefault(device_group_id or gateway_group_id, ([], []))[1].append(client)
    groups = DeviceGroup.objects.filter(tenant=tenant).select_related("stream", "tenant").order_by("slug")
    return TenantSnapshot(
        slug=tenant.slug,
        active=tenant.is_active,
        consumers=_consumer_snapshots(tenant, principals=wanted if principals is not None else None),
        groups=tuple(
            GroupSnapshot(slug=g.slug, topic=g.stream.topic, kafka_direct=g.kafka_direct,
                          credential_policy=g.credential_policy,
                          certificates=tuple(by_group.get(g.pk, ([], []))[0]),
                          clients=tuple(by_group.get(g.pk, ([], []))[1]))
            for g in groups
        ),
    )  # fmt: skip


def _consumer_snapshots(tenant: Tenant, *, principals: list[str] | None) -> tuple[ConsumerSnapshot, ...]:
    """The tenant's consumers as ``acl_bindings_for`` takes them (with ``principals``, only
    the credentials that could be those principals)."""
    usable = (Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED)
    certificates = Certificate.objects.filter(tenant=tenant, status__in=usable, consumer__isnull=False).exclude(
        kafka_principal=""
    )
    clients = OAuthClient.objects.filter(tenant=tenant, status=OAuthClient.Status.ACTIVE,
                                         kind=OAuthClient.Kind.CONSUMER)  # fmt: skip
    if principals is not None:
        certificates = certificates.filter(kafka_principal__in=principals)
        clients = clients.filter(client_id__in=[_client_id(p) for p in principals])
    certs_of: dict[int, list[CertificateFacts]] = {}
    for consumer_id, principal, status, not_after, overlap_until in certificates.values_list(
        "consumer_id", "kafka_principal", "status", "not_after", "overlap_until"
    ):
        facts = CertificateFacts(principal=principal, status=status, not_after=not_after, overlap_until=overlap_until)
        certs_of.setdefault(consumer_id, []).append(facts)
    clients_of: dict[int, list[ClientFacts]] = {}
    for consumer_id, client_id, scopes in clients.values_list("consumer_id", "client_id", "scopes"):
        clients_of.setdefault(consumer_id, []).append(
            ClientFacts(client_id=client_id, active=True, scopes=frozenset(scopes or ()))
        )
    snapshots = []
    for consumer in consumer_list(scope=Scope.of_tenant(tenant)).order_by("slug"):
        topics = consumer_topics(consumer=consumer)
        snapshots.append(ConsumerSnapshot(slug=consumer.slug, active=consumer.is_active, topics=tuple(topics),
                                          certificates=tuple(certs_of.get(consumer.pk, ())),
                                          clients=tuple(clients_of.get(consumer.pk, ()))))  # fmt: skip
    return tuple(snapshots)


def desired_acls(
    tenant_slug: str, *, principals: Iterable[str] | None = None, now: dt.datetime | None = None
) -> list[AclBinding]:
    """The bindings the database says ``tenant_slug`` should have (none once it is gone);
    with ``principals``, those principals' bindings only."""
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None:
        return []
    wanted = None if principals is None else set(principals)
    bindings = acl_bindings_for(tenant_snapshot(tenant, principals=wanted), now=now or timezone.now())
    return bindings if wanted is None else [b for b in bindings if b.principal in wanted]


def tenant_topics(tenant_slug: str) -> list[str]:
    """The topics the database names for ``tenant_slug`` (its streams and its DLQ)."""
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None:
        return []
    return sorted({s.topic for s in tenant.streams.select_related("tenant")} | {tenant.dlq_topic})


# -- what the cluster says -------------------------------------------------------------------


def _tenant_for_audit(slug: str) -> Tenant:
    # An unsaved Tenant keeps the slug in the audit row when the tenant is gone.
    return Tenant.objects.filter(slug=slug).first() or Tenant(slug=slug)


def _audit(actor: Actor, tenant_slug: str, action: str, bindings: list[AclBinding]) -> None:
    if not bindings:
        return
    tenant = _tenant_for_audit(tenant_slug)
    for binding in bindings:
        line = describe_binding(binding)
        record = {
            "principal": binding.principal,
            "resource_type": enum_name(binding.restype),
            "resource_name": binding.name,
            "pattern_type": enum_name(binding.resource_pattern_type),
            "operation": enum_name(binding.operation),
            "permission": enum_name(binding.permission_type),
            "host": binding.host,
        }
        before, after = (record, None) if action == "acl.delete" else (None, record)
        audit_record(actor=actor, tenant=tenant, action=action, object_type="kafka.acl", object_repr=line,
                     before=before, after=after)  # fmt: skip


def _apply(
    admin: AdminClient,
    actor: Actor,
    changes: dict[str, tuple[list[AclBinding], list[AclBinding]]],
    lock: redis.lock.Lock | None = None,
    await_filters: list[AclBindingFilter] | None = None,
) -> None:
    """``changes`` maps a tenant slug to (create, delete).  Creates before deleting, so a
    grant that moves (a group changing streams) is never briefly absent; audits what Kafka
    accepted right away, so a later failure or retry cannot lose an audit row; then waits
    until the broker's authorizer agrees (asking with ``await_filters``, or for everything)."""
    failures: list[KafkaException] = []
    for slug, (create, delete) in sorted(changes.items()):
        if lock is not None:
            # A long pass (a slow cluster, many tenants) must not outlive its lock: another
            # writer could then apply a newer state that this pass overwrites with an older
            # one.  Renewing raises LockNotOwnedError if the lock was already lost, which
            # aborts the pass; the task retries with a fresh read.
            lock.reacquire()
        created, create_failure = create_acls(admin, create)
        deleted, delete_failure = delete_acls(admin, delete)
        _audit(actor, slug, "acl.create", created)
        _audit(actor, slug, "acl.delete", deleted)
        failures += [f for f in (create_failure, delete_failure) if f is not None]
    if failures:
        raise failures[0]
    await_acls(admin, await_filters if await_filters is not None else [ALL_ACLS],
                present=[b for c, _ in changes.values() for b in c],
                absent=[b for _, d in changes.values() for b in d])  # fmt: skip


def _sync(
    admin: AdminClient,
    actor: Actor,
    lock: redis.lock.Lock,
    tenant_slug: str,
    filters: list[AclBindingFilter],
    wanted: set[AclBinding],
    quota_entities: list[str] | None,
    scope: set[AclBinding] | None = None,
) -> AclSyncReport:
    """Make the managed bindings ``filters`` find exactly the part of ``wanted`` they cover,
    then the client quotas of ``quota_entities`` (None: every one in the tenant's namespace).
    ``scope``, when given, limits what may be deleted (the bindings a narrower sync owns)."""
    foreign = [b for b in wanted if not is_managed(b, tenant_slug)]
    if foreign:
        raise ValueError(f"not in tenant '{tenant_slug}''s namespace: {[describe_binding(b) for b in foreign]}")
    existing = {b for b in described(admin, filters) if is_managed(b, tenant_slug)}
    if scope is not None:
        existing &= scope
    create = sorted_bindings(wanted - existing)
    delete = sorted_bindings(existing - wanted)
    # Wait on the changed principals alone when they are few: re-reading a topic with tens of
    # thousands of bindings on every poll would cost seconds each.
    changed = {b.principal for b in (*create, *delete)}
    narrow = [principal_filter(p) for p in sorted(changed)] if len(changed) <= MAX_PRINCIPALS_PER_SYNC else filters
    _apply(admin, actor, {tenant_slug: (create, delete)}, lock, await_filters=narrow)
    # The same principals' client quotas: every granted principal gets its tenant's plan.
    quotas = quotas_sync(actor=actor, tenant_slug=tenant_slug, desired=_desired_quotas(tenant_slug, wanted),
                         entities=quota_entities)  # fmt: skip
    return AclSyncReport(created=[describe_binding(b) for b in create], deleted=[describe_binding(b) for b in delete],
                         quotas=_quota_lines(quotas))  # fmt: skip


def _desired_quotas(tenant_slug: str, granted: Iterable[AclBinding]) -> dict[str, Quotas]:
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None:
        return {}
    plan = QuotaPlan(producer_byte_rate=tenant.kafka_producer_byte_rate,
                     request_percentage=tenant.kafka_request_percentage,
                     consumer_byte_rate=tenant.kafka_consumer_byte_rate)  # fmt: skip
    return desired_quotas({b.principal for b in granted}, plan)


def _quota_lines(changes: QuotaChanges) -> list[str]:
    return [describe_quota(e, q) for e, q in sorted(changes.set.items())] + [
        f"QUOTA user={e} remove {' '.join(keys)}" for e, keys in sorted(changes.remove.items())
    ]


def tenant_acls_sync(
    *,
    tenant_slug: str,
    topics: Iterable[str] = (),
    desired: list[AclBinding] | None = None,
    actor: Actor | None = None,
) -> AclSyncReport:
    """Make the ACLs on ``tenant_slug``'s topics exactly ``desired``; by default, what the
    database says now (its Kafka-direct credentials' grants while active, nothing while
    suspended or once deleted).  The tenant's topics are those the database names plus
    ``topics`` (a deleted tenant's, passed by whoever deleted it).  The database is read
    when this runs, under the lock, not when the task was queued, so late or repeated runs
    are harmless."""
    actor = actor or Actor.system("acl-sync")
    with acl_lock() as lock:
        wanted = set(desired_acls(tenant_slug) if desired is None else desired)
        granted_topics = {b.name for b in wanted if b.restype == ResourceType.TOPIC}
        names = sorted(set(tenant_topics(tenant_slug)) | set(topics) | granted_topics)
        # and the consumers' group grants (a suspended or deleted tenant's included)
        filters = [*(topic_filter(t) for t in names), consumer_groups_filter()]
        return _sync(_admin(), actor, lock, tenant_slug, filters, wanted, None)


def credential_acls_sync(*, tenant_slug: str, principals: Iterable[str], actor: Actor | None = None) -> AclSyncReport:
    """Make the ACLs of exactly these principals (all in ``tenant_slug``'s namespace) what
    the database says now: one exact-principal DescribeAcls each, no cluster-wide listing."""
    actor = actor or Actor.system("acl-sync")
    names = sorted({p for p in principals if managed_principal_tenant(p) == tenant_slug})
    if not names:
        return AclSyncReport()
    with acl_lock() as lock:
        wanted = set(desired_acls(tenant_slug, principals=names))
        return _sync(_admin(), actor, lock, tenant_slug, [principal_filter(p) for p in names], wanted,
                     [user_entity(p) for p in names])  # fmt: skip


def acls_reconcile(*, fix: bool, actor: Actor | None = None) -> AclDriftReport:
    """Compare every tenant's namespace with the model, including namespaces whose tenant
    no longer exists (their bindings are all stale); with ``fix``, repair it."""
    actor = actor or Actor.system("acl-reconcile")
    with acl_lock() as lock:
        report = _reconcile(_admin(), actor, fix=fix, lock=lock)
    observed.record_acl_drift(report.per_tenant)
    return report


def _reconcile(admin: AdminClient, actor: Actor, *, fix: bool, lock: redis.lock.Lock | None = None) -> AclDriftReport:
    existing = existing_acls(admin)
    live = {t.slug for t in Tenant.objects.all()}
    # A namespace whose tenant is gone is cleaned only if that tenant really existed (its
    # deletion is in the audit log): an ACL that merely looks like "User:<x>.<y>" or sits on
    # a topic "iot.<x>.…" without such a tenant belongs to someone else and is left alone.
    deleted = set(AuditEvent.objects.filter(action="tenant.delete").values_list("tenant_slug", flat=True))
    seen = {slug for b in existing for slug in managed_tenant_slugs(b)} & deleted
    report = AclDriftReport()
    changes: dict[str, tuple[list[AclBinding], list[AclBinding]]] = {}
    # A binding in two tenants' namespaces (a cross-tenant stray) is deleted once.
    claimed: set[AclBinding] = set()
    by_tenant: dict[str, set[AclBinding]] = {}
    for binding in existing:
        for slug in managed_tenant_slugs(binding):
            by_tenant.setdefault(slug, set()).add(binding)
    now = timezone.now()
    for slug in sorted(live | seen):
        wanted = set(desired_acls(slug, now=now)) if slug in live else set()
        mine = by_tenant.get(slug, set())
        create = sorted_bindings(wanted - mine)
        delete = sorted_bindings(mine - wanted - claimed)
        claimed |= set(delete)
        report.per_tenant[slug] = len(create) + len(delete)
        if create or delete:
            changes[slug] = (create, delete)
            report.missing += [describe_binding(b) for b in create]
            report.stale += [describe_binding(b) for b in delete]
    if fix and changes:
        _apply(admin, actor, changes, lock)
        report.created, report.deleted = list(report.missing), list(report.stale)
    _reconcile_quotas(actor, report, fix=fix, live=live, deleted=deleted, now=now)
    return report


def _reconcile_quotas(
    actor: Actor, report: AclDriftReport, *, fix: bool, live: set[str], deleted: set[str], now: dt.datetime
) -> None:
    """Every user quota in a namespace Sluice had (a live tenant's, or a deleted one's, as
    for ACLs) against the model: one describe of all user quotas."""
    by_tenant: dict[str, dict[str, Quotas]] = {}
    for entity, quotas in described_quotas(None).items():
        slug = managed_entity_tenant(entity)
        if slug is not None:
            by_tenant.setdefault(slug, {})[entity] = quotas
    for slug in sorted(live | (set(by_tenant) & deleted)):
        existing = by_tenant.get(slug, {})
        desired = _desired_quotas(slug, desired_acls(slug, now=now)) if slug in live else {}
        if not existing and not desired:
            continue
        changes = quota_changes(existing, desired)
        to_set = _quota_lines(QuotaChanges(set=changes.set, remove={}))
        to_remove = _quota_lines(QuotaChanges(set={}, remove=changes.remove))
        report.missing += to_set
        report.stale += to_remove
        if fix and changes:
            quotas_sync(actor=actor, tenant_slug=slug, desired=desired, entities=sorted(set(existing) | set(desired)))
            report.created += to_set
            report.deleted += to_remove


# -- from an announced change to the Kafka work it needs ------------------------------------


@dataclass(frozen=True)
class KafkaScope:
    """What one change needs on Kafka: a whole tenant (``principals`` None; ``topics`` are
    its topics as the database names them now, kept for when the rows are gone) or a few
    principals of it."""

    tenant_slug: str
    principals: tuple[str, ...] | None
    topics: tuple[str, ...] = ()


def kafka_scope(change: RightsChange, extra_principals: Iterable[str] = ()) -> KafkaScope | None:
    """Resolve an announced change to what Kafka needs, while its rows still exist (a
    deleted device's certificates and clients are gone after the commit).  A group or
    tenant change is the whole tenant.  A credential change is the principals it names, kept
    only where their group has Kafka-direct access now: no other principal can hold a grant
    (a group that loses Kafka-direct access is a group change, synced whole).  None when
    nothing on Kafka can be concerned."""
    tenant = Tenant.objects.filter(pk=change.tenant_id).first()
    if tenant is None:
        return None
    if change.whole_tenant or change.groups:
        return KafkaScope(tenant.slug, None, tuple(tenant_topics(tenant.slug)))
    candidates = set(extra_principals)
    certificates = Certificate.objects.filter(tenant=tenant).exclude(kafka_principal="")
    if change.certificates:
        candidates |= set(certificates.filter(serial__in=change.certificates).values_list("kafka_principal", flat=True))
    if change.devices:
        usable = (Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED)
        candidates |= set(certificates.filter(device_id__in=change.devices, status__in=usable)
                          .values_list("kafka_principal", flat=True))  # fmt: skip
    if change.clients or change.devices:
        clients = OAuthClient.objects.filter(tenant=tenant).filter(
            Q(client_id__in=change.clients) | Q(device_id__in=change.devices)
        )
        for client in clients.select_related("device__group__tenant", "group__tenant"):
            if client.kafka_principal is not None:
                candidates.add(f"User:{client.kafka_principal}")
    direct = set(DeviceGroup.objects.filter(tenant=tenant, kafka_direct=True).values_list("slug", flat=True))
    principals = {p for p in candidates if (parts := principal_parts(p)) and parts[0] == tenant.slug
                  and parts[1] in direct}  # fmt: skip
    # A consumer's credentials hold grants whatever the groups do.
    principals |= {p for p in candidates if (parts := consumer_principal_parts(p)) and parts[0] == tenant.slug}
    if not principals:
        return None
    if len(principals) > MAX_PRINCIPALS_PER_SYNC:
        return KafkaScope(tenant.slug, None, tuple(tenant_topics(tenant.slug)))
    return KafkaScope(tenant.slug, tuple(sorted(principals)))
