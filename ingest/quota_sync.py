"""Keep the cluster's client quotas equal to what the tenancy model implies (``ingest.quotas``).

A thin shell over ``ingest.kafka_admin`` (which sends the requests and waits), called by
``ingest.acl_sync`` under its lock for the same scope as the ACLs it just synced (a few
principals, or a tenant), and by its reconcile.  One audit row per entity changed; afterwards
it waits until the broker agrees, as the ACL sync does."""

from __future__ import annotations

from ingest.kafka_admin import alter_quotas, await_quotas, described_quotas
from ingest.quotas import QuotaChanges, Quotas, describe_quota, managed_entity_tenant, quota_changes
from tenants.audit import Actor, audit_record
from tenants.models import Tenant


def _audit(actor: Actor, tenant_slug: str, changes: QuotaChanges, existing: dict[str, Quotas]) -> None:
    tenant = Tenant.objects.filter(slug=tenant_slug).first() or Tenant(slug=tenant_slug)
    for entity in sorted(set(changes.set) | set(changes.remove)):
        before = existing.get(entity) or None
        after = {k: v for k, v in {**(before or {}), **changes.set.get(entity, {})}.items()
                 if k not in changes.remove.get(entity, ())}  # fmt: skip
        action = "kafka_quota.set" if after else "kafka_quota.remove"
        audit_record(actor=actor, tenant=tenant, action=action, object_type="kafka.quota",
                     object_repr=describe_quota(entity, after or before or {}), before=before,
                     after=after or None)  # fmt: skip


def quotas_sync(
    *, actor: Actor, tenant_slug: str, desired: dict[str, Quotas], entities: list[str] | None
) -> QuotaChanges:
    """Make the quotas of ``entities`` (or, when None, of every user entity in
    ``tenant_slug``'s namespace) exactly ``desired``.  Call under the ACL lock."""
    found = described_quotas(entities)
    scope = {e for e in (entities if entities is not None else found) if managed_entity_tenant(e) == tenant_slug}
    scope |= set(desired)
    existing = {e: q for e, q in found.items() if e in scope}
    changes = quota_changes(existing, desired)
    if changes:
        alter_quotas(changes)
        _audit(actor, tenant_slug, changes, existing)
        await_quotas(entities, desired, scope)
    return changes
