"""OAuth clients over REST: the secret once, field errors with pointers, roles, tenant
isolation, the audit trail, the OpenAPI spec, and the admin page."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from devices.models import Device, DeviceGroup
from tenants.hashing import hash_token
from tenants.models import AuditEvent, Tenant
from tenants.oauth.models import OAuthClient
from tests.conftest import make_user
from tests.oauth.support import make_oauth_client, request_token, service_api

pytestmark = pytest.mark.django_db

URL = "/api/v1/tenants/acme/oauth-clients/"


def field_codes(response: object, status: int = 400) -> set[tuple[str, str]]:
    """The field errors of a refusal: 400 for a malformed request; 404 (a name that does not
    exist in the tenant) and 409 (a state that refuses it) for a well-formed one."""
    assert response.status_code == status, response.json()  # type: ignore[attr-defined]
    return {(f["pointer"], f["code"]) for f in response.json()["error"]["fields"]}  # type: ignore[attr-defined]


def test_admin_creates_a_device_client_and_sees_the_secret_once(admin_client: APIClient, device: Device) -> None:
    # when acme's admin creates a device client
    body = {"name": "dev-1 token", "kind": "device", "scopes": ["ingest:write"], "device": "dev-1"}
    created = admin_client.post(URL, body, format="json")
    # then the answer carries the secret, once, and where to use it
    assert created.status_code == 201, created.json()
    data = created.json()
    assert created["Cache-Control"] == "no-store"
    assert (data["kind"], data["device"], data["group"], data["kafka_principal"], data["status"]) == (
        "device",
        "dev-1",
        "sensors",
        f"acme.sensors.{data['client_id']}",
        "active",
    )
    assert data["token_endpoint"].endswith("/oauth/token")
    secret = data["client_secret"]
    # and only its hash is stored; reading the client again never shows it
    stored = OAuthClient.objects.get(client_id=data["client_id"])
    assert stored.secret_hash == hash_token(secret)
    again = admin_client.get(f"{URL}{data['client_id']}/").json()
    listed = admin_client.get(URL).json()["results"]
    assert "client_secret" not in again
    assert secret not in str(listed)
    # and the secret works at the token endpoint
    assert request_token(data["client_id"], secret).status_code == 200
    # and the creation is audited, without the secret or its hash
    event = AuditEvent.objects.get(action="oauth_client.create")
    assert (event.actor_label, event.tenant_slug, event.object_id) == ("acme-admin", "acme", data["client_id"])
    assert secret not in str(event.after)
    assert stored.secret_hash not in str(event.after)


def test_gateway_and_service_clients(admin_client: APIClient, oauth_group: DeviceGroup) -> None:
    gateway = admin_client.post(
        URL, {"name": "gw", "kind": "gateway", "scopes": ["kafka:produce"], "group": "sensors"}, format="json"
    )
    assert gateway.status_code == 201, gateway.json()
    assert (gateway.json()["group"], gateway.json()["device"]) == ("sensors", None)
    service = admin_client.post(URL, {"name": "ci", "kind": "service", "scopes": ["provision:read"]}, format="json")
    assert service.status_code == 201, service.json()
    assert service.json()["kafka_principal"] is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": "x", "kind": "service", "scopes": ["ingest:write"]}, ("/scopes/0", "scope_not_allowed")),
        (
            {"name": "x", "kind": "device", "scopes": ["provision:read"], "device": "dev-1"},
            ("/scopes/0", "scope_not_allowed"),
        ),
        ({"name": "x", "kind": "service", "scopes": ["root"]}, ("/scopes/0", "invalid_choice")),
        ({"name": "x", "kind": "service", "scopes": []}, ("/scopes", "empty")),
        ({"name": "x", "kind": "device", "scopes": ["ingest:write"]}, ("/device", "required")),
        ({"name": "x", "kind": "device", "scopes": ["ingest:write"], "device": "ghost"}, ("/device", "does_not_exist")),
        ({"name": "x", "kind": "gateway", "scopes": ["kafka:produce"]}, ("/group", "required")),
        ({"name": "x", "kind": "gateway", "scopes": ["kafka:produce"], "group": "ghost"}, ("/group", "does_not_exist")),
        ({"name": "x", "kind": "service", "scopes": ["provision:read"], "group": "sensors"}, ("/group", "not_allowed")),
        ({"name": "x", "kind": "robot", "scopes": ["provision:read"]}, ("/kind", "invalid_choice")),
        ({"name": "", "kind": "service", "scopes": ["provision:read"]}, ("/name", "blank")),
        (
            {"name": "x", "kind": "service", "scopes": ["provision:read"], "secret": "mine"},
            ("/secret", "unknown_field"),
        ),
    ],
)
def test_bad_input_is_a_field_error(
    admin_client: APIClient, device: Device, body: dict, expected: tuple[str, str]
) -> None:
    status = 404 if expected[1] == "does_not_exist" else 400  # a name that does not exist is not malformed
    assert expected in field_codes(admin_client.post(URL, body, format="json"), status)
    assert not OAuthClient.objects.exists()


def test_mtls_only_groups_get_no_oauth_clients(admin_client: APIClient, tenant: Tenant) -> None:
    # given the default group, which allows mTLS certificates only, and a device in it
    Device.objects.create(tenant=tenant, group=DeviceGroup.objects.get(tenant=tenant), device_id="cert-only")
    gateway = admin_client.post(
        URL, {"name": "gw", "kind": "gateway", "scopes": ["kafka:produce"], "group": "sensors"}, format="json"
    )
    device = admin_client.post(
        URL, {"name": "d", "kind": "device", "scopes": ["ingest:write"], "device": "cert-only"}, format="json"
    )
    assert ("/group", "credential_policy") in field_codes(gateway, 409)
    assert ("/device", "credential_policy") in field_codes(device, 409)


def test_disabled_device_gets_no_client(admin_client: APIClient, device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(status=Device.Status.DISABLED)
    response = admin_client.post(
        URL, {"name": "d", "kind": "device", "scopes": ["ingest:write"], "device": "dev-1"}, format="json"
    )
    assert ("/device", "device_disabled") in field_codes(response, 409)


def test_rotate_and_revoke(admin_client: APIClient, tenant: Tenant) -> None:
    client, old = make_oauth_client(tenant)
    # when the admin rotates the secret
    rotated = admin_client.post(f"{URL}{client.client_id}/rotate-secret")
    # then a new secret comes back once, and only it works
    assert rotated.status_code == 200, rotated.json()
    new = rotated.json()["client_secret"]
    assert request_token(client.client_id, old).status_code == 401
    assert request_token(client.client_id, new).status_code == 200
    # when the admin revokes it (twice: idempotent), then it is revoked, kept and audited once
    assert admin_client.delete(f"{URL}{client.client_id}/").status_code == 204
    assert admin_client.delete(f"{URL}{client.client_id}/").status_code == 204
    shown = admin_client.get(f"{URL}{client.client_id}/").json()
    assert shown["status"] == "revoked"
    assert shown["revoked_at"] is not None
    assert request_token(client.client_id, new).status_code == 401
    assert AuditEvent.objects.filter(action="oauth_client.revoke").count() == 1
    # and a revoked client gets no new secret
    again = admin_client.post(f"{URL}{client.client_id}/rotate-secret")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "client_revoked")


def test_viewer_reads_but_cannot_create_rotate_or_revoke(viewer_client: APIClient, tenant: Tenant) -> None:
    client, _secret = make_oauth_client(tenant)
    assert viewer_client.get(URL).json()["count"] == 1
    assert (
        viewer_client.post(
            URL, {"name": "x", "kind": "service", "scopes": ["provision:read"]}, format="json"
        ).status_code
        == 403
    )
    assert viewer_client.post(f"{URL}{client.client_id}/rotate-secret").status_code == 403
    assert viewer_client.delete(f"{URL}{client.client_id}/").status_code == 403
    assert OAuthClient.objects.get(pk=client.pk).is_active


def test_tenant_admin_cannot_see_rotate_or_revoke_another_tenants_clients(
    admin_client: APIClient, operator_client: APIClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    # given a client of globex
    theirs, secret = make_oauth_client(other_tenant)
    base = f"/api/v1/tenants/globex/oauth-clients/{theirs.client_id}/"
    # when acme's admin tries it by every route, including through acme's own URL
    attempts = [
        admin_client.get("/api/v1/tenants/globex/oauth-clients/"),
        admin_client.post(
            "/api/v1/tenants/globex/oauth-clients/",
            {"name": "x", "kind": "service", "scopes": ["provision:read"]},
            format="json",
        ),
        admin_client.get(base),
        admin_client.delete(base),
        admin_client.post(f"{base}rotate-secret"),
        admin_client.get(f"{URL}{theirs.client_id}/"),
        admin_client.delete(f"{URL}{theirs.client_id}/"),
        admin_client.post(f"{URL}{theirs.client_id}/rotate-secret"),
    ]
    # then every answer is a 404, and globex's client is untouched
    assert [r.status_code for r in attempts] == [404] * len(attempts)
    assert theirs.client_id not in str(admin_client.get(URL).json())
    assert request_token(theirs.client_id, secret).status_code == 200
    assert not OAuthClient.objects.filter(tenant=other_tenant).exclude(pk=theirs.pk).exists()
    # and an operator reaches every tenant's clients
    assert operator_client.get(base).status_code == 200
    assert operator_client.post(f"{base}rotate-secret").status_code == 200


def test_a_device_of_another_tenant_is_unknown(admin_client: APIClient, other_tenant: Tenant) -> None:
    group = DeviceGroup.objects.get(tenant=other_tenant)
    group.credential_policy = DeviceGroup.CredentialPolicy.BOTH
    group.save()
    Device.objects.create(tenant=other_tenant, group=group, device_id="their-dev")
    response = admin_client.post(
        URL, {"name": "x", "kind": "device", "scopes": ["ingest:write"], "device": "their-dev"}, format="json"
    )
    assert ("/device", "does_not_exist") in field_codes(response, 404)


def test_clients_api_is_in_the_openapi_spec(operator_client: APIClient) -> None:
    paths = operator_client.get("/api/schema/?format=json").json()["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/tenants/{tenant}/oauth-clients/"])
    assert {"get", "delete"} <= set(paths["/api/v1/tenants/{tenant}/oauth-clients/{client_id}/"])
    assert "post" in paths["/api/v1/tenants/{tenant}/oauth-clients/{client_id}/rotate-secret"]


def test_admin_lists_and_revokes_without_showing_the_hash(tenant: Tenant, other_tenant: Tenant) -> None:
    # given a client in each tenant and acme's admin in the console
    ours, _ = make_oauth_client(tenant)
    theirs, _ = make_oauth_client(other_tenant)
    user = make_user("console-admin", tenant=tenant)
    user.is_staff = True
    user.save()
    console = Client()
    console.force_login(user)
    # then the list shows acme's client only, and no hash
    page = console.get("/admin/tenants/oauthclient/", secure=True)
    assert page.status_code == 200
    assert ours.client_id in page.content.decode()
    assert theirs.client_id not in page.content.decode()
    detail = console.get(f"/admin/tenants/oauthclient/{ours.pk}/change/", secure=True).content.decode()
    assert ours.secret_hash not in detail
    # when the revoke action runs on both (the foreign one smuggled in by id)
    console.post(
        "/admin/tenants/oauthclient/", {"action": "revoke", "_selected_action": [ours.pk, theirs.pk]}, secure=True
    )
    # then only acme's client is revoked
    assert OAuthClient.objects.get(pk=ours.pk).status == "revoked"
    assert OAuthClient.objects.get(pk=theirs.pk).status == "active"


def test_service_client_with_write_scope_manages_device_clients(tenant: Tenant, device: Device) -> None:
    # automation provisioning its devices' credentials is the point of provision:write
    api, robot = service_api(tenant, ["provision:write"])
    created = api.post(
        URL, {"name": "d", "kind": "device", "scopes": ["ingest:write"], "device": "dev-1"}, format="json"
    )
    assert created.status_code == 201, created.json()
    event = AuditEvent.objects.get(action="oauth_client.create", object_id=created.json()["client_id"])
    assert event.actor_label == f"oauth:{robot.client_id}"


def test_deleting_a_device_or_group_revokes_its_clients_on_the_record(
    admin_client: APIClient, device: Device, oauth_group: DeviceGroup
) -> None:
    # given a device client and, on a second group, a gateway client
    device_client, _ = make_oauth_client(device.tenant, "device", device=device)
    spare = DeviceGroup.objects.create(tenant=device.tenant, slug="spare", region="eu", device_type="t",
                                       stream=oauth_group.stream, schema_subject=oauth_group.schema_subject,
                                       credential_policy="both")  # fmt: skip
    gateway_client, _ = make_oauth_client(device.tenant, "gateway", group=spare)
    base = f"/api/v1/tenants/{device.tenant.slug}"
    # when the device and the spare group are deleted
    assert admin_client.delete(f"{base}/devices/{device.device_id}/").status_code == 204
    assert admin_client.delete(f"{base}/groups/spare/").status_code == 204
    # then each client's end is in the audit log before its row went with its owner
    revoked = set(AuditEvent.objects.filter(action="oauth_client.revoke").values_list("object_id", flat=True))
    assert revoked == {device_client.client_id, gateway_client.client_id}
