"""devices.registry: schema text is checked before any network call, and the registry's
answers come back as the domain's errors.  The integration tests run against the real
registry that ``platform/bin/sluice test`` starts; the others need no services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from config.env import Runtime
from config.errors import Conflict, InvalidInput
from devices import registry
from devices.registry import RegistryUnavailable, schema_check, schema_register, value_subject
from devices.registry_client import registry_client_for
from tests.conftest import unique_slug

READING_V1 = {
    "type": "record",
    "name": "Reading",
    "namespace": "io.sluice.test",
    "fields": [{"name": "celsius", "type": "double"}],
}
# A new required field: readers of the new version cannot read data written with the old
# one, which the registry's BACKWARD compatibility rule refuses.
READING_BREAKING = {**READING_V1, "fields": [*READING_V1["fields"], {"name": "unit", "type": "string"}]}
# An optional field with a default: BACKWARD compatible.
READING_V2 = {**READING_V1, "fields": [*READING_V1["fields"], {"name": "unit", "type": "string", "default": "C"}]}
READING_JSON = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"celsius": {"type": "number"}},
    "required": ["celsius"],
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything builds a registry client."""

    def refuse() -> None:
        pytest.fail("the registry was contacted for a schema that should have been refused locally")

    monkeypatch.setattr(registry, "registry_client", refuse)


