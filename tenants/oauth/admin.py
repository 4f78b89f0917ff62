"""OAuth clients in the Sluice console: listed and revoked, never edited here.

A client is created through the API, or on the page of what it speaks for (a consumer's:
``certs.admin.ConsumerPageAdmin``) with ``ClientCreateForm``: the secret is in that POST's
answer only (``admin/tenants/oauthclient/secret.html``, never stored, never carried through
a message, the session or a cookie).  The secret's hash is never shown.  Imported by
``tenants.admin`` so the admin site's autodiscovery finds it."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.errors import SluiceError
from tenants.admin_scoping import TenantScopedAdmin, status_badge
from tenants.oauth import scopes as oauth_scopes
from tenants.oauth import services
from tenants.oauth.models import OAuthClient


class ClientCreateForm(forms.Form):
    """A new client of one ``kind``: a name and the scopes that kind may hold (all of them
    ticked at first).  ``tenants.oauth.services.oauth_client_create`` checks both again."""

    name = forms.CharField(max_length=100, help_text="What it is for, e.g. analytics backend (prod).")
    scopes = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, choices=())

    def __init__(self, *args: Any, kind: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        allowed = sorted(oauth_scopes.ALLOWED_FOR_KIND[kind])
        field = self.fields["scopes"]
        field.choices = [(scope, scope) for scope in allowed]  # type: ignore[attr-defined]
        field.initial = allowed


@admin.register(OAuthClient)
class OAuthClientAdmin(TenantScopedAdmin[OAuthClient]):
    read_only = True
    exclude = ("secret_hash",)
    fields = (
        "client_id",
        "name",
        "tenant",
        "kind",
        "device",
        "group",
        "consumer",
        "scopes",
        "status",
        "created_at",
        "last_used_at",
        "secret_rotated_at",
        "revoked_at",
    )
    readonly_fields = fields
    list_display = ("client_id", "name", "tenant", "kind", "state", "scope_list", "last_used_at", "created_at")
    list_filter = ("kind", "status", ("tenant", admin.RelatedOnlyFieldListFilter))
    search_fields = ("client_id", "name", "tenant__slug", "device__device_id", "group__slug", "consumer__slug")
    list_select_related = ("tenant", "device", "group")
    actions = ("revoke",)

    @admin.display(description="state", ordering="status")
    def state(self, obj: OAuthClient) -> str:
        return status_badge("active" if obj.is_active else "failed", obj.status)

    @admin.display(description="scopes")
    def scope_list(self, obj: OAuthClient) -> str:
        return " ".join(obj.scopes)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """For ``@admin.action(permissions=["revoke"])``: whoever administers some tenant."""
        return self._is_admin_anywhere(request)

    @admin.action(
        description="Revoke selected clients (no new tokens, API access ends at once)", permissions=["revoke"]
    )
    def revoke(self, request: HttpRequest, queryset: QuerySet[OAuthClient]) -> None:
        scope = self.scope(request)
        done = []
        for client in queryset.select_related("tenant"):
            if not scope.can_admin(client.tenant):
                self.message_user(request, f"{client.client_id}: needs the tenant admin role.", messages.ERROR)
                continue
            try:
                services.oauth_client_revoke(actor=self.actor(request), client=client)
                done.append(client.client_id)
            except SluiceError as exc:
                self.message_user(request, f"{client.client_id}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Revoked {', '.join(done)}.", messages.SUCCESS)
