"""Tenant scoping, in one place.  Every request's view of the data goes through ``Scope``:
operators see every tenant; anyone else sees only the tenants they are a member of, and a
tenant they cannot see does not exist for them (404, never 403).

Reads take a scope and apply it with ``restrict`` (in the spirit of NetBox's
``RestrictedQuerySet.restrict()``): every selector (``<app>/selectors.py``) takes
``scope=`` as a required keyword, so the REST API, the console and onboarding all see the
same rows for the same person.  A scope is built from a user (``scope_for``), for the
operator's all-tenants view (``Scope.operator()``), for one tenant (``Scope.of_tenant``),
or narrowed to one tenant it can see (``scope.within(tenant)``: what a URL under
``/tenants/<t>/`` reads).

An OAuth service client (``tenants.oauth.resource.ServiceClientPrincipal``) is a member of
exactly one tenant, its own, with the role its token's scopes amount to (provision:read a
viewer, provision:write an admin); it is never an operator, whatever else it claims."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from django.db.models import Model, QuerySet

from config.errors import NotFound, PermissionDenied
from tenants.models import Membership, Tenant
from tenants.oauth.resource import ConsumerPrincipal, ServiceClientPrincipal

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class Scope:
    """Whose data a read may return.  ``roles`` maps the tenants a non-operator belongs to
    (by pk) to the role held there; ``only`` narrows any scope to one tenant (``within``)."""

    user: Any = None
    is_operator: bool = False
    roles: dict[int, str] = field(default_factory=dict)
    only: int | None = None

    @classmethod
    def operator(cls, user: Any = None) -> Scope:
        """Every tenant: the platform operators' scope (and the platform's own jobs')."""
        return cls(user=user, is_operator=True)

    @classmethod
    def of_tenant(cls, tenant: Tenant, *, role: str = Membership.Role.ADMIN, user: Any = None) -> Scope:
        """``tenant`` alone, as a member with ``role`` sees it."""
        return cls(user=user, is_operator=False, roles={tenant.pk: role})

    @property
    def tenant_ids(self) -> frozenset[int] | None:
        """The pks of the tenants this scope reads; None for every tenant."""
        ids = None if self.is_operator else frozenset(self.roles)
        if self.only is None:
            return ids
        return frozenset({self.only}) if ids is None or self.only in ids else frozenset()

    def sees(self, tenant: Tenant) -> bool:
        ids = self.tenant_ids
        return ids is None or tenant.pk in ids

    def within(self, tenant: Tenant) -> Scope:
        """This scope narrowed to ``tenant`` (NotFound if it cannot see it); roles unchanged."""
        if not self.sees(tenant):
            raise NotFound(f"No tenant '{tenant.slug}'.")
        return replace(self, only=tenant.pk)

    def writable(self) -> Scope:
        """The part of this scope its user may change: every tenant for operators, else the
        tenants they administer."""
        if self.is_operator:
            return self
        return replace(self, roles={pk: role for pk, role in self.roles.items() if role == Membership.Role.ADMIN})

    def tenants(self) -> QuerySet[Tenant]:
        return restrict(Tenant.objects.all(), scope=self, lookup="pk")

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


def restrict(queryset: QuerySet[M], *, scope: Scope, lookup: str = "tenant") -> QuerySet[M]:
    """``queryset`` limited to the rows of ``scope``'s tenants; ``lookup`` is the ORM path
    from the model to its ``Tenant`` (``"pk"`` for ``Tenant`` itself).  The one place a
    tenant filter is written: selectors build on it."""
    if not isinstance(scope, Scope):
        raise TypeError(f"restrict() needs a Scope, not {type(scope).__name__}")
    ids = scope.tenant_ids
    if ids is None:
        return queryset
    return queryset.filter(**{f"{lookup}__in": sorted(ids)})


def scope_for(user: Any) -> Scope:
    if isinstance(user, ServiceClientPrincipal | ConsumerPrincipal):
        # Checked first: nothing a token carries can make it an operator.
        return Scope(user=user, is_operator=False, roles={user.tenant_id: user.role})
    if not getattr(user, "is_authenticated", False):
        return Scope(user=user, is_operator=False, roles={})
    if user.is_superuser:
        return Scope(user=user, is_operator=True, roles={})
    roles = dict(Membership.objects.filter(user=user).values_list("tenant_id", "role"))
    return Scope(user=user, is_operator=False, roles=roles)
