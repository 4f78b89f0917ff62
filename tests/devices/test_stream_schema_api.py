"""A stream's schema through Sluice: read the latest version, register the next one, against
the run's real schema registry (Apicurio, BACKWARD compatibility)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from devices.models import Stream
from tenants.models import AuditEvent, Membership, Tenant
from tests.conftest import client_for, make_tenant, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

READING = {"type": "object", "properties": {"celsius": {"type": "number"}}}
READING_WITH_SITE = {"type": "object", "properties": {"celsius": {"type": "number"}, "site": {"type": "string"}}}
LOOKAHEAD = {"properties": {"id": {"type": "string", "pattern": "^(?=x)x$"}}}
AVRO_READING = {"type": "record", "name": "Reading", "fields": [{"name": "celsius", "type": "double"}]}


@pytest.fixture
def tenant(services: object) -> Tenant:
    # A slug of its own per test: registry subjects outlive the test's database rollback.
    return make_tenant(f"sch-{secrets.token_hex(4)}")


@pytest.fixture
def admin(tenant: Tenant) -> APIClient:
    return client_for(make_user(f"{tenant.slug}-admin", tenant=tenant))


def url(tenant: Tenant, stream: Stream | None = None) -> str:
    stream = stream or Stream.objects.get(tenant=tenant)
    return f"/api/v1/tenants/{tenant.slug}/streams/{stream.pk}/schema"


def test_register_then_read_the_latest_version(admin: APIClient, tenant: Tenant) -> None:
    # given a stream without a schema
    assert admin.get(url(tenant)).json()["error"]["code"] == "schema_not_found"
    # when its admin registers a JSON Schema
    created = admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    # then it is version 1 under the stream's value subject, and reading gives it back
    assert created.status_code == 201, created.json()
    subject = f"iot.{tenant.slug}.eu.temperature-value"
    assert created.json() | {"id": 0} == {"id": 0, "version": 1, "type": "JSON", "schema": json.dumps(READING),
                                          "subject": subject}  # fmt: skip
    latest = admin.get(url(tenant))
    assert latest.status_code == 200
    assert latest.json() == created.json() | {"registered_at": latest.json()["registered_at"],
                                              "registered_by": f"{tenant.slug}-admin"}  # fmt: skip
    # and the registration is in the audit log
    event = AuditEvent.objects.get(tenant=tenant, action="schema.register")
    assert (event.object_repr, event.after["version"]) == (subject, 1)


def test_a_compatible_change_is_the_next_version_and_the_same_schema_is_not_registered_twice(
    admin: APIClient, tenant: Tenant
) -> None:
    admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}, format="json")
    # when a compatible change follows (BACKWARD: dropping a property of an open object)
    second = admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    # then it is version 2 and the latest
    assert (second.status_code, second.json()["version"]) == (201, 2), second.json()
    assert admin.get(url(tenant)).json()["version"] == 2
    # when the first one is sent again, then nothing new is registered: 200 with version 1
    again = admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}, format="json")
    assert (again.status_code, again.json()["version"]) == (200, 1)
    assert AuditEvent.objects.filter(tenant=tenant, action="schema.register").count() == 2


def test_the_registrys_compatibility_refusal_is_a_409_with_its_reason_at_schema(
    admin: APIClient, tenant: Tenant
) -> None:
    # given version 1, optional celsius
    admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    # when the next version closes the object (old records with other properties would fail)
    closed = {**READING, "additionalProperties": False}
    refused = admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(closed)}, format="json")
    # then the registry's BACKWARD rule refuses it, with its reason on /schema, and nothing changed
    assert refused.status_code == 409, refused.json()
    field = refused.json()["error"]["fields"][0]
    assert (field["pointer"], field["code"]) == ("/schema", "incompatible_schema")
    assert field["message"] == ("Incompatible with the latest version: Additional properties are no longer allowed "
                                "(at /additionalProperties in the schema).")  # fmt: skip
    assert admin.get(url(tenant)).json()["version"] == 1


def test_avro_too(admin: APIClient, tenant: Tenant) -> None:
    created = admin.post(url(tenant), {"schema_type": "AVRO", "schema": json.dumps(AVRO_READING)}, format="json")
    assert created.status_code == 201, created.json()
    assert admin.get(url(tenant)).json()["type"] == "AVRO"


@pytest.mark.parametrize(
    ("body", "pointer", "code"),
    [
        ({"schema_type": "JSON", "schema": "{not json"}, "/schema", "invalid_schema"),
        ({"schema_type": "JSON", "schema": json.dumps({"type": 12})}, "/schema", "invalid_schema"),
        ({"schema_type": "AVRO", "schema": json.dumps({"type": "record"})}, "/schema", "invalid_schema"),
        ({"schema_type": "PROTOBUF", "schema": "syntax = 'proto3';"}, "/schema", "invalid_schema"),
        ({"schema_type": "PROTOBUF", "schema": "message {"}, "/schema", "invalid_schema"),
        # a pattern the linear-time engine cannot run (lookahead): refused here, not at every record
        ({"schema_type": "JSON", "schema": json.dumps(LOOKAHEAD)}, "/schema", "invalid_schema"),
        ({"schema_type": "AVRO", "schema": "[1, 2"}, "/schema", "invalid_schema"),
        ({"schema_type": "JSON", "schema": {"type": "object"}}, "/schema", "invalid"),
        ({"schema_type": "JSON"}, "/schema", "required"),
    ],
)
def test_a_bad_schema_is_a_field_error_before_the_registry_is_asked(
    admin: APIClient, tenant: Tenant, body: dict, pointer: str, code: str
) -> None:
    response = admin.post(url(tenant), body, format="json")
    assert response.status_code == 400
    assert (pointer, code) in [(f["pointer"], f["code"]) for f in response.json()["error"]["fields"]]
    assert admin.get(url(tenant)).status_code == 404


def test_viewers_read_admins_write_and_another_tenants_stream_does_not_exist(admin: APIClient,
                                                                               tenant: Tenant) -> None:  # fmt: skip
    admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    viewer = client_for(make_user(f"{tenant.slug}-viewer", tenant=tenant, role=Membership.Role.VIEWER))
    assert viewer.get(url(tenant)).status_code == 200
    refused = viewer.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}, format="json")
    assert refused.status_code == 403
    # another tenant's admin, by the other tenant's URL and by their own URL with this stream's id
    other = make_tenant(f"oth-{secrets.token_hex(4)}")
    outsider = client_for(make_user(f"{other.slug}-admin", tenant=other))
    stream = Stream.objects.get(tenant=tenant)
    for path in (url(tenant), f"/api/v1/tenants/{other.slug}/streams/{stream.pk}/schema"):
        for verb in ("get", "post"):
            answer = getattr(outsider, verb)(path, {"schema_type": "JSON", "schema": "{}"}, format="json")
            assert answer.status_code == 404, (verb, path)


def test_an_unreachable_registry_is_a_503_with_retry_after(admin: APIClient, tenant: Tenant, settings: object,
                                                          runtime: object, tmp_path: Path) -> None:  # fmt: skip
    # given the registry's socket looked for in a state directory where nothing listens
    from dataclasses import replace

    closed = replace(runtime, state_dir=tmp_path)  # type: ignore[arg-type]
    settings.SLUICE_RUNTIME = closed  # type: ignore[attr-defined]
    # when reading or registering
    body = {"schema_type": "JSON", "schema": json.dumps(READING)}
    for response in (
        admin.get(url(tenant)),
        admin.post(url(tenant), body, format="json"),
        admin.get(f"{url(tenant)}/versions"),
        admin.get(f"{url(tenant)}/versions/1"),
        admin.post(f"{url(tenant)}/compatibility", body, format="json"),
    ):
        # then 503 with Retry-After, and a code that says which dependency
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "registry_unavailable"
        assert int(response["Retry-After"]) > 0


def test_a_stream_keeps_its_schema_type(admin: APIClient, tenant: Tenant) -> None:
    # given a stream whose records are described by JSON Schema
    admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    # when an Avro schema is sent as its next version
    switched = admin.post(url(tenant), {"schema_type": "AVRO", "schema": json.dumps(AVRO_READING)}, format="json")
    # then the stream's state refuses it, naming the field, and version 1 stays the latest
    assert switched.status_code == 409, switched.json()
    assert switched.json()["error"]["fields"][0]["code"] == "type_mismatch"
    assert admin.get(url(tenant)).json()["version"] == 1


PROTO_READING = """syntax = "proto3";
package acme.telemetry;

