"""Reads of OAuth clients, scoped like every other read (``tenants.scoping``)."""

from __future__ import annotations

from django.db.models import QuerySet

from config.errors import NotFound
from tenants.oauth.models import OAuthClient
from tenants.scoping import Scope, restrict


def oauth_client_list(*, scope: Scope) -> QuerySet[OAuthClient]:
    clients = OAuthClient.objects.select_related("tenant", "device__group__tenant", "group__tenant")
    return restrict(clients, scope=scope)


def oauth_client_get(*, scope: Scope, client_id: str) -> OAuthClient:
    client = oauth_client_list(scope=scope).filter(client_id=client_id).first()
    if client is None:
        raise NotFound(f"No OAuth client '{client_id}'.")
    return client
