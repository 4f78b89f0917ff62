"""Apicurio Registry through the Confluent API, with the client Sluice uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from config.env import Runtime
from sluicectl.launcher import Launcher, child_env, make_context
from tests.conftest import unique_slug

pytestmark = pytest.mark.integration

READING_V1 = {
    "type": "record",
    "name": "Reading",
    "namespace": "io.sluice.test",
    "fields": [{"name": "celsius", "type": "double"}],
}


def avro(schema: dict) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


def test_schema_comes_back_by_id_after_a_registry_restart(tmp_path: Path) -> None:
    # given a registry of its own, started by the launcher on its own state directory
    ctx = make_context(
        child_env({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_PORT_OFFSET": "21000"})
    )
    subject = f"{unique_slug('t')}-value"
    first = Launcher(ctx, ["registry"])
    first.start()
    try:
        schema_id = SchemaRegistryClient({"url": ctx.runtime.registry_url}).register_schema(subject, avro(READING_V1))
    finally:
        first.stop()

    # when the registry is started again on the same state
    second = Launcher(ctx, ["registry"])
    second.start()
    try:
        client = SchemaRegistryClient({"url": ctx.runtime.registry_url})
        # then the schema is still there under the same id, and the compatibility rule too
        assert json.loads(client.get_schema(schema_id).schema_str) == READING_V1
        assert client.get_latest_version(subject).schema_id == schema_id
        assert client.get_compatibility() == "BACKWARD"
    finally:
        second.stop()


def test_global_compatibility_is_backward_and_enforced(services: Runtime) -> None:
    # given a subject with a first version
    client = SchemaRegistryClient({"url": services.registry_url})
    subject = f"{unique_slug('t')}-value"
    client.register_schema(subject, avro(READING_V1))

    # when a version adds a required field (old readers' data can't be read by new readers)
    breaking = {**READING_V1, "fields": [*READING_V1["fields"], {"name": "unit", "type": "string"}]}
    # then the registry refuses it with the Confluent 409 error
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, avro(breaking))
    assert refused.value.http_status_code == 409

    # and a backward-compatible change (a field with a default) is accepted as version 2
    compatible = {
        **READING_V1,
        "fields": [*READING_V1["fields"], {"name": "unit", "type": "string", "default": "C"}],
    }
    client.register_schema(subject, avro(compatible))
    assert client.get_latest_version(subject).version == 2
