"""A device group's region and device type are its stream's: taken from the stream when
left out, refused with a field error when they contradict it (on create, on update and when
the group moves to another stream)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from devices.models import DeviceGroup, Stream
from tenants.models import AuditEvent, Tenant

pytestmark = pytest.mark.django_db
BASE = "/api/v1/tenants/acme"


def _fields(response: Any) -> dict[str, str]:
    return {item["pointer"]: item["code"] for item in response.json()["error"]["fields"]}


def test_a_group_without_region_and_device_type_takes_its_streams(admin_client: APIClient, tenant: Tenant) -> None:
    # given the tenant's stream iot.acme.eu.temperature
    stream = Stream.objects.get(tenant=tenant)

    # when a group is created naming only the stream
    created = admin_client.post(f"{BASE}/groups/", {"slug": "thermo", "stream": stream.pk}, format="json")

    # then it carries the stream's region and type
    assert created.status_code == 201, created.json()
    assert (created.json()["region"], created.json()["device_type"]) == ("eu", "temperature")
    group = DeviceGroup.objects.get(tenant=tenant, slug="thermo")
    assert (group.region, group.device_type) == ("eu", "temperature")


def test_a_group_that_contradicts_its_stream_is_refused_field_by_field(admin_client: APIClient, tenant: Tenant) -> None:
    # given the tenant's stream iot.acme.eu.temperature
    stream = Stream.objects.get(tenant=tenant)

    # when a group names us/vibration for it
    body = {"slug": "shakers", "region": "us", "device_type": "vibration", "stream": stream.pk}
    refused = admin_client.post(f"{BASE}/groups/", body, format="json")

    # then a 409 names both fields with a stable code, and nothing was created or audited
    assert refused.status_code == 409, refused.json()
    assert refused.json()["error"]["code"] == "conflict"
    assert _fields(refused) == {"/region": "contradicts_stream", "/device_type": "contradicts_stream"}
    messages = {item["pointer"]: item["message"] for item in refused.json()["error"]["fields"]}
    assert "Must be 'eu', the region of the stream iot.acme.eu.temperature" in messages["/region"]
    assert not DeviceGroup.objects.filter(slug="shakers").exists()
    assert not AuditEvent.objects.filter(action="group.create").exists()

    # and one contradicting field alone is refused on that field only
    only_type = admin_client.post(f"{BASE}/groups/", {**body, "region": "eu"}, format="json")
    assert (only_type.status_code, _fields(only_type)) == (409, {"/device_type": "contradicts_stream"})


def test_an_update_keeps_the_group_in_agreement_with_its_stream(admin_client: APIClient, tenant: Tenant) -> None:
    # given group sensors on iot.acme.eu.temperature, and a second stream iot.acme.us.vibration
    vibration = Stream.objects.create(tenant=tenant, region="us", type="vibration", partitions=1)

    # when a PATCH changes the region alone
    renamed = admin_client.patch(f"{BASE}/groups/sensors/", {"region": "us"}, format="json")

    # then it is refused on /region and the group is unchanged
    assert (renamed.status_code, _fields(renamed)) == (409, {"/region": "contradicts_stream"})
    assert DeviceGroup.objects.get(tenant=tenant, slug="sensors").region == "eu"

    # when the group moves to the other stream naming the old region
    moved_wrong = admin_client.patch(f"{BASE}/groups/sensors/", {"stream": vibration.pk, "region": "eu"},
                                     format="json")  # fmt: skip

    # then that is refused too (the region is the new stream's or nothing)
    assert (moved_wrong.status_code, _fields(moved_wrong)) == (409, {"/region": "contradicts_stream"})
    assert DeviceGroup.objects.get(tenant=tenant, slug="sensors").stream_id != vibration.pk

    # when it moves naming only the stream
    moved = admin_client.patch(f"{BASE}/groups/sensors/", {"stream": vibration.pk}, format="json")

    # then region and device type follow the new stream
    assert moved.status_code == 200, moved.json()
    assert (moved.json()["region"], moved.json()["device_type"], moved.json()["topic"]) == (
        "us", "vibration", "iot.acme.us.vibration"
    )  # fmt: skip
    group = DeviceGroup.objects.get(tenant=tenant, slug="sensors")
    assert (group.region, group.device_type, group.stream_id) == ("us", "vibration", vibration.pk)
