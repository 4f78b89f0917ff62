"""Writes on OAuth clients: create, revoke, rotate the secret.  Each validates fully (field
errors with JSON pointers), runs in one transaction and writes its audit row.  A secret is
returned once, by the call that made it, and only its hash is stored."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from config.errors import Conflict, InvalidInput, validate_model
from tenants import policy
from tenants.audit import Actor, audit_record
from tenants.hashing import hash_token
from tenants.models import Tenant
from tenants.oauth import scopes as oauth_scopes
from tenants.oauth.models import OAuthClient
from tenants.rights import rights_changed

if TYPE_CHECKING:  # devices is a layer above tenants: its models are named for types only
    from devices.models import Consumer, Device, DeviceGroup

CLIENT_ID_PREFIX = "sc_"
# The field code of a subject whose group's credential policy refuses OAuth2 (a 409).
CREDENTIAL_POLICY = "credential_policy"
SECRET_PREFIX = "scs_"  # noqa: S105 - a public marker that lets secret scanners spot leaked secrets


def _new_secret() -> str:
    # 256 random bits (RFC 6749 §10.10: guessing a credential must be infeasible).
    return f"{SECRET_PREFIX}{secrets.token_urlsafe(32)}"


def _audit_view(client: OAuthClient) -> dict[str, Any]:
    """What the audit log records of a client: everything but the secret's hash."""
    group = client.effective_group
    return {
        "client_id": client.client_id,
        "name": client.name,
        "kind": client.kind,
        "scopes": list(client.scopes),
        "device": client.device.device_id if client.device is not None else None,
        "group": group.slug if group is not None else None,  # type: ignore[attr-defined]
        "consumer": client.consumer.slug if client.consumer is not None else None,
        "status": client.status,
    }


def _field(pointer: str, code: str, message: str) -> dict[str, str]:
    return {"pointer": pointer, "code": code, "message": message}


def _scope_errors(kind: str, scopes: list[str]) -> list[dict[str, str]]:
    if not isinstance(scopes, list) or not scopes:
        return [_field("/scopes", "required", "Give at least one scope.")]
    allowed = oauth_scopes.ALLOWED_FOR_KIND.get(kind, frozenset())
    errors = []
    for index, scope in enumerate(scopes):
        if scope not in oauth_scopes.ALL:
            errors.append(
                _field(f"/scopes/{index}", "unknown_scope", f"Unknown scope; Sluice has {', '.join(oauth_scopes.ALL)}.")
            )
        elif allowed and scope not in allowed:
            errors.append(
                _field(
                    f"/scopes/{index}",
                    "scope_not_allowed",
                    f"A {kind} client may hold only {', '.join(sorted(allowed))}.",
                )
            )
    return errors


def _subject_errors(
    *, tenant: Tenant, kind: str, device: Device | None, group: DeviceGroup | None, consumer: Consumer | None = None
) -> list[dict[str, str]]:
    """The device or group a client speaks for: present exactly when its kind needs it, of
    this tenant (another tenant's object is answered like a missing one), and allowed to use
    OAuth2 by its group's credential policy."""
    errors = []
    if kind == OAuthClient.Kind.DEVICE:
        if device is None:
            errors.append(_field("/device", "required", "A device client names its device."))
        elif device.tenant_id != tenant.pk:
            errors.append(_field("/device", "does_not_exist", "No such device in this tenant."))
        else:
            if device.status != device.Status.ACTIVE:
                errors.append(_field("/device", "device_disabled", "The device is disabled."))
            if not policy.admits(device.group.credential_policy, certificates=False):
                message = f"The device's group '{device.group.slug}' allows mTLS certificates only."
                errors.append(_field("/device", CREDENTIAL_POLICY, message))
        if group is not None and (device is None or group.pk != device.group_id):
            errors.append(_field("/group", "not_allowed", "A device client always uses its device's group."))
    elif kind == OAuthClient.Kind.GATEWAY:
        if device is not None:
            errors.append(_field("/device", "not_allowed", "A gateway client speaks for a group, not a device."))
        if group is None:
            errors.append(_field("/group", "required", "A gateway client names its device group."))
        elif group.tenant_id != tenant.pk:
            errors.append(_field("/group", "does_not_exist", "No such device group in this tenant."))
        elif not policy.admits(group.credential_policy, certificates=False):
            errors.append(_field("/group", CREDENTIAL_POLICY, f"Group '{group.slug}' allows mTLS certificates only."))
    else:
        for name, value in (("device", device), ("group", group)):
            if value is not None:
                errors.append(_field(f"/{name}", "not_allowed", f"A {kind} client has no {name}."))
    if kind == OAuthClient.Kind.CONSUMER:
        if consumer is None:
            errors.append(_field("/consumer", "required", "A consumer client names its consumer."))
        elif consumer.tenant_id != tenant.pk:
            errors.append(_field("/consumer", "does_not_exist", "No such consumer in this tenant."))
        elif not consumer.is_active:
            errors.append(_field("/consumer", "consumer_disabled", "The consumer is disabled."))
    elif consumer is not None:
        errors.append(_field("/consumer", "not_allowed", f"A {kind} client has no consumer."))
    return errors


