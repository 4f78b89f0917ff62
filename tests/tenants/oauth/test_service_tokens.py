"""The provisioning API with a service client's access token: its own tenant only, as a
viewer (provision:read) or an admin (provision:write), never an operator; re-checked on
every request."""

from __future__ import annotations

import datetime as dt

import pytest
from rest_framework.test import APIClient

from config.env import Runtime
from config.errors import Unauthenticated
from devices.models import Device
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.oauth import tokens
from tenants.oauth.models import OAuthClient
from tenants.oauth.resource import token_client
from tenants.oauth.services import oauth_client_revoke
from tenants.services import tenant_set_status
from tests.tenants.oauth.support import access_token, bearer, make_oauth_client, service_api

pytestmark = pytest.mark.django_db


def error_code(response: object) -> str:
    return str(response.json()["error"]["code"])  # type: ignore[attr-defined]


def test_read_scope_reads_its_tenant_but_cannot_write(tenant: Tenant) -> None:
    # given a service token with provision:read only
    api, _client = service_api(tenant, ["provision:read"])
    # then it reads its tenant like a viewer
    assert api.get("/api/v1/tenants/acme/").status_code == 200
    assert api.get("/api/v1/tenants/acme/devices/").status_code == 200
    assert api.get("/api/v1/tenants/acme/groups/sensors/").status_code == 200
    # and every write is forbidden
    created = api.post("/api/v1/tenants/acme/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    assert (created.status_code, error_code(created)) == (403, "permission_denied")
    assert api.patch("/api/v1/tenants/acme/", {"name": "x"}, format="json").status_code == 403
    assert not Device.objects.filter(device_id="d1").exists()


def test_write_scope_administers_its_tenant_and_is_audited_as_the_client(tenant: Tenant) -> None:
    # given a service token with provision:write
    api, client = service_api(tenant, ["provision:write"])
    # when it registers a device and renames the tenant
    created = api.post("/api/v1/tenants/acme/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    renamed = api.patch("/api/v1/tenants/acme/", {"name": "ACME by robot"}, format="json")
    # then both happen, and the audit log names the client, not a user
    assert created.status_code == 201, created.json()
    assert renamed.status_code == 200, renamed.json()
    event = AuditEvent.objects.get(action="device.create")
    assert (event.actor_label, event.actor, event.tenant_slug) == (f"oauth:{client.client_id}", None, "acme")


def test_service_token_is_never_an_operator(tenant: Tenant, other_tenant: Tenant) -> None:
    api, _client = service_api(tenant)
    # it lists only its own tenant
    assert [t["slug"] for t in api.get("/api/v1/tenants/").json()["results"]] == ["acme"]
    # and operator-only actions are refused
    assert api.post("/api/v1/tenants/", {"slug": "mine", "name": "x"}, format="json").status_code == 403
    assert api.post("/api/v1/tenants/acme/suspend").status_code == 403
    assert api.patch("/api/v1/tenants/acme/", {"max_devices": 10**9}, format="json").status_code == 403
    assert api.delete("/api/v1/tenants/acme/?confirm=acme").status_code == 403
    assert api.get("/metrics").status_code in (403, 404)
    # nor does it own API tokens (those belong to user accounts)
    assert api.get("/api/v1/tokens/").status_code == 403
    assert api.post("/api/v1/tokens/", {"name": "x"}, format="json").status_code in (400, 403)


def test_device_token_is_refused_by_the_api(tenant: Tenant, device: Device) -> None:
    # given a device client's token (audience sluice-ingest and kafka)
    client, secret = make_oauth_client(tenant, "device", device=device)
    api = bearer(access_token(client.client_id, secret))
    # when it calls the provisioning API, then it is refused for its audience
    response = api.get("/api/v1/tenants/acme/devices/")
    assert (response.status_code, error_code(response)) == (401, "wrong_audience")
    assert response["WWW-Authenticate"].startswith('Bearer realm="sluice-api", error="invalid_token"')


def test_expired_token_is_refused(runtime: Runtime, tenant: Tenant) -> None:
    client, _secret = make_oauth_client(tenant)
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired, _ = tokens.mint_access_token(
        runtime,
        client_id=client.client_id,
        tenant="acme",
        scopes=["provision:read"],
        audiences=["sluice-api"],
        now=an_hour_ago,
    )
    response = bearer(expired).get("/api/v1/tenants/acme/")
    assert (response.status_code, error_code(response)) == (401, "token_expired")


def test_garbage_and_forged_tokens_are_refused(runtime: Runtime, tenant: Tenant, other_tenant: Tenant) -> None:
    client, _secret = make_oauth_client(tenant)
    assert bearer("aaa.bbb.ccc").get("/api/v1/tenants/acme/").status_code == 401
    # a validly signed token naming the client under another tenant is refused, not re-scoped
    forged, _ = tokens.mint_access_token(
        runtime, client_id=client.client_id, tenant="globex", scopes=["provision:write"], audiences=["sluice-api"]
    )
    response = bearer(forged).get("/api/v1/tenants/globex/")
    assert (response.status_code, error_code(response)) == (401, "invalid_token")
    # a token with an api audience but no provisioning scope: authenticated, not authorised
    scopeless, _ = tokens.mint_access_token(
        runtime, client_id=client.client_id, tenant="acme", scopes=["ingest:write"], audiences=["sluice-api"]
    )
    response = bearer(scopeless).get("/api/v1/tenants/acme/")
    assert (response.status_code, error_code(response)) == (403, "insufficient_scope")


def test_revocation_and_suspension_take_effect_on_the_next_request(tenant: Tenant) -> None:
    # given a working service token
    api, client = service_api(tenant)
    assert api.get("/api/v1/tenants/acme/").status_code == 200
    # when the tenant is suspended, then the very next request is refused
    tenant_set_status(actor=Actor.system("test"), tenant=tenant, status=Tenant.Status.SUSPENDED)
    response = api.get("/api/v1/tenants/acme/")
    assert (response.status_code, error_code(response)) == (401, "tenant_suspended")
    tenant_set_status(actor=Actor.system("test"), tenant=tenant, status=Tenant.Status.ACTIVE)
    assert api.get("/api/v1/tenants/acme/").status_code == 200
    # when the client is revoked, the same token stops working at once
    oauth_client_revoke(actor=Actor.system("test"), client=client)
    response = api.get("/api/v1/tenants/acme/")
    assert (response.status_code, error_code(response)) == (401, "client_revoked")


def test_scopes_taken_from_the_client_are_lost_by_its_tokens_at_once(tenant: Tenant) -> None:
    api, client = service_api(tenant, ["provision:read", "provision:write"])
    OAuthClient.objects.filter(pk=client.pk).update(scopes=["provision:read"])
    created = api.post("/api/v1/tenants/acme/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    assert created.status_code == 403


def test_api_tokens_and_sessions_still_work_alongside(admin_client: APIClient, tenant: Tenant) -> None:
    assert admin_client.get("/api/v1/tenants/acme/").status_code == 200
    # a bearer value of neither shape is not a credential at all
    assert bearer("not-a-token").get("/api/v1/tenants/acme/").status_code in (401, 403)


def test_token_client_rechecks_any_clients_state_for_resource_servers(
    runtime: Runtime, tenant: Tenant, device: Device
) -> None:
    # given a device client's verified token (what ingest holds after verify_access_token)
    client, secret = make_oauth_client(tenant, "device", device=device)
    claims = tokens.verify_access_token(runtime, access_token(client.client_id, secret), audience=tokens.AUD_INGEST)
    assert token_client(claims).pk == client.pk
    # when the device is disabled, or the client revoked, then the same claims are refused
    Device.objects.filter(pk=device.pk).update(status=Device.Status.DISABLED)
    with pytest.raises(Unauthenticated) as disabled:
        token_client(claims)
    Device.objects.filter(pk=device.pk).update(status=Device.Status.ACTIVE)
    oauth_client_revoke(actor=Actor.system("test"), client=client)
    with pytest.raises(Unauthenticated) as revoked:
        token_client(claims)
    assert (disabled.value.code, revoked.value.code) == ("device_disabled", "client_revoked")
