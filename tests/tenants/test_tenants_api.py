"""Tenants, members, audit and tokens through the REST API."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from config.errors import Conflict
from tenants.audit import Actor
from tenants.models import ApiToken, AuditEvent, RetiredSlug, Tenant
from tenants.services import SLUG_RESERVATION, retired_slug_release
from tests.conftest import client_for, make_user

pytestmark = pytest.mark.django_db


def test_operator_creates_a_tenant_and_it_is_audited(operator_client: APIClient) -> None:
    # when an operator creates a tenant, with a request id of their own
    response = operator_client.post(
        "/api/v1/tenants/", {"slug": "initech", "name": "Initech"}, format="json", HTTP_X_REQUEST_ID="req-12345678"
    )
    # then it exists with its topic prefix, and the audit log says who, what and which request
    assert response.status_code == 201, response.json()
    assert response.json()["topic_prefix"] == "iot.initech."
    assert response.json()["dlq_topic"] == "iot.initech.dlq"
    assert response["X-Request-ID"] == "req-12345678"
    event = AuditEvent.objects.get(action="tenant.create")
    assert (event.tenant_slug, event.actor_label, event.request_id) == ("initech", "operator", "req-12345678")
    assert event.after["name"] == "Initech"


@pytest.mark.parametrize(
    ("body", "pointer", "code"),
    [
        ({"slug": "Bad Slug!", "name": "x"}, "/slug", "invalid_slug"),
        ({"slug": "a", "name": "x"}, "/slug", "invalid_slug"),
        ({"slug": "ends-with-", "name": "x"}, "/slug", "invalid_slug"),
        ({"slug": "ok-slug", "name": ""}, "/name", "blank"),
        ({"slug": "ok-slug", "name": "x", "colour": "red"}, "/colour", "unknown_field"),
        ({"slug": "ok-slug", "name": "x", "max_devices": 0}, "/max_devices", "min_value"),
        ({"slug": "ok-slug", "name": "x", "max_devices": 7.5}, "/max_devices", "invalid"),
        ({"slug": "ok-slug", "name": "x", "max_devices": True}, "/max_devices", "invalid"),
        ({"slug": "ok-slug", "name": "x", "max_devices": "7"}, "/max_devices", "invalid"),
        ({"name": "x"}, "/slug", "required"),
    ],
)
def test_bad_tenant_input_is_a_field_error(operator_client: APIClient, body: dict, pointer: str, code: str) -> None:
    response = operator_client.post("/api/v1/tenants/", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert {"pointer": pointer, "code": code} in [{"pointer": f["pointer"], "code": f["code"]} for f in error["fields"]]
    assert not Tenant.objects.filter(slug=body.get("slug", "")).exists()


def test_an_integral_number_is_an_integer_as_the_document_says(operator_client: APIClient) -> None:
    # The OpenAPI 3.1 document's "integer" is JSON Schema 2020-12's: 7.0 is one.
    response = operator_client.post("/api/v1/tenants/", {"slug": "initech", "name": "x", "max_devices": 7.0},
                                    format="json")  # fmt: skip
    assert response.status_code == 201, response.json()
    assert Tenant.objects.get(slug="initech").max_devices == 7


def test_openapi_document_is_3_1(operator_client: APIClient) -> None:
    # 3.1, not 3.0: a 3.0 schema cannot say propertyNames (a label's name may not hold NUL).
    spec = operator_client.get("/api/schema/?format=json").json()
    assert spec["openapi"] == "3.1.0"
    labels = spec["components"]["schemas"]["DeviceRowRequest"]["properties"]["labels"]
    assert labels["propertyNames"] == {"pattern": "^[^\\u0000]*$"}


def test_slug_rule_is_in_the_message(operator_client: APIClient) -> None:
    response = operator_client.post("/api/v1/tenants/", {"slug": "Bad Slug!", "name": "x"}, format="json")
    assert "lowercase letters, digits and hyphens" in response.json()["error"]["fields"][0]["message"]


def test_duplicate_tenant_slug_is_refused(operator_client: APIClient, tenant: Tenant) -> None:
    response = operator_client.post("/api/v1/tenants/", {"slug": tenant.slug, "name": "Again"}, format="json")
    # well formed, but the slug is taken: 409, on the field
    assert (response.status_code, response.json()["error"]["code"]) == (409, "already_exists")
    assert response.json()["error"]["fields"][0]["pointer"] == "/slug"
    assert Tenant.objects.filter(slug=tenant.slug).count() == 1


def test_tenant_admin_cannot_create_tenants_or_change_quotas(admin_client: APIClient, tenant: Tenant) -> None:
    assert admin_client.post("/api/v1/tenants/", {"slug": "mine", "name": "x"}, format="json").status_code == 403
    assert admin_client.patch("/api/v1/tenants/acme/", {"max_devices": 10**9}, format="json").status_code == 403
    renamed = admin_client.patch("/api/v1/tenants/acme/", {"name": "ACME Corp"}, format="json")
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "ACME Corp"


def test_viewer_reads_but_cannot_write(viewer_client: APIClient, tenant: Tenant) -> None:
    assert viewer_client.get("/api/v1/tenants/acme/").status_code == 200
    assert viewer_client.get("/api/v1/tenants/acme/devices/").status_code == 200
    response = viewer_client.patch("/api/v1/tenants/acme/", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    created = viewer_client.post(
        "/api/v1/tenants/acme/devices/", {"device_id": "d1", "group": "sensors"}, format="json"
    )
    assert created.status_code == 403


def test_list_shows_only_the_users_tenants(admin_client: APIClient, tenant: Tenant, other_tenant: Tenant) -> None:
    slugs = [t["slug"] for t in admin_client.get("/api/v1/tenants/").json()["results"]]
    assert slugs == ["acme"]


def test_operator_sees_all_tenants(operator_client: APIClient, tenant: Tenant, other_tenant: Tenant) -> None:
    body = operator_client.get("/api/v1/tenants/").json()
    assert [t["slug"] for t in body["results"]] == ["acme", "globex"]
    assert body["count"] == 2


def test_suspend_and_resume(operator_client: APIClient, tenant: Tenant) -> None:
    assert operator_client.post("/api/v1/tenants/acme/suspend").json()["status"] == "suspended"
    tenant.refresh_from_db()
    assert not tenant.is_active
    assert operator_client.post("/api/v1/tenants/acme/resume").json()["status"] == "active"
    assert list(AuditEvent.objects.filter(tenant_slug="acme").values_list("action", flat=True)) == [
        "tenant.resume",
        "tenant.suspend",
    ]


def test_delete_needs_the_slug_as_confirmation(operator_client: APIClient, tenant: Tenant) -> None:
    # without the confirmation it is malformed; with another slug the tenant's state refuses it
    missing = operator_client.delete("/api/v1/tenants/acme/")
    assert (missing.status_code, missing.json()["error"]["fields"][0]["code"]) == (400, "required")
    refused = operator_client.delete("/api/v1/tenants/acme/?confirm=globex")
    assert refused.status_code == 409
    assert refused.json()["error"]["fields"][0]["code"] == "confirmation_mismatch"
    assert Tenant.objects.filter(slug="acme").exists()
    assert operator_client.delete("/api/v1/tenants/acme/?confirm=acme").status_code == 204
    assert not Tenant.objects.filter(slug="acme").exists()
    event = AuditEvent.objects.get(action="tenant.delete")
    assert event.tenant_slug == "acme"
    assert "iot.acme.dlq" in event.after["topics_deleted"]


def test_a_deleted_tenants_slug_is_reserved_then_freed(operator_client: APIClient, tenant: Tenant) -> None:
    # given tenant acme deleted with its topics
    assert operator_client.delete("/api/v1/tenants/acme/?confirm=acme").status_code == 204
    # when someone creates a tenant with the same slug
    again = operator_client.post("/api/v1/tenants/", {"slug": "acme", "name": "Not Acme"}, format="json")
    # then it is refused with a stable code on /slug, saying until when
    assert again.status_code == 409, again.json()
    error = again.json()["error"]
    assert error["code"] == "slug_retired"
    assert [(f["pointer"], f["code"]) for f in error["fields"]] == [("/slug", "slug_retired")]
    reserved = RetiredSlug.objects.get(slug="acme")
    assert reserved.reserved_until is not None
    assert reserved.reserved_until - reserved.deleted_at == SLUG_RESERVATION
    assert f"until {reserved.reserved_until:%Y-%m-%d %H:%M} UTC" in error["message"]
    # and once the reservation has run out (as 24 h later), the slug is free again
    RetiredSlug.objects.filter(slug="acme").update(reserved_until=timezone.now() - dt.timedelta(seconds=1))
    assert (
        operator_client.post("/api/v1/tenants/", {"slug": "acme", "name": "New Acme"}, format="json").status_code == 201
    )
    assert not RetiredSlug.objects.filter(slug="acme").exists()


def test_a_slug_whose_topics_were_kept_is_held_until_released(operator_client: APIClient, tenant: Tenant) -> None:
    # given a tenant whose topics are kept on deletion
    Tenant.objects.filter(pk=tenant.pk).update(topic_deletion_policy=Tenant.TopicPolicy.KEEP)
    assert operator_client.delete("/api/v1/tenants/acme/?confirm=acme").status_code == 204
    # then its slug is held with no end, and the refusal says how it frees up
    reserved = RetiredSlug.objects.get(slug="acme")
    assert (reserved.reserved_until, reserved.topics_kept) == (None, ["iot.acme.dlq", "iot.acme.eu.temperature"])
    again = operator_client.post("/api/v1/tenants/", {"slug": "acme", "name": "Not Acme"}, format="json")
    assert again.status_code == 409
    assert "manage.py sluice_release_slug acme" in again.json()["error"]["message"]
    # and releasing is refused while topics are left, then frees it 24 h after the deletion
    with pytest.raises(Conflict, match="still has topics"):
        retired_slug_release(actor=Actor.system("test"), slug="acme", topics_left=["iot.acme.dlq"])
    held = retired_slug_release(actor=Actor.system("test"), slug="acme", topics_left=[])
    assert held is not None
    assert held.reserved_until == reserved.deleted_at + SLUG_RESERVATION
    RetiredSlug.objects.filter(slug="acme").update(deleted_at=timezone.now() - SLUG_RESERVATION)
    assert retired_slug_release(actor=Actor.system("test"), slug="acme", topics_left=[]) is None
    assert AuditEvent.objects.filter(action="tenant.slug_release", object_repr="acme").count() == 2


def test_audit_log_is_append_only(operator_client: APIClient, tenant: Tenant) -> None:
    operator_client.patch("/api/v1/tenants/acme/", {"name": "New"}, format="json")
    event = AuditEvent.objects.get(action="tenant.update")
    assert (event.before["name"], event.after["name"]) == ("Acme Inc.", "New")
    event.action = "forged"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.update(action="forged")


def test_audit_is_listed_per_tenant(admin_client: APIClient, operator_client: APIClient, tenant: Tenant,
                                    other_tenant: Tenant) -> None:  # fmt: skip
    operator_client.patch("/api/v1/tenants/acme/", {"name": "A"}, format="json")
    operator_client.patch("/api/v1/tenants/globex/", {"name": "G"}, format="json")
    events = admin_client.get("/api/v1/tenants/acme/audit/").json()["results"]
    assert [e["tenant"] for e in events] == ["acme"]
    assert events[0]["action"] == "tenant.update"
    filtered = admin_client.get("/api/v1/tenants/acme/audit/?action=nothing").json()
    assert filtered["count"] == 0


def test_members_are_managed_by_the_tenant_admin(admin_client: APIClient, tenant: Tenant) -> None:
    make_user("newcomer")
    added = admin_client.post(
        "/api/v1/tenants/acme/members/", {"username": "newcomer", "role": "viewer"}, format="json"
    )
    assert added.status_code == 201
    names = {m["username"]: m["role"] for m in admin_client.get("/api/v1/tenants/acme/members/").json()["results"]}
    assert names == {"acme-admin": "admin", "newcomer": "viewer"}
    unknown = admin_client.post("/api/v1/tenants/acme/members/", {"username": "ghost", "role": "viewer"}, format="json")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["fields"][0]["pointer"] == "/username"


def test_api_token_is_shown_once_stored_hashed_and_works(tenant: Tenant) -> None:
    # given a tenant admin with a session
    user = make_user("scripter", tenant=tenant)
    session = client_for(user)
    # when they create a token
    created = session.post("/api/v1/tokens/", {"name": "ci"}, format="json").json()
    secret = created["token"]
    # then only its hash is stored, and the secret authenticates a script
    token = ApiToken.objects.get(prefix=created["prefix"])
    assert secret not in token.secret_hash
    assert "token" not in session.get("/api/v1/tokens/").json()["results"][0]
    script = APIClient()
    script.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert script.get("/api/v1/tenants/acme/devices/").status_code == 200
    # and a wrong or revoked token is refused
    script.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}x")
    assert script.get("/api/v1/tenants/acme/devices/").status_code == 401
    ApiToken.objects.filter(pk=token.pk).update(revoked_at="2020-01-01T00:00:00Z")
    script.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert script.get("/api/v1/tenants/acme/devices/").status_code == 401


def test_anonymous_is_refused(db: None) -> None:
    response = APIClient().get("/api/v1/tenants/")
    assert response.status_code in (401, 403)
    assert "error" in response.json()


def test_openapi_spec_and_docs_are_served(operator_client: APIClient) -> None:
    spec = operator_client.get("/api/schema/?format=json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "/api/v1/tenants/{tenant}/devices/bulk" in paths
    assert operator_client.get("/api/docs/").status_code == 200


def test_members_roles_and_no_probing_for_foreign_accounts(
    admin_client: APIClient, operator_client: APIClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    # given a viewer of acme and a user who belongs only to globex
    make_user("acme-viewer-2", tenant=tenant, role="viewer")
    make_user("globex-user", tenant=other_tenant)
    members = "/api/v1/tenants/acme/members/"
    # when acme's admin promotes its own viewer, then it works
    promoted = admin_client.post(members, {"username": "acme-viewer-2", "role": "admin"}, format="json")
    assert (promoted.status_code, promoted.json()["role"]) == (201, "admin")
    # when acme's admin names globex's user or an account that does not exist
    foreign = admin_client.post(members, {"username": "globex-user", "role": "viewer"}, format="json")
    missing = admin_client.post(members, {"username": "nobody-at-all", "role": "viewer"}, format="json")
    # then both get the same answer (existence elsewhere is not revealed) and nothing changes
    assert foreign.status_code == missing.status_code == 404
    answer = foreign.content.decode().replace("globex-user", "?")
    assert answer == missing.content.decode().replace("nobody-at-all", "?")
    assert foreign.json()["error"]["fields"][0]["code"] == "unknown_user"
    assert not other_tenant.memberships.exclude(user__username="globex-user").exists()
    assert not tenant.memberships.filter(user__username="globex-user").exists()
    # when an operator adds that account, then it becomes a member
    added = operator_client.post(members, {"username": "globex-user", "role": "viewer"}, format="json")
    assert added.status_code == 201
    assert admin_client.get(members).json()["count"] == 3  # acme-admin, acme-viewer-2, globex-user


@pytest.mark.parametrize(
    ("since", "found"),
    [("2000-01-01T00:00:00%2B21:55", True), ("0001-01-01T00:00:00%2B14:00", True),
     ("9999-12-31T23:59:59-14:00", False)],
)  # fmt: skip
def test_audit_since_takes_any_iso_offset(admin_client: APIClient, tenant: Tenant, since: str, found: bool) -> None:
    # given an audit row
    admin_client.post("/api/v1/tenants/acme/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    # when the log is asked for what happened since a time with an offset PostgreSQL does not
    # take (over 15:59), or one at the ends of the calendar
    response = admin_client.get(f"/api/v1/tenants/acme/audit/?since={since}")
    # then it is the same instant in UTC: an answer, not a 500
    assert response.status_code == 200, response.content
    assert (response.json()["count"] > 0) is found


def test_an_operation_with_query_parameters_refuses_unknown_ones(operator_client: APIClient, tenant: Tenant) -> None:
    # a misspelt filter must not silently answer everything
    refused = operator_client.get("/api/v1/tenants/acme/devices/?grup=sensors")
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == [
        {"pointer": "/query/grup", "code": "unknown_parameter", "message": "Not a parameter of this operation."}
    ]
    # a parameter without a name is no parameter either
    assert operator_client.get("/api/v1/tenants/?limit=4&=").status_code == 400
    # the declared ones work, and an operation that declares none ignores the query string
    assert operator_client.get("/api/v1/tenants/acme/devices/?group=sensors&limit=1").status_code == 200
    assert operator_client.get("/api/v1/tenants/acme/?anything=1").status_code == 200


def test_every_operation_that_declares_query_parameters_is_found_from_its_route() -> None:
    # given every route of the URL conf, spelt as the OpenAPI document spells paths
    from django.urls import URLPattern, URLResolver, get_resolver

    from tenants.api_base import _openapi_path, declared_query_parameters

    def routes(patterns: list[Any], prefix: str = "") -> list[str]:
        found = []
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                found += routes(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                found.append(prefix + str(pattern.pattern))
        return found

    spelt = {_openapi_path(route) for route in routes(get_resolver().url_patterns)}
    # then each operation with query parameters is reached by some route (a path spelt
    # differently, {pk} for {id}, would leave its unknown parameters unchecked)
    missing = sorted({path for path, _ in declared_query_parameters()} - spelt)
    assert missing == []
