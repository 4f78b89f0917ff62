"""Helpers for tests that need OAuth clients and their tokens (shared with tests/isolation)."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, urlencode

from django.test import Client
from joserfc import jwt
from joserfc.jwk import KeySet
from rest_framework.test import APIClient

from devices.models import Consumer, Device, DeviceGroup
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.oauth.models import OAuthClient
from tenants.oauth.services import oauth_client_create

TOKEN_URL = "/oauth/token"


def make_oauth_client(
    tenant: Tenant,
    kind: str = "service",
    scopes: list[str] | None = None,
    *,
    device: Device | None = None,
    group: DeviceGroup | None = None,
    consumer: Consumer | None = None,
) -> tuple[OAuthClient, str]:
    defaults = {"service": ["provision:read", "provision:write"], "consumer": ["kafka:consume", "registry:read"]}
    default = defaults.get(kind, ["ingest:write", "kafka:produce"])
    return oauth_client_create(
        actor=Actor.system("test"),
        tenant=tenant,
        kind=kind,
        name=f"{kind} client",
        scopes=scopes or default,
        device=device,
        group=group,
        consumer=consumer,
    )


def request_token(
    client_id: str,
    secret: str,
    *,
    method: str = "basic",
    scope: str | None = None,
    grant_type: str = "client_credentials",
    **extra: Any,
) -> Any:
    """POST the token endpoint as RFC 6749 §4.4.2 says: form-encoded, over https."""
    form: dict[str, str] = {"grant_type": grant_type}
    if scope is not None:
        form["scope"] = scope
    headers: dict[str, str] = {}
    if method == "basic":
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before the Basic encoding.
        pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
        headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(pair).decode()
    else:
        form |= {"client_id": client_id, "client_secret": secret}
    form |= extra
    return Client().post(
        TOKEN_URL, urlencode(form), content_type="application/x-www-form-urlencoded", secure=True, **headers
    )


def access_token(client_id: str, secret: str, scope: str | None = None) -> str:
    response = request_token(client_id, secret, scope=scope)
    assert response.status_code == 200, response.content
    return str(response.json()["access_token"])


def bearer(token: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return api


def service_api(tenant: Tenant, scopes: list[str] | None = None) -> tuple[APIClient, OAuthClient]:
    """An API client holding a fresh service client's token, from the real token endpoint."""
    client, secret = make_oauth_client(tenant, "service", scopes)
    return bearer(access_token(client.client_id, secret)), client


def decode_with_published_jwks(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, verified with nothing but the JWKS the server publishes."""
    published = Client().get("/oauth/jwks.json", secure=True)
    keyset = KeySet.import_key_set(json.loads(published.content))
    decoded = jwt.decode(token, keyset, algorithms=["ES256"])
    return dict(decoded.header), dict(decoded.claims)