class FailingRegistry:
    """Stands in for the registry's HTTP answers in the unit tests of the error mapping."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def register_schema(self, subject: str, schema: Schema) -> int:
        raise self.error


# -- schema text, no network ------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema_type", "text", "says"),
    [
        ("AVRO", '{"type": "record", "name": "R", "fields": [', "Not valid JSON"),
        ("AVRO", '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "strng"}]}', "unknown type 'strng'"),
        ("AVRO", '{"type": "record", "fields": []}', '"name" is a required field'),
        ("AVRO", '{"type": "record", "name": "R", "fields": [{"name": "a"}]}', "missing 'type'"),
        ("AVRO", "{}", "missing 'type'"),
        ("AVRO", "5", "must be a JSON object, an array"),
        ("AVRO", "   ", "A schema is required"),
        ("JSON", '{"type": "objet"}', "Not a valid JSON Schema at $.type"),
        ("JSON", "[]", "must be a JSON object"),
        ("JSON", "{'single': 'quotes'}", "Not valid JSON"),
    ],
)
def test_a_malformed_schema_is_refused_on_the_schema_field_before_any_network_call(
    no_network: None, schema_type: str, text: str, says: str
) -> None:
    # when a malformed schema is registered
    with pytest.raises(InvalidInput) as refused:
        schema_register(subject="iot.acme.eu.temperature-value", schema_str=text, schema_type=schema_type)

    # then the error names the schema field and says what is wrong (and no client was built)
    assert [field["pointer"] for field in refused.value.fields] == ["/schema"]
    assert says in refused.value.fields[0]["message"]
    assert refused.value.message == refused.value.fields[0]["message"]


def test_an_unknown_schema_type_is_refused_on_its_own_field(no_network: None) -> None:
    with pytest.raises(InvalidInput) as refused:
        schema_register(subject="s-value", schema_str=json.dumps(READING_V1), schema_type="XML")
    assert refused.value.fields[0]["pointer"] == "/schema_type"


@pytest.mark.parametrize(("schema_type", "schema"), [("AVRO", READING_V1), ("JSON", READING_JSON), ("JSON", True)])
def test_valid_schemas_pass_the_check(schema_type: str, schema: Any) -> None:
    schema_check(schema_str=json.dumps(schema), schema_type=schema_type)


def test_the_value_subject_follows_the_topic_name_strategy() -> None:
    assert value_subject("iot.acme.eu.temperature") == "iot.acme.eu.temperature-value"


# -- the registry's answers, mapped (unit: the client is replaced) -----------------------


@pytest.mark.parametrize(
    ("error", "expected", "pointer"),
    [
        (SchemaRegistryError(409, 409, "Incompatible schema: field unit has no default"), Conflict, "/schema"),
        (SchemaRegistryError(422, 42201, "Invalid schema"), InvalidInput, "/schema"),
        (SchemaRegistryError(503, 50003, "Storage unavailable"), RegistryUnavailable, None),
        (httpx.ConnectError("Connection refused"), RegistryUnavailable, None),
    ],
)
def test_registry_refusals_become_domain_errors(
    monkeypatch: pytest.MonkeyPatch, error: Exception, expected: type[Exception], pointer: str | None
) -> None:
    # given a registry that answers with ``error``
    monkeypatch.setattr(registry, "registry_client", lambda: FailingRegistry(error))

    # when a valid schema is registered
    with pytest.raises(expected) as refused:
        schema_register(subject="iot.acme.eu.temperature-value", schema_str=json.dumps(READING_V1), schema_type="AVRO")

    # then the domain error carries the registry's reason, on the schema field where it is about the schema
    assert [field["pointer"] for field in refused.value.fields] == ([pointer] if pointer else [])
    reason = error.error_message if isinstance(error, SchemaRegistryError) else "Connection refused"
    assert reason in refused.value.message


APICURIO_409 = (
    "io.apicurio.registry.rules.violation.RuleViolationException: Incompatible artifact: s [AVRO], num of "
    "incompatible diffs: {2}, list of diff types: [reader type: STRING not compatible with writer type: INT at "
    "/fields/0/type, y at /fields/1]"
)


def test_apicurios_diff_list_becomes_one_field_error_per_reason() -> None:
    error = registry.incompatible("s", registry.incompatibility_reasons(APICURIO_409))
    assert [(f["pointer"], f["code"], f["message"]) for f in error.fields] == [
        ("/schema", "incompatible_schema", "Incompatible with the latest version: reader type: STRING not compatible "
                                           "with writer type: INT (at /fields/0/type in the schema)."),
        ("/schema", "incompatible_schema", "Incompatible with the latest version: y (at /fields/1 in the schema)."),
    ]  # fmt: skip
    assert error.status == 409


def test_a_refusal_worded_otherwise_is_kept_whole_and_no_reason_is_still_a_field_error() -> None:
    assert registry.incompatibility_reasons("Schema being registered is incompatible") == [
        "Schema being registered is incompatible"
    ]
    assert [f["code"] for f in registry.incompatible("s", []).fields] == ["incompatible_schema"]


# -- the real registry ------------------------------------------------------------------


@pytest.mark.integration
def test_register_then_an_incompatible_version_is_a_conflict(services: Runtime) -> None:
    # given a fresh subject
    subject = value_subject(f"iot.{unique_slug('t')}.eu.temperature")

    # when a first Avro version is registered
    schema_id = schema_register(subject=subject, schema_str=json.dumps(READING_V1), schema_type="AVRO")

    # then it has an id, the registry serves it under that id, and registering it again is idempotent
    assert isinstance(schema_id, int)
    assert schema_id > 0
    client = registry_client_for(services)
    assert json.loads(client.get_schema(schema_id).schema_str) == READING_V1
    assert schema_register(subject=subject, schema_str=json.dumps(READING_V1), schema_type="AVRO") == schema_id

    # when a version adds a required field
    with pytest.raises(Conflict) as refused:
        schema_register(subject=subject, schema_str=json.dumps(READING_BREAKING), schema_type="AVRO")

    # then it is a conflict on the schema field with the registry's reason, and the subject keeps one version
    assert refused.value.fields[0]["pointer"] == "/schema"
    assert subject in refused.value.message
    assert client.get_latest_version(subject).version == 1


@pytest.mark.integration
def test_a_malformed_schema_never_reaches_the_registry(services: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a subject with one version
    subject = value_subject(f"iot.{unique_slug('t')}.eu.temperature")
    schema_register(subject=subject, schema_str=json.dumps(READING_V1), schema_type="AVRO")
    real_client = registry.registry_client

    # when a malformed schema is registered under it, with any client construction failing the test
    monkeypatch.setattr(registry, "registry_client", lambda: pytest.fail("the registry was contacted"))
    with pytest.raises(InvalidInput) as refused:
        schema_register(subject=subject, schema_str='{"type": "record", "name": "Reading"', schema_type="AVRO")

    # then it is refused on the schema field, and the registry still holds only the first version
    assert refused.value.fields[0]["pointer"] == "/schema"
    assert real_client().get_latest_version(subject).version == 1


@pytest.mark.integration
def test_a_json_schema_registers(services: Runtime) -> None:
    subject = value_subject(f"iot.{unique_slug('t')}.eu.vibration")
    schema_id = schema_register(subject=subject, schema_str=json.dumps(READING_JSON), schema_type="JSON")
    fetched = registry_client_for(services).get_schema(schema_id)
    assert json.loads(fetched.schema_str) == READING_JSON


@pytest.mark.integration
def test_one_kept_client_still_sees_each_new_version(services: Runtime) -> None:
    # given a subject with one version, read by the data plane's fetch
    subject = value_subject(f"iot.{unique_slug('t')}.eu.temperature")
    schema_register(subject=subject, schema_str=json.dumps(READING_V1), schema_type="AVRO")
    first = registry._fetch(subject)
    assert first.version == 1
    client = registry.registry_client()

    # when a compatible second version is registered
    schema_register(subject=subject, schema_str=json.dumps(READING_V2), schema_type="AVRO")

    # then the next fetch and the next lookup see it (the kept client's own caches, whose
    # latest versions never expire, do not hide it), through the same client: none is
    # built per call
    second = registry._fetch(subject)
    assert second.version == 2
    assert second.schema_id != first.schema_id
    assert registry.schema_versions(subject=subject) == [1, 2]
    assert registry.registry_client() is client
