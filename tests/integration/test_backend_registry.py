"""A tenant's schemas through ``/registry/<tenant>/`` on the real nginx: confluent-kafka's own
``SchemaRegistryClient`` and deserializers, holding a tenant service client's access token,
read the records ingest wrote (Avro, JSON Schema, and Protobuf through ``format=serialized``);
another tenant's ids and subjects are 404, and nobody without a credential reads anything."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import json_format

from certs.platform_pki import PlatformPki
from config.env import Runtime
from devices.protobuf import compile_record_type
from devices.registry import registry_client
from tests.integration.test_ingest import Sender, consume
from tests.integration.test_ingest import make_sender as make_sender  # the fixture
from tests.integration.test_ingest_ndjson import PROTO
from tests.postgres.test_database_down import https_get
from tests.schemas import READING_AVRO, READING_JSON
from tests.tenants.oauth.support import access_token, make_oauth_client

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def scoped(services: Runtime, tenant_slug: str, token: str) -> SchemaRegistryClient:
    """confluent-kafka's client as a tenant backend configures it: the scoped URL, the
    platform's CA, a bearer token (the logical cluster is Confluent Cloud's; ignored here)."""
    return SchemaRegistryClient({
        "url": f"https://127.0.0.1:{services.ports.web}/registry/{tenant_slug}",
        "ssl.ca.location": str(PlatformPki(services.pki_dir).trust_bundle),
        "bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": token,
        "bearer.auth.logical.cluster": tenant_slug,
    })  # fmt: skip


def get(services: Runtime, path: str, token: str = "") -> tuple[int, Any]:
    status, _, body = https_get(services, path, token)
    return status, body


def test_a_tenant_backend_deserializes_its_streams_through_the_scoped_registry(
    services: Runtime, make_sender: Any
) -> None:
    # given a tenant with an Avro, a JSON Schema and a Protobuf stream, each written to by ingest
    avro: Sender = make_sender("AVRO", READING_AVRO)
    tenant = avro.device.tenant
    jsons: Sender = make_sender("JSON", READING_JSON, tenant=tenant)
    proto: Sender = make_sender("PROTOBUF", PROTO, tenant=tenant)
    assert avro.post({"celsius": 1.5, "site": "a"})[0] == 200
    assert jsons.post({"celsius": 2.5, "site": "b"})[0] == 200
    assert proto.post({"celsius": 3.5, "siteName": "c", "unit": "FAHRENHEIT"})[0] == 200
    # and its backend, holding a service client's token (provision:read)
    client, secret = make_oauth_client(tenant, "service", ["provision:read"])
    registry = scoped(services, tenant.slug, access_token(client.client_id, secret))

    # then confluent-kafka's deserializers read each record, asking only the scoped registry
    def read(sender: Sender, deserializer: Any) -> Any:
        (message,) = consume(sender.topic, services, expected=1)
        return deserializer(message.value(), SerializationContext(sender.topic, MessageField.VALUE))

    assert read(avro, AvroDeserializer(registry)) == {"celsius": 1.5, "site": "a"}
    assert read(jsons, JSONDeserializer(None, schema_registry_client=registry)) == {"celsius": 2.5, "site": "b"}
    reading = compile_record_type(PROTO).message_class
    message = read(proto, ProtobufDeserializer(reading, {"use.deprecated.format": False}, registry))
    assert json_format.MessageToDict(message) == {"celsius": 3.5, "siteName": "c", "unit": "FAHRENHEIT"}
    # and it lists the tenant's subjects and versions, as the registry holds them
    assert registry.get_subjects() == sorted([avro.subject, jsons.subject, proto.subject])
    assert registry.get_versions(avro.subject) == [1]
    latest = registry.get_latest_version(proto.subject)
    assert (latest.schema.schema_type, latest.version) == ("PROTOBUF", 1)
    assert latest.schema_id == registry_client().get_latest_version(proto.subject).schema_id


def test_another_tenants_schemas_do_not_exist_here(services: Runtime, make_sender: Any) -> None:
    # given tenants A and B, each with a stream and a schema
    mine: Sender = make_sender("AVRO", READING_AVRO)
    theirs: Sender = make_sender("AVRO", READING_AVRO)
    their_id = registry_client().get_latest_version(theirs.subject).schema_id
    client, secret = make_oauth_client(mine.device.tenant, "service", ["provision:read"])
    token = access_token(client.client_id, secret)
    registry = scoped(services, mine.device.tenant.slug, token)

    # then B's schema id, subject and versions are 404 to A, with Confluent's error codes
    # (unless A's own subject holds the very same schema, which the registry would share)
    if registry_client().get_latest_version(mine.subject).schema_id != their_id:
        with pytest.raises(SchemaRegistryError) as refused:
            registry.get_schema(their_id)
        assert (refused.value.http_status_code, refused.value.error_code) == (404, 40403)
    for call in (lambda: registry.get_versions(theirs.subject), lambda: registry.get_latest_version(theirs.subject)):
        with pytest.raises(SchemaRegistryError) as refused:
            call()
        assert (refused.value.http_status_code, refused.value.error_code) == (404, 40401)
    assert theirs.subject not in registry.get_subjects()
    # and B's registry URL is no more A's than any tenant A cannot see
    status, body = get(services, f"/registry/{theirs.device.tenant.slug}/subjects", token)
    assert (status, body["error"]["code"]) == (404, "not_found"), body
    # and without a credential nothing is read
    status, body = get(services, f"/registry/{mine.device.tenant.slug}/subjects")
    assert status == 401, body
    assert body["error_code"] == 40100


def test_bad_versions_and_formats_are_named(services: Runtime, make_sender: Any) -> None:
    sender: Sender = make_sender("AVRO", READING_AVRO)
    client, secret = make_oauth_client(sender.device.tenant, "service", ["provision:read"])
    token = access_token(client.client_id, secret)
    base = f"/registry/{sender.device.tenant.slug}"
    status, body = get(services, f"{base}/subjects/{sender.subject}/versions/zero", token)
    assert (status, body["error_code"], body["error"]["code"]) == (422, 42202, "invalid_version")
    status, body = get(services, f"{base}/subjects/{sender.subject}/versions/%C2%B2", token)  # a superscript 2
    assert (status, body["error_code"]) == (422, 42202)
    status, body = get(services, f"{base}/schemas/ids/{2**40}", token)
    assert (status, body["error_code"]) == (404, 40403)
    status, body = get(services, f"{base}/schemas/ids/1/subjects", token)  # not served here: JSON all the same
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = get(services, f"{base}/subjects/{sender.subject}/versions/7", token)
    assert (status, body["error_code"]) == (404, 40402)
    status, body = get(services, f"{base}/subjects/{sender.subject}/versions/latest?format=xml", token)
    assert (status, body["error"]["code"]) == (400, "invalid")
    status, body = get(services, f"{base}/subjects/{sender.subject}/versions/1", token)
    assert (status, body["subject"], body["version"]) == (200, sender.subject, 1)
    assert "schemaType" not in body  # Avro, as the Confluent API says it
