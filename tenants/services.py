"""Writes on tenants, memberships and API tokens.  Each is atomic, audited, and sends its
Kafka side effects only after the transaction commits."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.errors import Conflict, InvalidInput, validate_model
from config.hooks import Hook
from tenants.audit import Actor, audit_record, snapshot
from tenants.authentication import TOKEN_PREFIX
from tenants.hashing import hash_token
from tenants.models import ApiToken, Membership, RetiredSlug, Tenant
from tenants.rights import rights_changed
from tenants.scoping import Scope
from tenants.selectors import membership_list

TENANT_FIELDS = ("name", "max_devices", "max_records_per_second", "max_bytes_per_second", "max_streams",
                 "max_partitions", "topic_deletion_policy", "kafka_producer_byte_rate",
                 "kafka_consumer_byte_rate", "kafka_request_percentage")  # fmt: skip
# How long a deleted tenant's slug stays reserved when its topics went with it: longer than
# any of its credentials could still act somewhere (access tokens live at most 1 h, the
# broker's and nginx's CRL caches about 30 s), with a wide margin.
SLUG_RESERVATION = dt.timedelta(hours=24)


# A tenant's life reaches the layers above this one: certs gives a new tenant its issuing CA
# and revokes a deleted one's; ingest provisions its DLQ topic and deletes its topics and
# subjects.  They connect in their AppConfig.ready(), so tenants never imports them.
# tenant_created(actor, tenant): inside the creating transaction, after the tenant row.
tenant_created = Hook("tenants.services.tenant_created")
# tenant_deleting(actor, tenant): inside the deleting transaction, before any row goes.
tenant_deleting = Hook("tenants.services.tenant_deleting")
# tenant_deleted(topics, prefix): inside the deleting transaction, after the rows went;
# ``topics`` are the ones the tenant's policy deletes, ``prefix`` its topic prefix.
tenant_deleted = Hook("tenants.services.tenant_deleted")


def tenant_create(*, actor: Actor, slug: str, name: str, **quotas: Any) -> Tenant:
    tenant = Tenant(slug=slug, name=name, **quotas)
    validate_model(tenant)
    with transaction.atomic():
        _claim_slug(slug)
        tenant.save()
        audit_record(actor=actor, tenant=tenant, action="tenant.create", obj=tenant, after=snapshot(tenant))
        tenant_created(actor=actor, tenant=tenant)
    return tenant


def _claim_slug(slug: str) -> None:
    """Refuse a slug a deleted tenant still holds (``RetiredSlug``); forget a reservation
    that has run out.  Call inside the creating transaction."""
    retired = RetiredSlug.objects.filter(slug=slug).first()
    if retired is None:
        return
    if retired.reserved_until is not None and retired.reserved_until <= timezone.now():
        retired.delete()
        return
    if retired.reserved_until is None:
        when = (f"while its Kafka topics ({', '.join(retired.topics_kept) or f'iot.{slug}.*'}) are kept; an operator "
                f"releases it with 'manage.py sluice_release_slug {slug}' once they are deleted")  # fmt: skip
    else:
        when = f"until {retired.reserved_until:%Y-%m-%d %H:%M} UTC, longer than any of its credentials could live"
    message = (f"The slug '{slug}' belonged to a tenant deleted on {retired.deleted_at:%Y-%m-%d %H:%M} UTC; "
               f"it stays reserved {when}.")  # fmt: skip
    raise Conflict(message, code="slug_retired", fields=[{"pointer": "/slug", "code": "slug_retired",
                                                          "message": message}])  # fmt: skip


def tenant_update(*, actor: Actor, tenant: Tenant, **changes: Any) -> Tenant:
    unknown = set(changes) - set(TENANT_FIELDS)
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))} of a tenant.")
    before = snapshot(tenant)
    for key, value in changes.items():
        setattr(tenant, key, value)
    validate_model(tenant)
    with transaction.atomic():
        tenant.save()
        audit_record(actor=actor, tenant=tenant, action="tenant.update", obj=tenant, before=before,
                     after=snapshot(tenant))  # fmt: skip
        # The ingest limits of every device of the tenant may have changed.
        rights_changed(tenant_id=tenant.pk, whole_tenant=True)
    return tenant


def tenant_set_status(*, actor: Actor, tenant: Tenant, status: str) -> Tenant:
    """Suspend or resume.  Ingest reads the status on every request, so a suspension takes
    effect at once; on Kafka it takes effect when the ACL sync queued here removes the
    tenant's grants (a suspended tenant has none, see ingest.acls)."""
    if status not in Tenant.Status.values:
        raise InvalidInput(f"Unknown status '{status}'.")
    before = snapshot(tenant)
    with transaction.atomic():
        Tenant.objects.filter(pk=tenant.pk).update(status=status)
        tenant.refresh_from_db()
        action = "tenant.suspend" if status == Tenant.Status.SUSPENDED else "tenant.resume"
        audit_record(actor=actor, tenant=tenant, action=action, obj=tenant, before=before, after=snapshot(tenant))
        # Also the Kafka ACL sync that removes (or restores) the tenant's grants.
        rights_changed(tenant_id=tenant.pk, whole_tenant=True)
    return tenant