message Reading {
  double celsius = 1;
  string site = 2;
}
"""
PROTO_READING_WITH_SEQ = PROTO_READING.replace("string site = 2;", "string site = 2;\n  int64 seq = 3;")


def test_a_protobuf_schema_is_registered_and_evolves(admin: APIClient, tenant: Tenant) -> None:
    # when its admin registers a .proto, then it is version 1 of type PROTOBUF
    created = admin.post(url(tenant), {"schema_type": "PROTOBUF", "schema": PROTO_READING}, format="json")
    assert created.status_code == 201, created.json()
    assert (created.json()["type"], created.json()["version"]) == ("PROTOBUF", 1)
    assert admin.get(url(tenant)).json()["type"] == "PROTOBUF"
    # and a field added later is the next version (BACKWARD)
    second = admin.post(url(tenant), {"schema_type": "PROTOBUF", "schema": PROTO_READING_WITH_SEQ}, format="json")
    assert (second.status_code, second.json()["version"]) == (201, 2), second.json()
    # and the stream keeps its type
    switched = admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    assert (switched.status_code, switched.json()["error"]["fields"][0]["code"]) == (409, "type_mismatch")


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ('syntax = "proto3";\nmessage { double celsius = 1; }', "line 2:9: Expected message name."),
        ('syntax = "proto3";\nenum Unit { C = 0; }', "the schema defines no message"),
        ('syntax = "proto3";\nimport "other.proto";\nmessage A { int32 a = 1; }', 'Import "other.proto" was not found'),
        ('syntax = "proto3";\nmessage A { int32 a = 1; int32 b = 1; }', "has already been used in"),
    ],
)
def test_a_protobuf_schema_protoc_refuses_is_400_with_its_words(
    admin: APIClient, tenant: Tenant, schema: str, says: str
) -> None:
    response = admin.post(url(tenant), {"schema_type": "PROTOBUF", "schema": schema}, format="json")
    assert response.status_code == 400, response.json()
    field = response.json()["error"]["fields"][0]
    assert (field["pointer"], field["code"]) == ("/schema", "invalid_schema")
    assert says in field["message"]
    assert "sluice-proto-" not in field["message"]  # no temporary path leaks


def test_an_unknown_schema_type_is_refused_by_name(admin: APIClient, tenant: Tenant) -> None:
    response = admin.post(url(tenant), {"schema_type": "XML", "schema": "<a/>"}, format="json")
    assert response.status_code == 400
    field = response.json()["error"]["fields"][0]
    assert (field["pointer"], field["code"]) == ("/schema_type", "invalid_choice")
    assert "JSON, AVRO or PROTOBUF" in field["message"]


def test_versions_are_listed_newest_first_with_who_registered_them(admin: APIClient, tenant: Tenant) -> None:
    # given a stream without a schema: no versions, and no version 1
    assert admin.get(f"{url(tenant)}/versions").json()["results"] == []
    missing = admin.get(f"{url(tenant)}/versions/1")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "schema_version_not_found")
    # when its admin registers two versions
    first = admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}, format="json")
    second = admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    assert (first.status_code, second.status_code) == (201, 201)
    # then both are listed, newest first, each with its id, type, text, and who registered it when
    listed = admin.get(f"{url(tenant)}/versions")
    assert listed.status_code == 200
    body = listed.json()
    assert body["count"] == 2
    assert [(v["version"], v["id"], v["type"], v["schema"]) for v in body["results"]] == [
        (2, second.json()["id"], "JSON", json.dumps(READING)),
        (1, first.json()["id"], "JSON", json.dumps(READING_WITH_SITE)),
    ]
    assert {v["registered_by"] for v in body["results"]} == {f"{tenant.slug}-admin"}
    assert all(v["registered_at"] for v in body["results"])
    # and a page of one holds the newest only
    assert [v["version"] for v in admin.get(f"{url(tenant)}/versions?limit=1").json()["results"]] == [2]
    # and one version reads alone; a version that does not exist is a 404
    one = admin.get(f"{url(tenant)}/versions/1")
    assert (one.status_code, one.json()["schema"]) == (200, json.dumps(READING_WITH_SITE))
    for absent in (3, 0):
        assert admin.get(f"{url(tenant)}/versions/{absent}").json()["error"]["code"] == "schema_version_not_found"


def test_the_compatibility_check_answers_the_registrys_verdict_and_registers_nothing(
    admin: APIClient, tenant: Tenant
) -> None:
    check = f"{url(tenant)}/compatibility"
    # given no schema yet: anything is accepted, against no version
    first = admin.post(check, {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}, format="json")
    assert (first.status_code, first.json()["latest_version"]) == (200, None), first.json()
    assert admin.get(url(tenant)).status_code == 404
    # given version 1
    admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}, format="json")
    # when a compatible change is checked (dropping a property), then 200 against version 1
    ok = admin.post(check, {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    assert ok.json() == {"compatible": True, "subject": f"iot.{tenant.slug}.eu.temperature-value",
                         "latest_version": 1, "registered_version": None}  # fmt: skip
    # when the schema version 1 holds is checked, then it says so
    same = admin.post(check, {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}, format="json")
    assert same.json()["registered_version"] == 1
    # when an incompatible one is checked, then the same 409 as registering it, at /schema
    closed = {**READING_WITH_SITE, "additionalProperties": False}
    refused = admin.post(check, {"schema_type": "JSON", "schema": json.dumps(closed)}, format="json")
    assert refused.status_code == 409, refused.json()
    fields = [(f["pointer"], f["code"], f["message"]) for f in refused.json()["error"]["fields"]]
    assert fields == [("/schema", "incompatible_schema", "Incompatible with the latest version: Additional "
                       "properties are no longer allowed (at /additionalProperties in the schema).")]  # fmt: skip
    assert "incompatible with its latest version" in refused.json()["error"]["message"]
    # and a schema of another type is refused as registering it would be
    avro = admin.post(check, {"schema_type": "AVRO", "schema": json.dumps(AVRO_READING)}, format="json")
    assert (avro.status_code, avro.json()["error"]["fields"][0]["code"]) == (409, "type_mismatch")
    # and nothing was registered by any check
    assert admin.get(f"{url(tenant)}/versions").json()["count"] == 1
    assert AuditEvent.objects.filter(tenant=tenant, action="schema.register").count() == 1


def test_viewers_list_versions_but_cannot_check_or_register(admin: APIClient, tenant: Tenant) -> None:
    admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(READING)}, format="json")
    viewer = client_for(make_user(f"{tenant.slug}-viewer", tenant=tenant, role=Membership.Role.VIEWER))
    assert viewer.get(f"{url(tenant)}/versions").json()["count"] == 1
    assert viewer.get(f"{url(tenant)}/versions/1").status_code == 200
    body = {"schema_type": "JSON", "schema": json.dumps(READING_WITH_SITE)}
    assert viewer.post(f"{url(tenant)}/compatibility", body, format="json").status_code == 403


def test_a_stream_created_with_its_schema_is_audited_like_any_registration(tenant: Tenant) -> None:
    # given the service onboarding uses, run by an operator
    from devices.services import stream_with_schema_create
    from tenants.audit import Actor

    operator = make_user(f"{tenant.slug}-op", operator=True)
    stream, subject, schema_id = stream_with_schema_create(
        actor=Actor.of(operator), tenant=tenant, region="us", type="humidity", schema_type="JSON",
        schema=json.dumps(READING),
    )  # fmt: skip
    # then the audit row names who, the stream, subject, version, id and type
    event = AuditEvent.objects.get(tenant=tenant, action="schema.register", object_repr=subject)
    assert event.actor_label == operator.get_username()
    assert event.after == {"subject": subject, "schema_id": schema_id, "version": 1, "schema_type": "JSON",
                           "stream": stream.pk, "topic": stream.topic}  # fmt: skip


def test_the_readmes_check_closing_the_object_is_refused_without_registering(admin: APIClient,
                                                                             tenant: Tenant) -> None:  # fmt: skip
    # given the README's first version: celsius required
    first = {"type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}
    admin.post(url(tenant), {"schema_type": "JSON", "schema": json.dumps(first)}, format="json")
    # when the README checks a version that drops "required" but closes the object
    closed = {"type": "object", "properties": {"celsius": {"type": "number"}}, "additionalProperties": False}
    check = admin.post(f"{url(tenant)}/compatibility", {"schema_type": "JSON", "schema": json.dumps(closed)},
                       format="json")  # fmt: skip
    # then 409 incompatible_schema at /schema, and the README's version list still holds version 1 only
    assert (check.status_code, check.json()["error"]["fields"][0]["code"]) == (409, "incompatible_schema")
    assert [v["version"] for v in admin.get(f"{url(tenant)}/versions").json()["results"]] == [1]
    # and without the closing, the same change is accepted
    opened = {"type": "object", "properties": {"celsius": {"type": "number"}}}
    assert admin.post(f"{url(tenant)}/compatibility", {"schema_type": "JSON", "schema": json.dumps(opened)},
                      format="json").status_code == 200  # fmt: skip
