"""Tenant A's admin -- and tenant A's OAuth service client -- against every one of tenant B's
objects, by every verb: always 404, exactly as for an object that does not exist, and B is
left untouched."""

from __future__ import annotations

from typing import Any

import pytest

from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.oauth.models import OAuthClient
from tenants.services import tenant_update
from tests.conftest import client_for, make_tenant, make_user
from tests.oauth.support import make_oauth_client, service_api

pytestmark = pytest.mark.django_db


@pytest.fixture
def b_objects(db: None) -> dict[str, object]:
    b = make_tenant("globex")
    Device.objects.create(tenant=b, group=DeviceGroup.objects.get(tenant=b), device_id="b-dev")
    tenant_update(actor=Actor.system("test"), tenant=b, name="Globex")  # an audit event of B's
    oauth_client, _secret = make_oauth_client(b)
    return {"tenant": b, "stream": Stream.objects.get(tenant=b), "oauth_client": oauth_client}


def b_urls(b_objects: dict[str, object]) -> list[str]:
    stream = b_objects["stream"]
    oauth_client = b_objects["oauth_client"]
    assert isinstance(stream, Stream)
    assert isinstance(oauth_client, OAuthClient)
    return [
        "/api/v1/tenants/globex/",
        "/api/v1/tenants/globex/suspend",
        "/api/v1/tenants/globex/resume",
        "/api/v1/tenants/globex/members/",
        "/api/v1/tenants/globex/audit/",
        "/api/v1/tenants/globex/reconcile",
        "/api/v1/tenants/globex/streams/",
        f"/api/v1/tenants/globex/streams/{stream.pk}/",
        f"/api/v1/tenants/globex/streams/{stream.pk}/schema",
        f"/api/v1/tenants/globex/streams/{stream.pk}/schema/compatibility",
        f"/api/v1/tenants/globex/streams/{stream.pk}/schema/versions",
        f"/api/v1/tenants/globex/streams/{stream.pk}/schema/versions/1",
        "/api/v1/tenants/globex/groups/",
        "/api/v1/tenants/globex/groups/sensors/",
        "/api/v1/tenants/globex/devices/",
        "/api/v1/tenants/globex/devices/bulk",
        "/api/v1/tenants/globex/devices/b-dev/",
        "/api/v1/tenants/globex/devices/b-dev/certificates/",
        "/api/v1/tenants/globex/certificates/bulk",
        "/api/v1/tenants/globex/ca/",
        "/api/v1/tenants/globex/oauth-clients/",
        f"/api/v1/tenants/globex/oauth-clients/{oauth_client.client_id}/",
        f"/api/v1/tenants/globex/oauth-clients/{oauth_client.client_id}/rotate-secret",
    ]


def missing_twin(url: str) -> str:
    """The same URL for a tenant that does not exist at all."""
    return url.replace("/globex/", "/no-such-tenant/")


VERBS = ("get", "post", "put", "patch", "delete", "options", "trace")
BODY = {"name": "pwned", "device_id": "x", "group": "sensors", "region": "eu", "type": "zz", "status": "disabled",
        "schema_type": "JSON", "schema": '{"properties": {}}'}  # fmt: skip


@pytest.mark.parametrize("verb", VERBS)
def test_tenant_admin_gets_404_on_every_other_tenant_url(b_objects: dict[str, object], verb: str) -> None:
    # given tenant A's admin
    a = make_tenant("acme")
    assert_every_b_url_is_404(client_for(make_user("acme-admin", tenant=a)), b_objects, verb)


@pytest.mark.parametrize("verb", VERBS)
def test_service_token_gets_404_on_every_other_tenant_url(b_objects: dict[str, object], verb: str) -> None:
    # given tenant A's service client with provision:write, its token from the token endpoint
    client, _oauth_client = service_api(make_tenant("acme"), ["provision:read", "provision:write"])
    assert_every_b_url_is_404(client, b_objects, verb)


