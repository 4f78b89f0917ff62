"""Who is acting, and the one function that writes the audit log."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import models, transaction

from config.request_id import current_request_id
from tenants.models import AuditEvent, Tenant

log = logging.getLogger("sluice.audit")


@dataclass(frozen=True)
class Actor:
    """The user (or system job) on whose behalf a service acts."""

    user: Any | None
    label: str

    @classmethod
    def of(cls, user: Any) -> Actor:
        # An OAuth service client acts without a user account: only its label is recorded.
        account = user if isinstance(user, models.Model) else None
        return cls(user=account, label=user.get_username())

    @classmethod
    def system(cls, job: str) -> Actor:
        return cls(user=None, label=f"system:{job}")


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, models.Model):
        return value.pk
    return value


def snapshot(obj: models.Model) -> dict[str, Any]:
    """The object's concrete fields as JSON-safe values (foreign keys as ids)."""
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        data[field.attname] = _plain(getattr(obj, field.attname))
    return data


def audit_record(
    *,
    actor: Actor,
    tenant: Tenant | None,
    action: str,
    obj: models.Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; call inside the service's transaction so it commits with the change."""
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk or "")
        object_repr = object_repr or str(obj)[:300]
    request_id = current_request_id()
    # One JSON line per provisioning action, once it has committed (a rolled-back change
    # did not happen).  Its object's id and kind only: never before/after (a snapshot may
    # hold what the log must not), nor the object's text.
    line = {"action": action, "actor": actor.label, "tenant": tenant.slug if tenant is not None else "",
            "object_type": object_type, "object_id": object_id, "outcome": "done",
            "request_id": request_id}  # fmt: skip
    transaction.on_commit(lambda: log.info("%s %s %s by %s", action, object_type, object_id, actor.label, extra=line))
    return AuditEvent.objects.create(
        tenant=tenant if tenant is not None and tenant.pk else None,
        tenant_slug=tenant.slug if tenant is not None else "",
        actor=actor.user,
        actor_label=actor.label,
        action=action,
        object_type=object_type,
        object_id=object_id,
        object_repr=object_repr,
        before=before,
        after=after,
        request_id=request_id,
    )
