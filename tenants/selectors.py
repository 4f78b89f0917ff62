"""Reads of tenants, memberships, the audit log and API tokens.  Every function takes the
caller's ``Scope`` (``tenants.scoping``) as a required keyword: a tenant scope never returns
another tenant's rows, the operator scope returns every tenant's."""

from __future__ import annotations

from django.db.models import QuerySet

from config.errors import NotFound
from tenants.models import ApiToken, AuditEvent, Membership, Tenant
from tenants.scoping import Scope, restrict


def tenant_list(*, scope: Scope) -> QuerySet[Tenant]:
    return restrict(Tenant.objects.all(), scope=scope, lookup="pk")


def tenant_get(*, scope: Scope, slug: str) -> Tenant:
    """The tenant named ``slug`` in ``scope``; NotFound for one outside it, as for none."""
    tenant = tenant_list(scope=scope).filter(slug=slug).first()
    if tenant is None:
        raise NotFound(f"No tenant '{slug}'.")
    return tenant


def membership_list(*, scope: Scope) -> QuerySet[Membership]:
    return restrict(Membership.objects.select_related("user", "tenant"), scope=scope).order_by("user__username")


def tenant_admin_usernames(*, scope: Scope) -> list[str]:
    """The usernames of the admins of ``scope``'s tenants, oldest membership first."""
    admins = membership_list(scope=scope).filter(role=Membership.Role.ADMIN).order_by("created_at")
    return [membership.user.get_username() for membership in admins]


def audit_event_list(*, scope: Scope) -> QuerySet[AuditEvent]:
    """Audit events of ``scope``'s tenants.  Events of no tenant (or of a deleted one, whose
    link was cleared) only in the operator scope."""
    return restrict(AuditEvent.objects.all(), scope=scope)


def api_token_list(*, scope: Scope, own: bool = True) -> QuerySet[ApiToken]:
    """API tokens belong to users, not tenants: the scope's user's own, newest first; with
    ``own=False`` an operator's scope sees every user's."""
    if not isinstance(scope, Scope):
        raise TypeError(f"api_token_list() needs a Scope, not {type(scope).__name__}")
    tokens = ApiToken.objects.select_related("user").order_by("-created_at")
    if own or not scope.is_operator:
        return tokens.filter(user=scope.user) if getattr(scope.user, "pk", None) is not None else tokens.none()
    return tokens