def assert_every_b_url_is_404(client: Any, b_objects: dict[str, object], verb: str) -> None:
    b_client = OAuthClient.objects.get(tenant__slug="globex")
    before = (Device.objects.count(), DeviceGroup.objects.count(), Stream.objects.count(), AuditEvent.objects.count())
    for url in b_urls(b_objects):
        # when A's admin (or service client) tries B's URL with this verb
        response = getattr(client, verb)(url, BODY, format="json")
        twin = getattr(client, verb)(missing_twin(url), BODY, format="json")
        # then it is a 404, answered exactly like a tenant that does not exist
        if response.status_code == 405:
            assert twin.status_code == 405, url
            assert response["Allow"] == twin["Allow"], url
            continue
        if verb == "options":  # DRF describes the view, the same for any tenant: nothing to tell apart
            assert (response.status_code, response.json()) == (twin.status_code, twin.json()), url
            continue
        assert response.status_code == 404, (verb, url, response.status_code)
        assert response.json() == twin.json() | {"error": {**twin.json()["error"],
                                                          "message": twin.json()["error"]["message"].replace(
                                                              "no-such-tenant", "globex")}}, url  # fmt: skip
    # and nothing of B changed
    assert (Device.objects.count(), DeviceGroup.objects.count(), Stream.objects.count(),
            AuditEvent.objects.count()) == before  # fmt: skip
    b = Tenant.objects.get(slug="globex")
    assert (b.name, b.status) == ("Globex", "active")
    assert Device.objects.get(device_id="b-dev").status == "active"
    after = OAuthClient.objects.get(pk=b_client.pk)
    assert (after.status, after.secret_hash) == ("active", b_client.secret_hash)


@pytest.mark.parametrize("principal", ["admin", "service client"])
def test_other_tenants_never_appear_in_lists(b_objects: dict[str, object], principal: str) -> None:
    a = make_tenant("acme")
    client = client_for(make_user("acme-admin", tenant=a)) if principal == "admin" else service_api(a)[0]
    b_client_id = str(getattr(b_objects["oauth_client"], "client_id", ""))
    assert [t["slug"] for t in client.get("/api/v1/tenants/").json()["results"]] == ["acme"]
    for path in ("devices", "groups", "streams", "audit", "members", "oauth-clients"):
        body = client.get(f"/api/v1/tenants/acme/{path}/").json()
        assert "globex" not in str(body), path
        assert "b-dev" not in str(body), path
        assert b_client_id not in str(body), path


def test_references_in_bodies_stay_inside_the_tenant(b_objects: dict[str, object]) -> None:
    # given A's admin naming B's objects inside A's own URLs
    a = make_tenant("acme")
    client = client_for(make_user("acme-admin", tenant=a))
    b_stream = b_objects["stream"]
    assert isinstance(b_stream, Stream)
    # a group of A pointing at B's stream
    body = {"slug": "g2", "region": "eu", "device_type": "temp", "stream": b_stream.pk, "schema_subject": "s"}
    group = client.post("/api/v1/tenants/acme/groups/", body, format="json")
    assert group.status_code == 404  # B's stream is answered like a stream that does not exist
    assert group.json()["error"]["fields"][0]["code"] == "does_not_exist"
    # A's groups are resolved in A only: "sensors" is A's own group, never B's
    device = client.post("/api/v1/tenants/acme/devices/", {"device_id": "b-dev", "group": "sensors"}, format="json")
    assert device.status_code == 201  # device ids are per tenant; B's b-dev is a different device
    assert Device.objects.get(tenant=a, device_id="b-dev").group.tenant == a
    # moving A's device into B's group by id is refused like a missing group
    b_group = DeviceGroup.objects.get(tenant=b_objects["tenant"])
    moved = client.patch("/api/v1/tenants/acme/devices/b-dev/", {"group": f"g{b_group.pk}"}, format="json")
    assert moved.status_code == 404
    assert Device.objects.get(tenant=a, device_id="b-dev").group.tenant == a
    # bulk rows naming a group only B has
    DeviceGroup.objects.filter(tenant=b_objects["tenant"]).update(slug="only-in-b")
    bulk = client.post("/api/v1/tenants/acme/devices/bulk", {"devices": [{"device_id": "z", "group": "only-in-b"}]},
                       format="json")  # fmt: skip
    assert bulk.status_code == 404
    assert bulk.json()["error"]["fields"][0]["code"] == "does_not_exist"


def test_viewer_of_a_and_member_of_nothing(b_objects: dict[str, object]) -> None:
    a = make_tenant("acme")
    outsider = client_for(make_user("outsider"))
    assert outsider.get("/api/v1/tenants/").json()["count"] == 0
    assert outsider.get("/api/v1/tenants/acme/").status_code == 404
    viewer = client_for(make_user("viewer", tenant=a, role="viewer"))
    assert viewer.get("/api/v1/tenants/globex/devices/").status_code == 404
