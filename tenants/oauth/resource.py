"""The provisioning API as an OAuth2 resource server (RFC 6750): a Sluice access token for
audience ``sluice-api`` becomes a ``ServiceClientPrincipal``, which ``tenants.scoping``
turns into a viewer or admin of the client's own tenant -- and never more.

The token's signature and claims say who the client *was*; the database says whether it
still may act, so the client and its tenant are re-read on every request: a revoked client
or a suspended tenant is refused at once, not when the token expires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from django.conf import settings

from config.errors import PermissionDenied, Unauthenticated
from tenants import policy
from tenants.models import Membership
from tenants.oauth import scopes as oauth_scopes
from tenants.oauth import tokens
from tenants.oauth.models import OAuthClient


@dataclass(frozen=True)
class ServiceClientPrincipal:
    """``request.user`` for a request made with a service client's token.  It quacks like a
    user where DRF and Sluice need it to (authenticated, active, never staff or superuser,
    no account: ``Actor.of`` records it by label, ``oauth:<client_id>``)."""

    client: OAuthClient
    scopes: frozenset[str]
    claims: tokens.AccessClaims = field(repr=False)

    is_authenticated: ClassVar[bool] = True
    is_anonymous: ClassVar[bool] = False
    is_active: ClassVar[bool] = True
    is_staff: ClassVar[bool] = False
    is_superuser: ClassVar[bool] = False
    pk: ClassVar[None] = None

    def get_username(self) -> str:
        return f"oauth:{self.client.client_id}"

    def __str__(self) -> str:
        return self.get_username()

    @property
    def tenant_id(self) -> int:
        return self.client.tenant_id

    @property
    def role(self) -> str:
        """The tenant role the token's scopes amount to; writing implies reading."""
        if oauth_scopes.PROVISION_WRITE in self.scopes:
            return Membership.Role.ADMIN
        return Membership.Role.VIEWER


def token_client(claims: tokens.AccessClaims) -> OAuthClient:
    """The client a verified token was issued to, if it may still act now (re-read from the
    database: active, tenant active, device active, group open to OAuth2); otherwise
    ``Unauthenticated`` with a stable code (``client_revoked``, ``tenant_suspended``, ...).
    Every resource server that accepts Sluice tokens should call this on every request."""
    client = (
        OAuthClient.objects.select_related("tenant", "device__group", "group")
        .filter(client_id=claims.client_id, tenant__slug=claims.tenant)
        .first()
    )
    if client is None:
        raise Unauthenticated("The access token's client is unknown to Sluice.", code="invalid_token")
    refusal = policy.oauth_client_refusal(policy.Use.TOKEN_USE, **client.policy_facts())
    if refusal is not None:
        raise refusal.exception()
    return client


def authenticate_service_token(token: str) -> ServiceClientPrincipal:
    """The principal of a valid ``sluice-api`` token whose client may still act; otherwise
    ``Unauthenticated`` (401) with a stable code, or ``PermissionDenied`` (403,
    ``insufficient_scope``, RFC 6750 §3.1) for a token without a provisioning scope."""
    claims = tokens.verify_access_token(settings.SLUICE_RUNTIME, token, audience=tokens.AUD_API)
    client = token_client(claims)
    if client.kind != OAuthClient.Kind.SERVICE:
        raise Unauthenticated("The access token does not belong to a service client of Sluice.", code="invalid_token")
    # Scopes the client has lost since the token was issued are lost at once, too.
    granted = claims.scopes & frozenset(client.scopes) & oauth_scopes.SERVICE_SCOPES
    if not granted:
        raise PermissionDenied("The access token holds no provision:* scope.", code="insufficient_scope")
    return ServiceClientPrincipal(client=client, scopes=granted, claims=claims)


@dataclass(frozen=True)
class ConsumerPrincipal:
    """``request.user`` at the tenant-scoped registry (``/registry/<tenant>/``) for a
    consumer's credential: its OAuth client's token (``registry:read``) or its client
    certificate.  It reads that tenant's schemas, as a viewer would, and reaches nothing
    else: only the registry's views accept it (``tenants.scoping`` gives it its tenant)."""

    tenant_id: int
    label: str  # oauth:<client_id> or cert:<serial>

    is_authenticated: ClassVar[bool] = True
    is_anonymous: ClassVar[bool] = False
    is_active: ClassVar[bool] = True
    is_staff: ClassVar[bool] = False
    is_superuser: ClassVar[bool] = False
    pk: ClassVar[None] = None
    role: ClassVar[str] = Membership.Role.VIEWER

    def get_username(self) -> str:
        return self.label

    def __str__(self) -> str:
        return self.label


def verify_registry_token(token: str) -> tokens.AccessClaims:
    """The claims of a valid token for audience ``sluice-registry`` (``Unauthenticated`` if not)."""
    return tokens.verify_access_token(settings.SLUICE_RUNTIME, token, audience=tokens.AUD_REGISTRY)


def consumer_token_principal(claims: tokens.AccessClaims) -> ConsumerPrincipal:
    """The principal of a verified ``sluice-registry`` token of a consumer client that may
    still act (client active, consumer enabled, tenant active, re-read now) and still holds
    ``registry:read``; otherwise ``Unauthenticated`` or ``PermissionDenied`` with a code."""
    client = token_client(claims)
    if client.kind != OAuthClient.Kind.CONSUMER:
        raise Unauthenticated("The access token does not belong to a consumer client of Sluice.", code="invalid_token")
    if oauth_scopes.REGISTRY_READ not in claims.scopes & frozenset(client.scopes):
        raise PermissionDenied("The access token does not hold registry:read.", code="insufficient_scope")
    return ConsumerPrincipal(tenant_id=client.tenant_id, label=f"oauth:{client.client_id}")
