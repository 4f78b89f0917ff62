"""The REST API against its own OpenAPI document, with Schemathesis: every operation of
``/api/schema/``, at least 100 generated requests each (plus the examples and the coverage
phase's boundary and negative cases), ALL of Schemathesis's checks, as a platform operator.

How it runs, and why:

* **In process, through Django's real WSGI handler** (``WSGIHandler``: every middleware, the
  URL map, DRF, the exception handler), not through nginx.  The production ASGI handler runs
  the same middleware, views and handler; what nginx adds in front (TLS, the proxy secret,
  body limits, TRACE) is not part of this document's operations and is tested through
  nginx elsewhere.  In process, every request runs in a savepoint that is rolled back after
  it, so each example starts from the same world and the run is deterministic; through
  nginx the web process would commit into the shared database and each example would see
  the debris of the ones before.  The schema registry and Kafka are the run's real ones (the
  schema and reconcile operations use them).
* **Requests that reach real objects.**  A ``before_call`` hook points most requests' path
  parameters (and the references in their bodies: a stream id, a group slug, a device id, a
  username) at the world the fixture builds, so most cases get past 404 and exercise the
  handlers; about one request in eight keeps its generated values and so hits the 404s.
  Schemathesis re-validates a case a ``before_call`` hook changed, so positive and negative
  cases stay labelled as what is actually sent.
* **Formats the spec names** (``pem-csr``, ``json-schema``, ``avro-schema``, ``protobuf-schema``) and the CSV body
  of the bulk import get strategies that produce real ones, so "valid by the spec" means what
  the spec says: a CSR that is a CSR.
* **Deterministic and bounded**: derandomized Hypothesis with a fixed seed, no example
  database, no shrinking (a failure is reported as it was generated, so a failing run costs
  no more time than a passing one), no deadline (a shared 2-core machine makes per-example
  timing meaningless; the pytest timeout bounds the whole), 100 examples per operation.

Checks disabled or relaxed: none.  All checks run with their default expectations,
including ``positive_data_acceptance`` (only 2xx, 3xx, 401, 403, 404, 409, 429 for requests
valid by the spec: the API answers 404/409/403 when the state, not the request, is at fault)
and ``negative_data_rejection``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from certs.models import Job
from certs.services import certificate_issue_from_csr, tenant_ca_create
from devices import registry
from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
from tenants.hashing import hash_token
from tenants.models import ApiToken, Membership, Tenant
from tenants.oauth.models import OAuthClient
from tenants.oauth.services import oauth_client_create

SEED = 20261203
# The operator's API token: fixed, so that Schemathesis applies it as the spec's `apiToken`
# scheme (and knows which of its cases leave it out on purpose).  Only its hash is stored.
TOKEN_PREFIX = "c0ntract"
TOKEN = f"slc_{TOKEN_PREFIX}_contract-test-token-not-a-secret"
EXAMPLES = 100
TENANT = "contract"
# One request in this many keeps its generated path parameters (and so meets the 404s).
UNMAPPED_ONE_IN = 8

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none", "no-shrink": True},
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
        "auth": {"openapi": {"apiToken": {"bearer": TOKEN}}},
        # What nginx sets on every request it forwards.
        "headers": {"X-Forwarded-Proto": "https"},
    }
)
APP = WSGIHandler()
schema = schemathesis.openapi.from_wsgi("/api/schema/", APP, config=CONFIG)


# -- what the spec's formats mean -------------------------------------------------------------


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "contract")])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


CSRS = [_csr() for _ in range(3)]
# Apicurio recognises a JSON Schema by its "properties" or "$schema" (the spec says so).
JSON_SCHEMAS = [
    json.dumps({"type": "object", "properties": {}}),
    json.dumps({"type": "object", "properties": {"celsius": {"type": "number"}}}),
    json.dumps({"type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}),
    json.dumps({"type": "object", "properties": {"label": {"type": "string", "maxLength": 20}}}),
]
AVRO_SCHEMAS = [
    json.dumps({"type": "record", "name": "Reading", "fields": [{"name": "celsius", "type": "double"}]}),
    json.dumps({"type": "record", "name": "Reading", "fields": [
        {"name": "celsius", "type": "double"}, {"name": "site", "type": ["null", "string"], "default": None}]}),
]  # fmt: skip
PROTOBUF_SCHEMAS = [
    'syntax = "proto3";\nmessage Reading { double celsius = 1; }\n',
    'syntax = "proto3";\npackage acme;\nmessage Reading { double celsius = 1; string site = 2; }\n',
]
DEVICE_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")


@st.composite
def devices_csv(draw: st.DrawFn) -> str:
    ids = draw(st.lists(DEVICE_IDS, min_size=1, max_size=5, unique=True))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["device_id", "group", "label:site"])
    for device_id in ids:
        writer.writerow([device_id, draw(st.sampled_from(["probes", "nowhere"])), draw(st.sampled_from(["", "b"]))])
    return out.getvalue()


schemathesis.openapi.format("pem-csr", st.sampled_from(CSRS))
schemathesis.openapi.format("json-schema", st.sampled_from(JSON_SCHEMAS))
schemathesis.openapi.format("avro-schema", st.sampled_from(AVRO_SCHEMAS))
schemathesis.openapi.format("protobuf-schema", st.sampled_from(PROTOBUF_SCHEMAS))
schemathesis.openapi.format("sluice-devices-csv", devices_csv())
schemathesis.openapi.media_type("text/csv", devices_csv())


# -- the world every request starts from ------------------------------------------------------


@dataclass
class World:
    path: dict[str, str]
    body: dict[str, Any]


CURRENT: dict[str, World] = {}


def _build_world() -> World:
    actor = Actor.system("contract")
    tenant = Tenant.objects.create(slug=TENANT, name="Contract Co.")
    tenant_ca_create(actor=actor, tenant=tenant)
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=3)
    subject = registry.value_subject(stream.topic)
    probes = DeviceGroup.objects.create(tenant=tenant, slug="probes", region="eu", device_type="temperature",
                                        stream=stream, schema_subject=subject)  # fmt: skip
    meters = DeviceGroup.objects.create(tenant=tenant, slug="meters", region="eu", device_type="temperature",
                                        stream=stream, schema_subject=subject,
                                        credential_policy=DeviceGroup.CredentialPolicy.OAUTH2)  # fmt: skip
    probe = Device.objects.create(tenant=tenant, group=probes, device_id="probe-0001")
    Device.objects.create(tenant=tenant, group=meters, device_id="meter-0001")
    issued = certificate_issue_from_csr(actor=actor, device=probe, csr_pem=CSRS[0].encode())
    client, _secret = oauth_client_create(actor=actor, tenant=tenant, name="automation",
                                          kind=OAuthClient.Kind.SERVICE, scopes=["provision:read"])  # fmt: skip
    # Users without passwords: hashing one costs more than a hundred requests.
    users = get_user_model().objects
    member = users.create(username="member-one")
    Membership.objects.create(user=member, tenant=tenant, role=Membership.Role.VIEWER)
    users.create(username="unaffiliated")
    operator = users.create(username="operator", is_superuser=True, is_staff=True)
    ApiToken.objects.create(user=operator, name="contract", prefix=TOKEN_PREFIX, secret_hash=hash_token(TOKEN))
    job = Job.objects.create(tenant=tenant, kind=Job.Kind.DEVICE_IMPORT, total=1, done=1,
                             status=Job.Status.SUCCEEDED, result={"created": 1})  # fmt: skip
    return World(
        path={"tenant": TENANT, "job": str(job.pk), "id": str(stream.pk), "group": "probes", "device_id": "probe-0001",
              "serial": issued.certificate.serial, "client_id": client.client_id, "version": "1"},
        body={"stream": stream.pk, "group": "probes", "device": "meter-0001", "username": member.username},
    )  # fmt: skip


@pytest.fixture(scope="session")
def registered_schema(services: Any) -> None:
    """The world's stream has a schema in the run's registry (a registry is not rolled back)."""
    subject = registry.value_subject(f"iot.{TENANT}.eu.temperature")
    registry.schema_register(subject=subject, schema_str=JSON_SCHEMAS[0], schema_type=registry.JSON)


@pytest.fixture
def world(db: None, registered_schema: None) -> Iterator[World]:
    # Django's own test client does this too: a request's end must not close the test's
    # connection (and with it the transaction every example is rolled back in).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    built = _build_world()
    CURRENT["world"] = built
    yield built
    CURRENT.clear()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _keeps_generated(case: Any) -> bool:
    """Stable per case: one in UNMAPPED_ONE_IN keeps what was generated."""
    digest = hashlib.sha256(repr((case.method, case.path, case.path_parameters, case.body)).encode()).digest()
    return digest[0] % UNMAPPED_ONE_IN == 0


def _point_at(body: Any, world: World) -> None:
    if isinstance(body, dict):
        for key, value in world.body.items():
            if key in body and not (key == "device" and body.get("kind") != "device"):
                body[key] = value
        # The coverage phase may pair one branch's schema text with the other branch's type
        # (a JSON Schema sent as AVRO): valid by the spec's shapes, which cannot say "valid
        # Avro"; keep text and type together.
        if body.get("schema_type") == "AVRO" and body.get("schema") in JSON_SCHEMAS:
            body["schema"] = AVRO_SCHEMAS[0]
        elif body.get("schema_type") == "JSON" and body.get("schema") in AVRO_SCHEMAS:
            body["schema"] = JSON_SCHEMAS[0]
        items = body.get("items")
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict) and "device_id" in item:
                    item["device_id"] = world.path["device_id"]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    world = CURRENT.get("world")
    if world is None or _keeps_generated(case):
        return
    if case.path_parameters:
        for name in case.path_parameters:
            if name in world.path:
                case.path_parameters[name] = world.path[name]
    if case.method in ("POST", "PATCH"):
        _point_at(case.body, world)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_api_keeps_its_contract(case: Any, world: World) -> None:
    # given the world, in a savepoint that every example rolls back
    with transaction.atomic():
        # when Schemathesis sends its request, then every check holds
        case.call_and_validate()
        transaction.set_rollback(True)
