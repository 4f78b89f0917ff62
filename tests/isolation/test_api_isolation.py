"""Tenant A's admin and service client against tenant B through the REST API: lists, names
inside bodies, and members of nothing.  Every URL with every method and every kind of
credential is tried in test_url_isolation.py, generated from the URL resolver."""

from __future__ import annotations

import pytest

from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
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
