"""Streams, groups and devices through the REST API, including bulk import."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from devices.models import Device, DeviceGroup, Stream
from tenants.models import AuditEvent, Tenant

pytestmark = pytest.mark.django_db
BASE = "/api/v1/tenants/acme"


def test_stream_topic_name_retention_and_defaults(admin_client: APIClient, tenant: Tenant) -> None:
    raw = admin_client.post(f"{BASE}/streams/", {"region": "us", "type": "humidity"}, format="json")
    assert raw.status_code == 201, raw.json()
    assert raw.json()["topic"] == "iot.acme.us.humidity"
    assert raw.json()["retention_ms"] == 6 * 3_600_000
    assert raw.json()["status"] == "pending"
    enriched = admin_client.post(
        f"{BASE}/streams/", {"region": "us", "type": "humidity", "retention_class": "enriched"}, format="json"
    )
    assert enriched.json()["topic"] == "iot.acme.us.humidity.enriched"
    assert enriched.json()["retention_ms"] == 168 * 3_600_000
    duplicate = admin_client.post(f"{BASE}/streams/", {"region": "us", "type": "humidity"}, format="json")
    assert (duplicate.status_code, duplicate.json()["error"]["code"]) == (409, "already_exists")
    assert "already exists" in duplicate.json()["error"]["message"]


def test_custom_retention_needs_hours(admin_client: APIClient, tenant: Tenant) -> None:
    response = admin_client.post(
        f"{BASE}/streams/", {"region": "us", "type": "xy", "retention_class": "custom"}, format="json"
    )
    assert response.status_code == 400
    ok = admin_client.post(
        f"{BASE}/streams/",
        {"region": "us", "type": "xy", "retention_class": "custom", "custom_retention_hours": 48},
        format="json",
    )
    assert ok.json()["retention_ms"] == 48 * 3_600_000


def test_stream_partitions_only_grow_and_names_are_fixed(admin_client: APIClient, tenant: Tenant) -> None:
    stream = Stream.objects.get(tenant=tenant)
    shrink = admin_client.patch(f"{BASE}/streams/{stream.pk}/", {"partitions": 1}, format="json")
    assert shrink.status_code == 409  # well formed; the stream's current partitions refuse it
    assert shrink.json()["error"]["fields"][0]["code"] == "partitions_decrease"
    rename = admin_client.patch(f"{BASE}/streams/{stream.pk}/", {"region": "us"}, format="json")
    assert rename.status_code == 400
    assert rename.json()["error"]["fields"][0] == {
        "pointer": "/region", "code": "unknown_field", "message": "Unknown field."
    }  # fmt: skip
    grow = admin_client.patch(f"{BASE}/streams/{stream.pk}/", {"partitions": 6, "compression": "lz4"}, format="json")
    assert grow.status_code == 200
    assert (grow.json()["partitions"], grow.json()["compression"]) == (6, "lz4")


def test_stream_in_use_cannot_be_deleted(admin_client: APIClient, tenant: Tenant) -> None:
    stream = Stream.objects.get(tenant=tenant)
    response = admin_client.delete(f"{BASE}/streams/{stream.pk}/")
    assert response.status_code == 409
    assert "sensors" in response.json()["error"]["message"]
    assert Stream.objects.filter(pk=stream.pk).exists()


def test_group_cannot_target_another_tenants_stream(admin_client: APIClient, tenant: Tenant,
                                                    other_tenant: Tenant) -> None:  # fmt: skip
    foreign = Stream.objects.get(tenant=other_tenant)
    body = {"slug": "cams", "region": "eu", "device_type": "temperature", "stream": foreign.pk, "schema_subject": "s"}
    response = admin_client.post(f"{BASE}/groups/", body, format="json")
    assert response.status_code == 404  # exactly as for a stream that does not exist
    assert response.json()["error"]["fields"][0] == {
        "pointer": "/stream", "code": "does_not_exist", "message": "No such stream in this tenant."
    }  # fmt: skip
    assert not DeviceGroup.objects.filter(slug="cams").exists()


def test_group_lifecycle(admin_client: APIClient, tenant: Tenant) -> None:
    stream = Stream.objects.get(tenant=tenant)
    body = {"slug": "cams", "region": "eu", "device_type": "temperature", "stream": stream.pk}
    created = admin_client.post(f"{BASE}/groups/", body, format="json")
    assert created.status_code == 201
    assert created.json()["kafka_principal"] == "User:acme.cams"
    assert created.json()["kafka_direct"] is False  # Kafka-direct access is opt-in
    assert created.json()["schema_subject"] == f"{stream.topic}-value"  # the stream topic's value subject
    assert admin_client.patch(f"{BASE}/groups/cams/", {"rate_limit_per_second": 50}, format="json").status_code == 200
    assert admin_client.post(f"{BASE}/groups/", body, format="json").status_code == 409  # duplicate slug
    admin_client.post(f"{BASE}/devices/", {"device_id": "cam-1", "group": "cams"}, format="json")
    busy = admin_client.delete(f"{BASE}/groups/cams/")
    assert busy.status_code == 409
    admin_client.delete(f"{BASE}/devices/cam-1/")
    assert admin_client.delete(f"{BASE}/groups/cams/").status_code == 204


@pytest.mark.parametrize("subject", ["iot.globex.eu.temperature-value", "orders-value", "iot.acmex.eu.t-value"])
def test_a_group_cannot_validate_against_another_tenants_subject(
    admin_client: APIClient, tenant: Tenant, subject: str
) -> None:
    stream = Stream.objects.get(tenant=tenant)
    body = {"slug": "cams", "stream": stream.pk, "schema_subject": subject}
    refused = admin_client.post(f"{BASE}/groups/", body, format="json")
    assert refused.status_code == 403
    assert (refused.json()["error"]["fields"][0]["pointer"], refused.json()["error"]["fields"][0]["code"]) == (
        "/schema_subject", "foreign_subject"
    )  # fmt: skip
    sensors = admin_client.patch(f"{BASE}/groups/sensors/", {"schema_subject": subject}, format="json")
    assert sensors.status_code == 403
    assert DeviceGroup.objects.get(tenant=tenant, slug="sensors").schema_subject.startswith("iot.acme.")


def test_device_crud_and_filters(admin_client: APIClient, tenant: Tenant) -> None:
    created = admin_client.post(
        f"{BASE}/devices/", {"device_id": "dev-001", "group": "sensors", "labels": {"site": "berlin"}}, format="json"
    )
    assert created.status_code == 201, created.json()
    admin_client.post(f"{BASE}/devices/", {"device_id": "other-1", "group": "sensors"}, format="json")
    assert admin_client.get(f"{BASE}/devices/dev-001/").json()["labels"] == {"site": "berlin"}
    listed = admin_client.get(f"{BASE}/devices/?device_id_prefix=dev-").json()
    assert [d["device_id"] for d in listed["results"]] == ["dev-001"]
    disabled = admin_client.patch(f"{BASE}/devices/dev-001/", {"status": "disabled"}, format="json")
    assert disabled.json()["status"] == "disabled"
    assert admin_client.get(f"{BASE}/devices/?status=disabled").json()["count"] == 1
    bad_filter = admin_client.get(f"{BASE}/devices/?status=sideways")
    assert bad_filter.status_code == 400
    assert admin_client.delete(f"{BASE}/devices/dev-001/").status_code == 204
    assert admin_client.get(f"{BASE}/devices/dev-001/").status_code == 404
    actions = set(AuditEvent.objects.filter(tenant_slug="acme").values_list("action", flat=True))
    assert {"device.create", "device.update", "device.delete"} <= actions


@pytest.mark.parametrize(
    ("body", "pointer", "code"),
    [
        ({"device_id": "has space", "group": "sensors"}, "/device_id", "invalid_device_id"),
        ({"device_id": "d1\n", "group": "sensors"}, "/device_id", "invalid_device_id"),
        ({"device_id": 1, "group": "sensors"}, "/device_id", "invalid"),
        ({"device_id": "d1", "group": "sensors", "labels": {"a": 1}}, "/labels/a", "invalid"),
        ({"device_id": "d1", "group": "sensors", "owner": "me"}, "/owner", "unknown_field"),
        ({"device_id": "", "group": "sensors"}, "/device_id", "blank"),
    ],
)
def test_bad_device_input(admin_client: APIClient, tenant: Tenant, body: dict, pointer: str, code: str) -> None:
    response = admin_client.post(f"{BASE}/devices/", body, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert (pointer, code) in [(f["pointer"], f["code"]) for f in fields], fields
    assert not Device.objects.exists()


def test_a_device_in_a_group_that_does_not_exist_is_404_on_group(admin_client: APIClient, tenant: Tenant) -> None:
    response = admin_client.post(f"{BASE}/devices/", {"device_id": "d1", "group": "nope"}, format="json")
    assert response.status_code == 404
    assert [(f["pointer"], f["code"]) for f in response.json()["error"]["fields"]] == [("/group", "does_not_exist")]
    assert not Device.objects.exists()


def test_duplicate_device_id_in_tenant(admin_client: APIClient, tenant: Tenant) -> None:
    admin_client.post(f"{BASE}/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    again = admin_client.post(f"{BASE}/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["fields"][0]["pointer"] == "/device_id"
    assert again.json()["error"]["fields"][0]["code"] == "unique"
    assert Device.objects.count() == 1


def test_a_duplicate_that_slips_past_the_check_is_still_a_field_error(
    admin_client: APIClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a device created by a concurrent request after this one's duplicate check
    admin_client.post(f"{BASE}/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    monkeypatch.setattr("devices.services._refuse_duplicate", lambda *_: None)
    monkeypatch.setattr(Device, "validate_unique", lambda *_, **__: None)
    monkeypatch.setattr(Device, "validate_constraints", lambda *_, **__: None)
    # when the insert hits the database's unique constraint
    again = admin_client.post(f"{BASE}/devices/", {"device_id": "d1", "group": "sensors"}, format="json")
    # then the caller gets the same field error, not a 500, and nothing was added
    assert again.status_code == 409
    assert (again.json()["error"]["fields"][0]["pointer"], again.json()["error"]["fields"][0]["code"]) == (
        "/device_id", "unique"
    )  # fmt: skip
    assert Device.objects.count() == 1


def test_any_other_write_race_is_a_409_not_a_500(
    admin_client: APIClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a group created by a concurrent request after this one's checks ran
    stream = Stream.objects.get(tenant=tenant)
    body = {"slug": "cams", "region": "eu", "device_type": "temperature", "stream": stream.pk}
    assert admin_client.post(f"{BASE}/groups/", body, format="json").status_code == 201
    monkeypatch.setattr("devices.services._refuse_duplicate", lambda *_: None)
    monkeypatch.setattr(DeviceGroup, "validate_unique", lambda *_, **__: None)
    monkeypatch.setattr(DeviceGroup, "validate_constraints", lambda *_, **__: None)
    # when its insert hits the unique constraint
    again = admin_client.post(f"{BASE}/groups/", body, format="json")
    # then a 409 with a stable code tells the caller to retry, and nothing was added
    assert (again.status_code, again.json()["error"]["code"]) == (409, "concurrent_change")
    assert DeviceGroup.objects.filter(tenant=tenant, slug="cams").count() == 1


def test_device_quota(operator_client: APIClient, admin_client: APIClient, tenant: Tenant) -> None:
    operator_client.patch(f"{BASE}/", {"max_devices": 1}, format="json")
    assert (
        admin_client.post(f"{BASE}/devices/", {"device_id": "d1", "group": "sensors"}, format="json").status_code == 201
    )
    over = admin_client.post(f"{BASE}/devices/", {"device_id": "d2", "group": "sensors"}, format="json")
    assert over.status_code == 409
    assert over.json()["error"]["code"] == "quota_exceeded"


def test_bulk_import_json_thousands(admin_client: APIClient, tenant: Tenant) -> None:
    rows = [{"device_id": f"sensor-{i:05d}", "group": "sensors", "labels": {"batch": "1"}} for i in range(5000)]
    response = admin_client.post(f"{BASE}/devices/bulk", {"devices": rows}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json() == {"created": 5000}
    assert Device.objects.filter(tenant=tenant).count() == 5000
    assert AuditEvent.objects.get(action="device.bulk_import").after["count"] == 5000


def test_bulk_import_reports_every_bad_row_and_writes_nothing(admin_client: APIClient, tenant: Tenant) -> None:
    admin_client.post(f"{BASE}/devices/", {"device_id": "exists", "group": "sensors"}, format="json")
    rows = [
        {"device_id": "ok-1", "group": "sensors"},
        {"device_id": "bad id", "group": "sensors"},
        {"device_id": "ok-2", "group": "ghosts"},
        {"device_id": "ok-1", "group": "sensors"},
        {"device_id": "exists", "group": "sensors"},
        {"device_id": "ok-3", "group": "sensors", "colour": "red"},
    ]
    response = admin_client.post(f"{BASE}/devices/bulk", {"devices": rows}, format="json")
    assert response.status_code == 400
    found = {(f["pointer"], f["code"]) for f in response.json()["error"]["fields"]}
    assert {
        ("/rows/1/device_id", "invalid_device_id"),
        ("/rows/2/group", "does_not_exist"),
        ("/rows/3/device_id", "duplicate"),
        ("/rows/4/device_id", "unique"),
        ("/rows/5/colour", "unknown_field"),
    } <= found
    assert "5 row(s) are invalid" in response.json()["error"]["message"]
    assert list(Device.objects.values_list("device_id", flat=True)) == ["exists"]


def test_bulk_import_csv(admin_client: APIClient, tenant: Tenant) -> None:
    body = "device_id,group,label:site\nc-1,sensors,berlin\nc-2,sensors,\n"
    response = admin_client.post(f"{BASE}/devices/bulk", body, content_type="text/csv")
    assert response.status_code == 201, response.json()
    assert Device.objects.get(device_id="c-1").labels == {"site": "berlin"}
    assert Device.objects.get(device_id="c-2").labels == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("device_id,group\nc-1,sensors,extra\n", "more values than the header"),
        ('device_id,group\n"c-1,sensors\n', "Malformed CSV"),
        ("", "no header row"),
    ],
)
def test_malformed_csv(admin_client: APIClient, tenant: Tenant, body: str, message: str) -> None:
    response = admin_client.post(f"{BASE}/devices/bulk", body, content_type="text/csv")
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert not Device.objects.exists()


def test_oversized_bulk_import_is_413(admin_client: APIClient, tenant: Tenant, settings: object) -> None:
    settings.SLUICE_BULK_IMPORT_MAX_ROWS = 10  # type: ignore[attr-defined]
    rows = [{"device_id": f"d{i}", "group": "sensors"} for i in range(11)]
    response = admin_client.post(f"{BASE}/devices/bulk", {"devices": rows}, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not Device.objects.exists()


def test_unsupported_media_type(admin_client: APIClient, tenant: Tenant) -> None:
    response = admin_client.post(f"{BASE}/devices/bulk", "<xml/>", content_type="application/xml")
    assert response.status_code == 415


def test_pagination(admin_client: APIClient, tenant: Tenant) -> None:
    rows = [{"device_id": f"p-{i:03d}", "group": "sensors"} for i in range(250)]
    admin_client.post(f"{BASE}/devices/bulk", {"devices": rows}, format="json")
    page = admin_client.get(f"{BASE}/devices/?limit=100&offset=200").json()
    assert page["count"] == 250
    assert len(page["results"]) == 50
    assert page["results"][0]["device_id"] == "p-200"


@pytest.mark.parametrize(("replicas", "min_isr"), [(1, "1"), (2, "2"), (3, "2"), (5, "2")])
def test_acks_all_waits_for_two_replicas_where_there_are_two(tenant: Tenant, replicas: int, min_isr: str) -> None:
    stream = Stream(tenant=tenant, region="eu", type="t", replication_factor=replicas)
    assert stream.topic_config()["min.insync.replicas"] == min_isr


@pytest.mark.parametrize("row", [None, 1, "x", [], True])
def test_a_bulk_row_that_is_not_an_object_is_a_field_error_not_a_500(
    admin_client: APIClient, tenant: Tenant, row: object
) -> None:
    # when a bulk import names a row that is not an object (the review's {"devices": [null]})
    response = admin_client.post(f"{BASE}/devices/bulk", {"devices": [{"device_id": "ok", "group": "sensors"}, row]},
                                 format="json")  # fmt: skip
    # then it is a 400 naming that row, and nothing was imported
    assert response.status_code == 400, response.content
    assert [(f["pointer"], f["code"]) for f in response.json()["error"]["fields"]] == [("/rows/1", "invalid")]
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    ("row", "pointer", "code"),
    [
        ({"device_id": 12, "group": "sensors"}, "/rows/0/device_id", "invalid"),
        ({"device_id": "d-1", "group": 7}, "/rows/0/group", "invalid"),
        ({"device_id": "d-1\n", "group": "sensors"}, "/rows/0/device_id", "invalid_device_id"),
    ],
)
def test_bulk_rows_are_as_strict_as_a_single_device(
    admin_client: APIClient, tenant: Tenant, row: dict, pointer: str, code: str
) -> None:
    response = admin_client.post(f"{BASE}/devices/bulk", {"devices": [row]}, format="json")
    assert response.status_code == 400
    assert (pointer, code) in [(f["pointer"], f["code"]) for f in response.json()["error"]["fields"]]
    assert not Device.objects.exists()


@pytest.mark.parametrize("body", [{"devices": "x"}, {"devices": None}, [{"device_id": "d", "group": "sensors"}]])
def test_a_bulk_body_that_is_not_devices_is_400(admin_client: APIClient, tenant: Tenant, body: object) -> None:
    response = admin_client.post(f"{BASE}/devices/bulk", body, format="json")
    assert response.status_code == 400
    assert not Device.objects.exists()


def test_a_label_name_with_nul_is_refused_where_devices_are_written(admin_client: APIClient, tenant: Tenant) -> None:
    # no database stores NUL (PostgreSQL's jsonb refuses it: a 500 before), so the API says so
    labels = {"room\u0000": "a"}
    row = {"group": "sensors", "labels": labels}
    one = admin_client.post(f"{BASE}/devices/", {"device_id": "d1", **row}, format="json")
    bulk = admin_client.post(f"{BASE}/devices/bulk", {"devices": [{"device_id": "d2", **row}]}, format="json")
    job = admin_client.post(f"{BASE}/devices/import-jobs", {"devices": [{"device_id": "d3", **row}]}, format="json")
    for response in (one, bulk, job):
        assert response.status_code == 400, response.content
        assert response.json()["error"]["fields"][0]["pointer"].endswith("/labels")
    # and the document says it: label names match a pattern without NUL
    schema = admin_client.get("/api/schema/?format=json").json()
    assert schema["components"]["schemas"]["DeviceInputRequest"]["properties"]["labels"]["propertyNames"] == {
        "pattern": "^[^\\u0000]*$"
    }