def oauth_client_create(
    *,
    actor: Actor,
    tenant: Tenant,
    kind: str,
    name: str,
    scopes: list[str],
    device: Device | None = None,
    group: DeviceGroup | None = None,
    consumer: Consumer | None = None,
) -> tuple[OAuthClient, str]:
    """A new active client of ``tenant`` and its secret, which is returned here and never again."""
    if kind not in OAuthClient.Kind.values:
        choice = _field("/kind", "invalid_choice", f"Use one of {OAuthClient.Kind.values}.")
        raise InvalidInput(f"Unknown client kind '{kind}'.", fields=[choice])
    errors = _scope_errors(kind, scopes) + _subject_errors(
        tenant=tenant, kind=kind, device=device, group=group, consumer=consumer
    )
    if errors:
        raise InvalidInput(errors[0]["message"] if len(errors) == 1 else "Some fields are invalid.", fields=errors)
    secret = _new_secret()
    client = OAuthClient(
        tenant=tenant,
        client_id=f"{CLIENT_ID_PREFIX}{secrets.token_hex(12)}",
        secret_hash=hash_token(secret),
        name=name,
        kind=kind,
        device=device if kind == OAuthClient.Kind.DEVICE else None,
        group=group if kind == OAuthClient.Kind.GATEWAY else None,
        consumer=consumer if kind == OAuthClient.Kind.CONSUMER else None,
        scopes=sorted(set(scopes)),
    )
    validate_model(client)
    with transaction.atomic():
        client.save()
        audit_record(
            actor=actor,
            tenant=tenant,
            action="oauth_client.create",
            obj=client,
            object_id=client.client_id,
            after=_audit_view(client),
        )
        # A grant: a Kafka-direct group's new client with kafka:produce gets its ACL (and
        # quota), a consumer's with kafka:consume its READ grants.
        rights_changed(tenant_id=tenant.pk, clients=[client.client_id])
    return client, secret


def oauth_client_revoke(*, actor: Actor, client: OAuthClient) -> OAuthClient:
    """Revoke at once: no new tokens, and the provisioning API refuses the client's tokens
    from the next request on (it re-reads the client every time).  Idempotent."""
    with transaction.atomic():
        locked = OAuthClient.objects.select_for_update().select_related("tenant").get(pk=client.pk)
        if not locked.is_active:
            return locked
        before = _audit_view(locked)
        locked.status = OAuthClient.Status.REVOKED
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["status", "revoked_at"])
        audit_record(
            actor=actor,
            tenant=locked.tenant,
            action="oauth_client.revoke",
            obj=locked,
            object_id=locked.client_id,
            before=before,
            after=_audit_view(locked),
        )
        rights_changed(tenant_id=locked.tenant_id, clients=[locked.client_id])
    return locked


def oauth_client_rotate_secret(*, actor: Actor, client: OAuthClient) -> tuple[OAuthClient, str]:
    """A new secret, returned once; the old one stops authenticating the moment this commits
    (only one hash is stored).  Tokens already issued live out their short lifetime."""
    secret = _new_secret()
    with transaction.atomic():
        locked = OAuthClient.objects.select_for_update().select_related("tenant").get(pk=client.pk)
        if not locked.is_active:
            raise Conflict("A revoked client gets no new secret; create a new client.", code="client_revoked")
        locked.secret_hash = hash_token(secret)
        locked.secret_rotated_at = timezone.now()
        locked.save(update_fields=["secret_hash", "secret_rotated_at"])
        after = {**_audit_view(locked), "secret_rotated_at": locked.secret_rotated_at.isoformat()}
        audit_record(
            actor=actor,
            tenant=locked.tenant,
            action="oauth_client.rotate_secret",
            obj=locked,
            object_id=locked.client_id,
            after=after,
        )
    return locked, secret
