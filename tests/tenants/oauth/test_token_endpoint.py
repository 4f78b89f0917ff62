"""The token endpoint (client-credentials grant, RFC 6749 §4.4), the JWKS and the metadata."""

from __future__ import annotations

import base64
import datetime as dt
import time

import pytest
from django.test import Client
from django.utils import timezone

from config.env import Runtime
from devices.models import Device, DeviceGroup
from tenants.audit import Actor
from tenants.hashing import hash_token
from tenants.models import AuditEvent, Tenant
from tenants.oauth import keys, tokens
from tenants.oauth.models import OAuthClient
from tenants.oauth.services import oauth_client_revoke, oauth_client_rotate_secret
from tenants.services import tenant_set_status
from tests.tenants.oauth.support import TOKEN_URL, decode_with_published_jwks, make_oauth_client, request_token

pytestmark = pytest.mark.django_db


def refused(response: object, error: str, status: int = 400) -> dict[str, str]:
    """Assert an RFC 6749 §5.2 error response and return its body."""
    assert response.status_code == status, response.content  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"] == error, body
    assert response["Cache-Control"] == "no-store"  # type: ignore[index]
    assert "access_token" not in body
    return body


# -- happy paths, one per kind -------------------------------------------------------------


def test_device_client_gets_a_token_with_every_claim(runtime: Runtime, tenant: Tenant, device: Device) -> None:
    # given a device client of acme's device dev-1 in group sensors
    client, secret = make_oauth_client(tenant, "device", device=device)
    before = int(time.time())
    # when it asks for a token with HTTP Basic
    response = request_token(client.client_id, secret)
    # then it gets a Bearer token for ingest and Kafka, uncached
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    assert response["Pragma"] == "no-cache"
    body = response.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 900, "ingest:write kafka:produce")
    assert "refresh_token" not in body  # RFC 6749 §4.4.3
    # and the JWT verifies with the published JWKS and carries every claim
    header, claims = decode_with_published_jwks(body["access_token"])
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": keys.current_signing_key(runtime).kid}
    assert claims["iss"] == tokens.issuer(runtime) == f"{runtime.web_url}/oauth"
    assert claims["sub"] == claims["client_id"] == client.client_id
    assert sorted(claims["aud"]) == ["kafka", "sluice-ingest"]
    assert claims["tenant"] == "acme"
    assert claims["scope"] == "ingest:write kafka:produce"
    # the client's own principal without "User:": tenant, group, client id
    assert claims["kafka_principal"] == f"acme.sensors.{client.client_id}"
    assert claims["device"] == "dev-1"
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert len(claims["jti"]) == 32


def test_gateway_client_gets_its_own_principal_and_no_device(tenant: Tenant, oauth_group: DeviceGroup) -> None:
    client, secret = make_oauth_client(tenant, "gateway", ["kafka:produce"], group=oauth_group)
    response = request_token(client.client_id, secret, method="post")
    assert response.status_code == 200, response.content
    _header, claims = decode_with_published_jwks(response.json()["access_token"])
    assert (claims["aud"], claims["scope"], claims["kafka_principal"]) == (
        ["kafka"],
        "kafka:produce",
        f"acme.sensors.{client.client_id}",
    )
    assert "device" not in claims


def test_service_client_gets_an_api_token_without_kafka_claims(tenant: Tenant) -> None:
    client, secret = make_oauth_client(tenant, "service", ["provision:read"])
    response = request_token(client.client_id, secret)
    assert response.status_code == 200, response.content
    _header, claims = decode_with_published_jwks(response.json()["access_token"])
    assert (claims["aud"], claims["scope"], claims["tenant"]) == (["sluice-api"], "provision:read", "acme")
    assert "kafka_principal" not in claims
    assert "device" not in claims


@pytest.mark.parametrize("method", ["basic", "post"])
def test_both_client_authentication_methods_work(tenant: Tenant, method: str) -> None:
    client, secret = make_oauth_client(tenant)
    assert request_token(client.client_id, secret, method=method).status_code == 200


# -- scopes ---------------------------------------------------------------------------------


def test_scope_narrows_the_token_and_its_audience(tenant: Tenant, device: Device) -> None:
    client, secret = make_oauth_client(tenant, "device", device=device)
    response = request_token(client.client_id, secret, scope="ingest:write")
    assert response.json()["scope"] == "ingest:write"
    _header, claims = decode_with_published_jwks(response.json()["access_token"])
    assert (claims["aud"], claims["scope"]) == (["sluice-ingest"], "ingest:write")


