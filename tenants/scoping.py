"""Tenant scoping, in one place.  Every request's view of the data goes through ``Scope``:
operators see every tenant; anyone else sees only the tenants they are a member of, and a
tenant they cannot see does not exist for them (404, never 403).

An OAuth service client (``tenants.oauth.resource.ServiceClientPrincipal``) is a member of
exactly one tenant, its own, with the role its token's scopes amount to (provision:read a
viewer, provision:write an admin); it is never an operator, whatever else it claims."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from config.errors import NotFound, PermissionDenied
from tenants.models import Membership, Tenant
from tenants.oauth.resource import ServiceClientPrincipal


@dataclass(frozen=True)
class Scope:
    user: Any
    is_operator: bool
    roles: dict[int, str]

    def tenants(self) -> QuerySet[Tenant]:
        queryset = Tenant.objects.all()
        return queryset if self.is_operator else queryset.filter(pk__in=self.roles)

    def tenant(self, slug: str) -> Tenant:
        """The tenant named ``slug`` if this scope may see it, else NotFound."""
        tenant = self.tenants().filter(slug=slug).first()
        if tenant is None:
            raise NotFound(f"No tenant '{slug}'.")
        return tenant

    def can_admin(self, tenant: Tenant) -> bool:
        return self.is_operator or self.roles.get(tenant.pk) == Membership.Role.ADMIN

    def require_admin(self, tenant: Tenant) -> None:
        if not self.can_admin(tenant):
            raise PermissionDenied(f"Changing tenant '{tenant.slug}' needs the tenant admin role.")

    def require_operator(self) -> None:
        if not self.is_operator:
            raise PermissionDenied("Only platform operators may do this.")


def scope_for(user: Any) -> Scope:
    if isinstance(user, ServiceClientPrincipal):
        # Checked first: nothing a token carries can make it an operator.
        return Scope(user=user, is_operator=False, roles={user.tenant_id: user.role})
    if not getattr(user, "is_authenticated", False):
        return Scope(user=user, is_operator=False, roles={})
    if user.is_superuser:
        return Scope(user=user, is_operator=True, roles={})
    roles = dict(Membership.objects.filter(user=user).values_list("tenant_id", "role"))
    return Scope(user=user, is_operator=False, roles=roles)