def tenant_delete(*, actor: Actor, tenant: Tenant, confirm: str) -> list[str]:
    """Delete a tenant after the caller typed its slug.  Revokes its issuing CAs (so every
    device certificate stops working), removes its memberships (so its users' tokens lose
    access), deletes or keeps its topics by the tenant's policy (and its schema subjects
    with deleted topics), and reserves its slug (``RetiredSlug``): for ``SLUG_RESERVATION``,
    or until an operator releases it when topics were kept.  Returns the topics scheduled
    for deletion."""
    if confirm != tenant.slug:
        raise InvalidInput(
            f"To delete tenant '{tenant.slug}', confirm with its slug.",
            fields=[{"pointer": "/confirm", "code": "confirmation_mismatch", "message": f"Type '{tenant.slug}'."}],
        )
    topics = [s.topic for s in tenant.streams.all()] + [tenant.dlq_topic]
    to_delete = topics if tenant.topic_deletion_policy == Tenant.TopicPolicy.DELETE else []
    before = snapshot(tenant)
    with transaction.atomic():
        audit_record(
            actor=actor,
            tenant=tenant,
            action="tenant.delete",
            obj=tenant,
            before=before,
            after={"topics_deleted": to_delete, "topics_kept": [t for t in topics if t not in to_delete]},
        )
        tenant_deleting(actor=actor, tenant=tenant)
        # Before the rows go: the Kafka sync it queues needs the tenant's topics, by name.
        rights_changed(tenant_id=tenant.pk, whole_tenant=True)
        tenant.certificates.all().delete()
        tenant.devices.all().delete()
        tenant.groups.all().delete()
        tenant.delete()
        kept = sorted(t for t in topics if t not in to_delete)
        now = timezone.now()
        RetiredSlug.objects.update_or_create(
            slug=tenant.slug,
            defaults={"deleted_at": now, "reserved_until": None if kept else now + SLUG_RESERVATION,
                      "topics_kept": kept},
        )  # fmt: skip
        if to_delete:
            # Kept topics keep their subjects (their records name schema ids); those go when
            # the slug is released.
            tenant_deleted(topics=to_delete, prefix=tenant.topic_prefix)
    return to_delete