@pytest.mark.parametrize(
    "scope",
    [
        "provision:write",  # known, but not allowed for a device client
        "ingest:write provision:read",  # one allowed, one not: refused, never trimmed
        "admin",  # unknown
    ],
)
def test_scopes_the_client_does_not_hold_are_refused(tenant: Tenant, device: Device, scope: str) -> None:
    client, secret = make_oauth_client(tenant, "device", device=device)
    refused(request_token(client.client_id, secret, scope=scope), "invalid_scope")


def test_a_narrowed_client_cannot_ask_for_a_scope_it_was_not_given(tenant: Tenant) -> None:
    client, secret = make_oauth_client(tenant, "service", ["provision:read"])
    refused(request_token(client.client_id, secret, scope="provision:write"), "invalid_scope")


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "post"])
def test_wrong_secret_and_unknown_client_are_the_same_invalid_client(tenant: Tenant, method: str) -> None:
    client, secret = make_oauth_client(tenant)
    wrong = refused(request_token(client.client_id, secret + "x", method=method), "invalid_client", 401)
    unknown = refused(request_token("sc_nobody", secret, method=method), "invalid_client", 401)
    # one answer for both, so the endpoint does not reveal which client ids exist
    assert wrong == unknown
    response = request_token(client.client_id, "", method=method)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith('Basic realm="sluice"')


def test_no_credentials_at_all_is_invalid_client() -> None:
    response = Client().post(
        TOKEN_URL, "grant_type=client_credentials", content_type="application/x-www-form-urlencoded", secure=True
    )
    refused(response, "invalid_client", 401)
    assert response["WWW-Authenticate"].startswith("Basic ")


def test_malformed_basic_header_is_invalid_client(db: None) -> None:
    garbage = base64.b64encode(b"\xff\xfe:\xff").decode()
    response = Client().post(
        TOKEN_URL,
        "grant_type=client_credentials",
        HTTP_AUTHORIZATION=f"Basic {garbage}",
        content_type="application/x-www-form-urlencoded",
        secure=True,
    )
    refused(response, "invalid_client", 401)


def test_revoked_client_gets_no_token(tenant: Tenant) -> None:
    client, secret = make_oauth_client(tenant)
    assert request_token(client.client_id, secret).status_code == 200
    oauth_client_revoke(actor=Actor.system("test"), client=client)
    refused(request_token(client.client_id, secret), "invalid_client", 401)


def test_suspended_tenant_gets_no_token(tenant: Tenant, device: Device) -> None:
    client, secret = make_oauth_client(tenant, "device", device=device)
    tenant_set_status(actor=Actor.system("test"), tenant=tenant, status=Tenant.Status.SUSPENDED)
    body = refused(request_token(client.client_id, secret), "invalid_grant")
    assert "suspended" in body["error_description"]
    # and resuming the tenant restores issuance
    tenant_set_status(actor=Actor.system("test"), tenant=tenant, status=Tenant.Status.ACTIVE)
    assert request_token(client.client_id, secret).status_code == 200


def test_disabled_device_gets_no_token(tenant: Tenant, device: Device) -> None:
    client, secret = make_oauth_client(tenant, "device", device=device)
    Device.objects.filter(pk=device.pk).update(status=Device.Status.DISABLED)
    body = refused(request_token(client.client_id, secret), "invalid_grant")
    assert "disabled" in body["error_description"]


@pytest.mark.parametrize("kind", ["device", "gateway"])
def test_group_that_became_mtls_only_gets_no_token(tenant: Tenant, device: Device, kind: str) -> None:
    client, secret = make_oauth_client(
        tenant, kind, device=device if kind == "device" else None, group=device.group if kind == "gateway" else None
    )
    DeviceGroup.objects.filter(pk=device.group_id).update(credential_policy=DeviceGroup.CredentialPolicy.MTLS)
    body = refused(request_token(client.client_id, secret), "invalid_grant")
    assert "mTLS" in body["error_description"]


def test_other_grant_types_are_unsupported(tenant: Tenant) -> None:
    client, secret = make_oauth_client(tenant)
    refused(request_token(client.client_id, secret, grant_type="password"), "unsupported_grant_type")
    refused(request_token(client.client_id, secret, grant_type="authorization_code"), "unsupported_grant_type")


