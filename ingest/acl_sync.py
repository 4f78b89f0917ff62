"""Keep the cluster's ACLs equal to what the tenancy model implies (``ingest.acls``).

``tenant_acls_sync`` makes one tenant's namespace match a desired list (by default, what
the database says): it creates what is missing and deletes the managed bindings nobody
wants any more.  ``acls_reconcile`` does that for every tenant, and also clears the
namespaces of tenants that no longer exist.  Both go through the platform admin client
(``User:sluice-admin``, a super user), run one at a time under a Redis lock, and write one
audit row per binding they change.

Kafka answers CreateAcls/DeleteAcls once the controller has committed the change to the
metadata log (KRaft); each broker's ``StandardAuthorizer`` applies it a moment later.
DescribeAcls is answered from the broker's authorizer, so after changing anything these
functions poll it until the broker agrees: "done" means the next produce is decided by the
new ACLs (on a multi-broker cluster, by the broker that answered).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from django.conf import settings
from redis.exceptions import LockError

from ingest.acls import (
    TenantSnapshot,
    acl_bindings_for,
    describe_binding,
    group_snapshot,
    is_managed,
    managed_tenant_slugs,
    sorted_bindings,
)
from tenants.audit import Actor, audit_record
from tenants.models import AuditEvent, Tenant

TIMEOUT = 30.0
PROPAGATION_WAIT = 30.0
LOCK_NAME = "sluice:lock:acls"
# A pass is a describe, a batch of changes and the propagation wait: well under a minute.
# The lock outlives a crashed holder by LOCK_TIMEOUT at most.
LOCK_TIMEOUT = 300
LOCK_WAIT = 120
# Kafka filters match principals exactly, never by prefix, so a tenant's namespace
# (``User:<slug>.*``, ``iot.<slug>.*``) cannot be asked for; every binding is listed once
# and classified here.  A cluster holds two per device group, so this stays small.
ALL_ACLS = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                            AclPermissionType.ANY)  # fmt: skip


@dataclass
class AclSyncReport:
    """What a sync changed, one ``describe_binding`` line per binding."""

    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


@dataclass
class AclDriftReport:
    """What reconcile found (``missing``: wanted but absent; ``stale``: managed but not
    wanted) and, with ``fix``, what it changed."""

    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

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
    from ingest.kafka import admin_client

    return admin_client(settings.SLUICE_RUNTIME)


def tenant_snapshot(tenant: Tenant) -> TenantSnapshot:
    """The model's view of ``tenant`` as ``acl_bindings_for`` takes it."""
    groups = tenant.groups.select_related("stream", "tenant").order_by("slug")
    return TenantSnapshot(
        slug=tenant.slug,
        active=tenant.is_active,
        groups=tuple(group_snapshot(tenant=tenant.slug, group=g.slug, topic=g.stream.topic) for g in groups),
    )


def desired_acls(tenant_slug: str) -> list[AclBinding]:
    """The bindings the database says ``tenant_slug`` should have (none once it is gone)."""
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    return [] if tenant is None else acl_bindings_for(tenant_snapshot(tenant))


def existing_acls(admin: AdminClient) -> list[AclBinding]:
    return sorted_bindings(admin.describe_acls(ALL_ACLS, request_timeout=TIMEOUT).result(TIMEOUT))


def exact_filter(binding: AclBinding) -> AclBindingFilter:
    """A filter that matches ``binding`` and nothing else (LITERAL/PREFIXED, never MATCH)."""
    return AclBindingFilter(binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
                            binding.host, binding.operation, binding.permission_type)  # fmt: skip


def _create(admin: AdminClient, bindings: list[AclBinding]) -> tuple[list[AclBinding], KafkaException | None]:
    """Create ``bindings``; returns those the controller accepted and the first failure."""
    done: list[AclBinding] = []
    failure: KafkaException | None = None
    for binding, future in (admin.create_acls(bindings, request_timeout=TIMEOUT) if bindings else {}).items():
        try:
            future.result(TIMEOUT)
        except KafkaException as exc:
            failure = failure or exc
        else:
            done.append(binding)
    return done, failure


def _delete(admin: AdminClient, bindings: list[AclBinding]) -> tuple[list[AclBinding], KafkaException | None]:
    """Delete exactly ``bindings``; returns those Kafka reports deleted and the first failure."""
    done: list[AclBinding] = []
    failure: KafkaException | None = None
    filters = [exact_filter(b) for b in bindings]
    for future in (admin.delete_acls(filters, request_timeout=TIMEOUT) if filters else {}).values():
        try:
            done += future.result(TIMEOUT)
        except KafkaException as exc:
            failure = failure or exc
    return sorted_bindings(done), failure