def retired_slug_release(*, actor: Actor, slug: str, topics_left: list[str]) -> RetiredSlug | None:
    """Release a slug held while a deleted tenant's topics were kept, now that ``topics_left``
    (what the cluster still has under ``iot.<slug>.``, checked by the caller) is empty.  It
    becomes free once ``SLUG_RESERVATION`` has passed since the deletion.  Returns the
    reservation as it now stands (None: the slug is free)."""
    retired = RetiredSlug.objects.filter(slug=slug).first()
    if retired is None:
        return None
    if topics_left:
        raise Conflict(f"Tenant slug '{slug}' still has topics on Kafka: {', '.join(topics_left)}; delete them first.",
                       code="topics_left")  # fmt: skip
    with transaction.atomic():
        until = retired.deleted_at + SLUG_RESERVATION
        if until <= timezone.now():
            retired.delete()
            result = None
        else:
            RetiredSlug.objects.filter(pk=retired.pk).update(reserved_until=until, topics_kept=[])
            result = RetiredSlug.objects.get(pk=retired.pk)
        audit_record(actor=actor, tenant=None, action="tenant.slug_release", object_type="tenants.retiredslug",
                     object_repr=slug, after={"slug": slug, "reserved_until": until.isoformat()})  # fmt: skip
    return result


def membership_set(*, actor: Actor, tenant: Tenant, username: str, role: str) -> Membership:
    """Give a user a role in ``tenant``.  Operators may add any account; a tenant admin adds
    accounts that belong to no tenant yet and changes the roles of its own members.  A user of
    another tenant (or an operator) is answered exactly like an unknown name, so no tenant
    learns which accounts exist elsewhere."""
    user = get_user_model().objects.filter(username=username).first()
    is_operator = bool(getattr(actor.user, "is_superuser", False))
    if user is not None and not is_operator:
        own = membership_list(scope=Scope.of_tenant(tenant)).filter(user=user).exists()
        unaffiliated = not user.is_superuser and not Membership.objects.filter(user=user).exists()
        if not (own or unaffiliated):
            user = None
    if user is None:
        where = "" if is_operator else f" in tenant '{tenant.slug}' (an operator adds other accounts)"
        raise InvalidInput(
            f"No user '{username}'{where}.",
            fields=[{"pointer": "/username", "code": "unknown_user", "message": f"No such user{where}."}],
        )
    if role not in Membership.Role.values:
        raise InvalidInput(
            f"Unknown role '{role}'.",
            fields=[{"pointer": "/role", "code": "invalid_choice", "message": f"Use one of {Membership.Role.values}."}],
        )
    with transaction.atomic():
        membership, created = Membership.objects.update_or_create(user=user, tenant=tenant, defaults={"role": role})
        audit_record(actor=actor, tenant=tenant, action="membership.set", obj=membership,
                     after={"user": username, "role": role, "created": created})  # fmt: skip
    return membership


def user_create_tenant_admin(*, actor: Actor, tenant: Tenant, username: str, email: str = "") -> tuple[Any, str]:
    """A new user who administers ``tenant``, with a generated password returned once."""
    password = secrets.token_urlsafe(18)
    user_model = get_user_model()
    user = user_model(username=username, email=email, is_staff=True)
    user.set_password(password)
    validate_model(user, exclude=["password"])
    try:
        with transaction.atomic():
            user.save()
            Membership.objects.create(user=user, tenant=tenant, role=Membership.Role.ADMIN)
            audit_record(actor=actor, tenant=tenant, action="user.create", obj=user,
                         after={"username": username, "role": "admin"})  # fmt: skip
    except IntegrityError:
        raise Conflict(f"A user '{username}' already exists.") from None
    return user, password


def api_token_create(*, actor: Actor, user: Any, name: str) -> tuple[ApiToken, str]:
    """A token for ``user``; the secret is returned here and never again."""
    if not name or len(name) > 100:
        raise InvalidInput("A token needs a name of 1-100 characters.")
    prefix = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = ApiToken.objects.create(user=user, name=name, prefix=prefix, secret_hash=hash_token(secret))
        audit_record(actor=actor, tenant=None, action="api_token.create", obj=token,
                     after={"user": user.get_username(), "name": name, "prefix": prefix})  # fmt: skip
    return token, secret