def test_malformed_requests_are_invalid_request(tenant: Tenant) -> None:
    client, secret = make_oauth_client(tenant)
    # no grant_type (e.g. JSON instead of a form)
    as_json = Client().post(
        TOKEN_URL, {"grant_type": "client_credentials"}, content_type="application/json", secure=True
    )
    refused(as_json, "invalid_request")
    # secret in the URL
    form = f"grant_type=client_credentials&client_id={client.client_id}"
    in_url = Client().post(
        f"{TOKEN_URL}?client_secret={secret}", form, content_type="application/x-www-form-urlencoded", secure=True
    )
    refused(in_url, "invalid_request")
    # a repeated parameter (RFC 6749 §3.2)
    repeated = Client().post(
        TOKEN_URL,
        "grant_type=client_credentials&grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        secure=True,
    )
    refused(repeated, "invalid_request")
    # Basic and form credentials at once (RFC 6749 §2.3)
    refused(request_token(client.client_id, secret, client_secret=secret), "invalid_request")


def test_plain_http_is_refused(tenant: Tenant) -> None:
    client, secret = make_oauth_client(tenant)
    form = f"grant_type=client_credentials&client_id={client.client_id}&client_secret={secret}"
    response = Client().post(TOKEN_URL, form, content_type="application/x-www-form-urlencoded")
    refused(response, "insecure_transport")


def test_get_is_not_allowed(db: None) -> None:
    assert Client().get(TOKEN_URL, secure=True).status_code == 405


# -- secrets --------------------------------------------------------------------------------


def test_secret_is_stored_only_as_a_hash_and_rotation_ends_the_old_one(tenant: Tenant) -> None:
    # given a client and its secret, stored only as a hash
    client, old = make_oauth_client(tenant)
    stored = OAuthClient.objects.get(pk=client.pk)
    assert stored.secret_hash == hash_token(old)
    assert old not in str(AuditEvent.objects.filter(action="oauth_client.create").values())
    # when the secret is rotated
    rotated, new = oauth_client_rotate_secret(actor=Actor.system("test"), client=client)
    # then the new secret works at once and the old one stops at once
    assert new != old
    assert rotated.client_id == client.client_id
    assert request_token(client.client_id, new).status_code == 200
    refused(request_token(client.client_id, old), "invalid_client", 401)
    assert AuditEvent.objects.filter(action="oauth_client.rotate_secret", object_id=client.client_id).exists()


def test_issuance_counts_as_use_throttled(tenant: Tenant) -> None:
    client, secret = make_oauth_client(tenant)
    assert client.last_used_at is None
    request_token(client.client_id, secret)
    first = OAuthClient.objects.get(pk=client.pk).last_used_at
    assert first is not None
    # a second token within the minute does not write again
    request_token(client.client_id, secret)
    assert OAuthClient.objects.get(pk=client.pk).last_used_at == first
    # once the recorded use is older than a minute, it moves
    OAuthClient.objects.filter(pk=client.pk).update(last_used_at=timezone.now() - dt.timedelta(minutes=5))
    request_token(client.client_id, secret)
    assert OAuthClient.objects.get(pk=client.pk).last_used_at >= first
    # and issuance itself is not audited
    assert not AuditEvent.objects.filter(action__startswith="oauth_client.token").exists()


# -- metadata and keys ----------------------------------------------------------------------


def test_jwks_publishes_public_keys_only(runtime: Runtime, db: None) -> None:
    response = Client().get("/oauth/jwks.json", secure=True)
    assert response.status_code == 200
    assert response["Cache-Control"] == "public, max-age=300"
    published = response.json()["keys"]
    assert [k["kid"] for k in published] == [k.kid for k in keys.signing_keys(runtime)]
    assert all(k["kty"] == "EC" and k["crv"] == "P-256" and k["alg"] == "ES256" for k in published)
    assert all("d" not in k for k in published)


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-authorization-server", "/.well-known/oauth-authorization-server/oauth"]
)
def test_metadata_names_the_issuer_endpoints_and_scopes(runtime: Runtime, db: None, path: str) -> None:
    response = Client().get(path, secure=True)
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == tokens.issuer(runtime)
    assert meta["token_endpoint"] == f"{runtime.web_url}/oauth/token"
    assert meta["jwks_uri"] == f"{runtime.web_url}/oauth/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert meta["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
    assert meta["scopes_supported"] == [
        "ingest:write", "kafka:produce", "kafka:consume", "registry:read", "provision:read", "provision:write"
    ]  # fmt: skip