def _await_acls(admin: AdminClient, *, present: Iterable[AclBinding], absent: Iterable[AclBinding]) -> None:
    wanted, unwanted = set(present), set(absent)
    if not wanted and not unwanted:
        return
    deadline = time.monotonic() + PROPAGATION_WAIT
    while time.monotonic() < deadline:
        found = set(existing_acls(admin))
        if wanted <= found and not (unwanted & found):
            return
        time.sleep(0.2)
    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "ACL changes did not reach the broker's authorizer"))


def _tenant_for_audit(slug: str) -> Tenant:
    # An unsaved Tenant keeps the slug in the audit row when the tenant is gone.
    return Tenant.objects.filter(slug=slug).first() or Tenant(slug=slug)


def _audit(actor: Actor, tenant_slug: str, action: str, bindings: list[AclBinding]) -> None:
    tenant = _tenant_for_audit(tenant_slug)
    for binding in bindings:
        line = describe_binding(binding)
        record = {
            "principal": binding.principal,
            "resource_type": binding.restype.name,
            "resource_name": binding.name,
            "pattern_type": binding.resource_pattern_type.name,
            "operation": binding.operation.name,
            "permission": binding.permission_type.name,
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
) -> None:
    """``changes`` maps a tenant slug to (create, delete).  Creates before deleting, so a
    grant that moves (a group changing streams) is never briefly absent; audits what Kafka
    accepted right away, so a later failure or retry cannot lose an audit row; then waits
    until the broker's authorizer agrees."""
    failures: list[KafkaException] = []
    for slug, (create, delete) in sorted(changes.items()):
        if lock is not None:
            # A long pass (a slow cluster, many tenants) must not outlive its lock: another
            # writer could then apply a newer state that this pass overwrites with an older
            # one.  Renewing raises LockNotOwnedError if the lock was already lost, which
            # aborts the pass; the task retries with a fresh read.
            lock.reacquire()
        created, create_failure = _create(admin, create)
        deleted, delete_failure = _delete(admin, delete)
        _audit(actor, slug, "acl.create", created)
        _audit(actor, slug, "acl.delete", deleted)
        failures += [f for f in (create_failure, delete_failure) if f is not None]
    if failures:
        raise failures[0]
    _await_acls(admin, present=[b for c, _ in changes.values() for b in c],
                absent=[b for _, d in changes.values() for b in d])  # fmt: skip


def tenant_acls_sync(
    *, tenant_slug: str, desired: list[AclBinding] | None = None, actor: Actor | None = None
) -> AclSyncReport:
    """Make the ACLs in ``tenant_slug``'s namespace exactly ``desired``; by default, what
    the database says now (its groups' grants while active, nothing while suspended or once
    deleted).  The database is read when this runs, under the lock, not when the task was
    queued, so late or repeated runs are harmless."""
    actor = actor or Actor.system("acl-sync")
    with acl_lock() as lock:
        admin = _admin()
        wanted = set(desired_acls(tenant_slug) if desired is None else desired)
        foreign = [b for b in wanted if not is_managed(b, tenant_slug)]
        if foreign:
            raise ValueError(f"not in tenant '{tenant_slug}''s namespace: {[describe_binding(b) for b in foreign]}")
        existing = {b for b in existing_acls(admin) if is_managed(b, tenant_slug)}
        create = sorted_bindings(wanted - existing)
        delete = sorted_bindings(existing - wanted)
        _apply(admin, actor, {tenant_slug: (create, delete)}, lock)
    return AclSyncReport(created=[describe_binding(b) for b in create], deleted=[describe_binding(b) for b in delete])


def acls_reconcile(*, fix: bool, actor: Actor | None = None) -> AclDriftReport:
    """Compare every tenant's namespace with the model, including namespaces whose tenant
    no longer exists (their bindings are all stale); with ``fix``, repair it."""
    actor = actor or Actor.system("acl-reconcile")
    with acl_lock() as lock:
        return _reconcile(_admin(), actor, fix=fix, lock=lock)


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
    for slug in sorted(live | seen):
        wanted = set(desired_acls(slug)) if slug in live else set()
        mine = {b for b in existing if is_managed(b, slug)}
        create = sorted_bindings(wanted - mine)
        delete = sorted_bindings(mine - wanted - claimed)
        claimed |= set(delete)
        if create or delete:
            changes[slug] = (create, delete)
            report.missing += [describe_binding(b) for b in create]
            report.stale += [describe_binding(b) for b in delete]
    if fix and changes:
        _apply(admin, actor, changes, lock)
        report.created, report.deleted = list(report.missing), list(report.stale)
    return report
