"""HTTPS ingest end to end: a device with a certificate from its tenant CA POSTs to the real
nginx TLS listener, the web app validates against the real registry and produces to the
real Kafka, and the tests read the topic back (or check that nothing reached it)."""

from __future__ import annotations

import io
import json
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition
from cryptography import x509

from certs.crl_files import bundle_path
from certs.platform_pki import PlatformPki
from certs.services import Issued, certificate_issue_generated, certificate_revoke, crl_name
from config.env import Runtime
from devices.models import Device, DeviceGroup, Stream
from devices.registry import registry_client, schema_register, value_subject
from devices.services import device_update
from ingest.kafka import admin_config
from ingest.topic_sync import stream_provision
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import tenant_create, tenant_set_status
from tests.conftest import unique_slug
from tests.schemas import READING_AVRO, READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")


def nginx_workers(services: Runtime) -> set[int]:
    """The pids of nginx's worker processes (a reload replaces them all)."""
    master = (services.run_dir / "nginx.pid").read_text().strip()
    workers = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[-1].split()[1] == master:
                workers.add(int(stat.parent.name))
        except OSError:
            continue  # gone meanwhile
    return workers


@dataclass
class Sender:
    """A provisioned device with its credentials, and a way to POST as it."""

    device: Device
    issued: Issued
    topic: str
    subject: str
    post: Callable[..., tuple[int, dict[str, Any], Any]]


def _post(services: Runtime, tmp_path: Path, issued: Issued | None) -> Callable[..., Any]:
    context = ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle))
    if issued is not None:
        name = issued.certificate.serial[:12]
        (tmp_path / f"{name}.pem").write_text(issued.chain_pem)
        (tmp_path / f"{name}.key").write_text(issued.key_pem or "")
        context.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")

    def post(body: Any = None, *, raw: bytes | None = None, content_type: str = "application/json",
             headers: dict[str, str] | None = None, query: str = "") -> tuple[int, dict[str, Any], Any]:  # fmt: skip
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"https://127.0.0.1:{services.ports.web}/ingest/v1/records{query}",
            data=data,
            headers={"Content-Type": content_type, **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            return exc.code, json.loads(payload) if payload else {}, exc.headers

    return post


@pytest.fixture
def make_sender(services: Runtime, tmp_path: Path, monkeypatch: Any) -> Callable[..., Sender]:
    # The tenant's DLQ topic is not part of these tests; provisioning is tested elsewhere.
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)

    def make(schema_type: str = "JSON", schema: Any = READING_JSON, *, register: bool = True, rate: int = 100,
             tenant: Tenant | None = None, **quotas: Any) -> Sender:  # fmt: skip
        tenant = tenant or tenant_create(actor=ACTOR, slug=unique_slug("t"), name="Ingest test", **quotas)
        stream = Stream.objects.create(tenant=tenant, region="eu", type=unique_slug("temp"), partitions=2)
        stream_provision(stream=stream)
        subject = value_subject(stream.topic)
        if register:
            schema_register(
                subject=subject,
                schema_str=schema if isinstance(schema, str) else json.dumps(schema),
                schema_type=schema_type,
            )
        group = DeviceGroup.objects.create(
            tenant=tenant, slug=unique_slug("g"), region="eu", device_type="t", stream=stream,
            schema_subject=subject, rate_limit_per_second=rate,
        )  # fmt: skip
        device = Device.objects.create(tenant=tenant, group=group, device_id=unique_slug("meter"))
        issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
        return Sender(device, issued, stream.topic, subject, _post(services, tmp_path, issued))

    return make


def topic_size(topic: str, services: Runtime) -> int:
    """Records ever written to ``topic`` (sum of high watermarks; acks=all writes are visible)."""
    consumer = Consumer({**admin_config(services), "group.id": unique_slug("size")})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def consume(topic: str, services: Runtime, expected: int) -> list[Any]:
    consumer = Consumer({**admin_config(services), "group.id": unique_slug("read"), "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and not message.error():
                messages.append(message)
    finally:
        consumer.close()
    return sorted(messages, key=lambda m: (m.partition(), m.offset()))


def wire(value: bytes) -> tuple[int, int, bytes]:
    magic, schema_id = struct.unpack(">bI", value[:5])
    return magic, schema_id, value[5:]


# -- accepted ----------------------------------------------------------------------------


def test_one_json_record_reaches_the_group_topic_in_wire_format(services: Runtime, make_sender: Any) -> None:
    # given a device of a group whose subject holds a JSON Schema
    sender = make_sender("JSON", READING_JSON)

    # when it POSTs one record over mTLS
    status, body, headers = sender.post({"celsius": 21.5, "site": "berlin-1"})

    # then Kafka acknowledged it, and the answer says where it is
    assert status == 200, body
    assert (body["accepted"], body["topic"]) == (1, sender.topic)
    # and the topic holds it: keyed by device id, with the identity and request id headers,
    # in the Confluent wire format under the registry's id for the subject's latest schema
    (message,) = consume(sender.topic, services, expected=1)
    assert [{"partition": message.partition(), "offset": message.offset()}] == body["records"]
    assert message.key() == sender.device.device_id.encode()
    assert dict(message.headers()) == {
        "sluice-tenant": sender.device.tenant.slug.encode(),
        "sluice-group": sender.device.group.slug.encode(),
        "sluice-device": sender.device.device_id.encode(),
        "sluice-request-id": headers["X-Request-ID"].encode(),
        "sluice-record-index": b"0",
    }
    magic, schema_id, payload = wire(message.value())
    assert magic == 0
    assert schema_id == registry_client().get_latest_version(sender.subject).schema_id
    assert json.loads(payload) == {"celsius": 21.5, "site": "berlin-1"}
    # and the device was seen (the worker records it within a few seconds, in the background)
    deadline = time.monotonic() + 10
    while Device.objects.get(pk=sender.device.pk).last_seen_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Device.objects.get(pk=sender.device.pk).last_seen_at is not None


def test_an_avro_batch_is_written_as_avro_binary_in_order(services: Runtime, make_sender: Any) -> None:
    # given a device of a group whose subject holds an Avro schema
    sender = make_sender("AVRO", READING_AVRO)
    batch = [{"celsius": 20.0 + i, "site": None if i % 2 else f"site-{i}"} for i in range(5)]

    # when it POSTs a batch
    status, body, _ = sender.post({"records": batch})

    # then every record was acknowledged and can be decoded with the registered schema
    assert status == 200, body
    assert body["accepted"] == 5
    messages = consume(sender.topic, services, expected=5)
    assert [{"partition": m.partition(), "offset": m.offset()} for m in messages] == body["records"]
    registered = registry_client().get_latest_version(sender.subject)
    parsed = fastavro.parse_schema(json.loads(registered.schema.schema_str))
    decoded = []
    for message in messages:
        magic, schema_id, payload = wire(message.value())
        assert (magic, schema_id) == (0, registered.schema_id)
        decoded.append(fastavro.schemaless_reader(io.BytesIO(payload), parsed, None))
    assert decoded == batch
    # and each record names its request and its position in it
    assert [dict(m.headers())["sluice-record-index"] for m in messages] == [b"0", b"1", b"2", b"3", b"4"]
    assert len({dict(m.headers())["sluice-request-id"] for m in messages}) == 1


# -- refused: nothing reaches the topic --------------------------------------------------


def test_bad_input_gets_its_status_and_code_and_nothing_is_written(services: Runtime, make_sender: Any) -> None:
    # given a device of a JSON Schema group
    sender = make_sender("JSON", READING_JSON)
    valid = {"celsius": 1.0}
    cases: list[tuple[dict[str, Any], int, str, str | None]] = [
        ({"body": valid, "content_type": "text/plain"}, 415, "unsupported_media_type", None),
        ({"raw": b""}, 400, "empty_body", None),
        ({"raw": b'{"celsius": 1.0,\n "site": }'}, 400, "malformed_json", "/"),
        ({"body": [valid]}, 400, "invalid_shape", "/"),
        ({"body": {"records": "all of them"}}, 400, "invalid_shape", "/records"),
        ({"body": {"records": [valid, 5]}}, 400, "invalid_shape", "/records/1"),
        ({"body": {"records": []}}, 400, "empty_batch", "/records"),
        ({"body": {"records": [valid] * 501}}, 413, "too_many_records", None),
        ({"body": {"celsius": 1.0, "site": "x" * (2**20)}}, 413, "payload_too_large", None),
        ({"body": {"celsius": "warm"}}, 422, "schema_validation_failed", "/celsius"),
        ({"body": {"site": "a"}}, 422, "schema_validation_failed", "/celsius"),
        ({"body": {"records": [valid, valid, valid, {"celsius": "warm"}]}}, 422, "schema_validation_failed",
         "/records/3/celsius"),
    ]  # fmt: skip

    for kwargs, expected_status, code, pointer in cases:
        # when it POSTs the bad input
        status, body, _ = sender.post(**kwargs)

        # then the request is refused with a stable code and, where one applies, a pointer
        assert (status, body["error"]["code"]) == (expected_status, code), (kwargs.get("content_type"), body)
        if pointer is not None:
            assert pointer in [field["pointer"] for field in body["error"]["fields"]], body
    _, malformed, _ = sender.post(raw=b'{"celsius": 1.0,\n "site": }')
    assert "line 2, column 10" in malformed["error"]["message"]
    # and nothing at all reached the topic
    assert topic_size(sender.topic, services) == 0


def test_a_subject_without_a_schema_is_refused_clearly(services: Runtime, make_sender: Any) -> None:
    sender = make_sender(register=False)
    status, body, _ = sender.post({"celsius": 1.0})
    assert (status, body["error"]["code"]) == (409, "schema_not_found")
    assert sender.subject in body["error"]["message"]
    assert topic_size(sender.topic, services) == 0


def test_a_request_without_a_certificate_is_401(services: Runtime, tmp_path: Path) -> None:
    status, body, _ = _post(services, tmp_path, None)({"celsius": 1.0})
    assert (status, body["error"]["code"]) == (401, "client_certificate_required")


def test_a_revoked_certificate_is_refused_at_once_without_reloading_nginx(services: Runtime, make_sender: Any) -> None:
    # given a device that could send, and nginx's CRL bundle as it stands
    sender = make_sender()
    assert sender.post({"celsius": 1.0})[0] == 200
    bundle = bundle_path(services).read_bytes()
    workers = nginx_workers(services)

    # when its certificate is revoked
    certificate_revoke(actor=ACTOR, certificate=sender.issued.certificate, reason="key_compromise")

    # then the very next request is refused by ingest (the revocation reached every worker's
    # identity cache), and every one after it
    for value in (2.0, 3.0, 4.0):
        status, body, _ = sender.post({"celsius": value})
        assert (status, body["error"]["code"]) == (403, "certificate_revoked"), body
    # and the CA's published CRL lists it (for Kafka and every other verifier) ...
    published = x509.load_der_x509_crl(
        (services.crl_dir / f"{crl_name(sender.issued.certificate.ca)}.crl").read_bytes()
    )
    assert published.get_revoked_certificate_by_serial_number(int(sender.issued.certificate.serial, 16)) is not None
    # ... while nginx was neither given a new bundle nor reloaded: no other device's
    # connection was dropped for this one's revocation
    assert bundle_path(services).read_bytes() == bundle
    assert nginx_workers(services) == workers
    assert topic_size(sender.topic, services) == 1


def test_a_suspended_tenant_is_refused_at_once_and_works_again_after_resume(
    services: Runtime, make_sender: Any
) -> None:
    sender = make_sender()
    tenant = sender.device.tenant

    # when the tenant is suspended
    tenant_set_status(actor=ACTOR, tenant=tenant, status=Tenant.Status.SUSPENDED)

    # then its very next request is refused
    status, body, _ = sender.post({"celsius": 1.0})
    assert (status, body["error"]["code"]) == (403, "tenant_suspended")

    # and after resuming, it is accepted again
    tenant_set_status(actor=ACTOR, tenant=tenant, status=Tenant.Status.ACTIVE)
    assert sender.post({"celsius": 2.0})[0] == 200
    assert topic_size(sender.topic, services) == 1


def test_a_disabled_device_is_refused(services: Runtime, make_sender: Any) -> None:
    # when a device is disabled through the services, its certificates are revoked with it
    # (Kafka authorizes per group, so revocation is what stops it on the broker as well)
    sender = make_sender()
    device_update(actor=ACTOR, device=sender.device, status=Device.Status.DISABLED)
    status, body, _ = sender.post({"celsius": 1.0})
    assert (status, body["error"]["code"]) == (403, "certificate_revoked")
    sender.issued.certificate.refresh_from_db()
    assert (sender.issued.certificate.status, sender.issued.certificate.revocation_reason) == (
        "revoked", "certificate_hold"
    )  # fmt: skip
    # and a device whose row says disabled while its certificate is still valid is refused too
    other = make_sender()
    Device.objects.filter(pk=other.device.pk).update(status=Device.Status.DISABLED)
    status, body, _ = other.post({"celsius": 1.0})
    assert (status, body["error"]["code"]) == (403, "device_disabled")
    assert topic_size(sender.topic, services) == topic_size(other.topic, services) == 0


def test_a_device_of_tenant_b_never_writes_into_tenant_a_topic(services: Runtime, make_sender: Any) -> None:
    # given tenant A and a device of tenant B, whose schema allows any extra fields
    a = make_sender()
    b = make_sender()
    a_tenant = a.device.tenant.slug

    # when B's device names A's tenant and topic everywhere it can: body, query, headers,
    # and a forged copy of A's certificate and nginx's headers
    a_cert = quote(a.issued.certificate.certificate_pem)
    status, body, _ = b.post(
        {"celsius": 1.0, "topic": a.topic, "tenant": a_tenant},
        headers={"X-Sluice-Tenant": a_tenant, "X-Sluice-Client-Cert": a_cert, "X-Sluice-Client-Verify": "SUCCESS"},
    )
    query_status, query_body, _ = b.post({"celsius": 1.0}, query=f"?topic={a.topic}&tenant={a_tenant}")
    batch_status, batch_body, _ = b.post({"topic": a.topic, "records": [{"celsius": 1.0}]})

    # then its record went to B's own topic, and the query and the envelope naming a topic were refused
    assert (status, body["topic"]) == (200, b.topic), body
    assert (query_status, query_body["error"]["code"]) == (400, "unknown_parameter")
    assert (batch_status, batch_body["error"]["fields"][0]["pointer"]) == (400, "/topic")
    (message,) = consume(b.topic, services, expected=1)
    assert dict(message.headers())["sluice-tenant"] == b.device.tenant.slug.encode()
    # and nothing reached A's topic
    assert topic_size(a.topic, services) == 0


def test_over_the_rate_limit_is_429_and_nothing_is_written(services: Runtime, make_sender: Any) -> None:
    # given a device allowed one request per second
    sender = make_sender(rate=1)

    # when it sends several requests at once
    answers = [sender.post({"celsius": float(i)}) for i in range(6)]

    # then the ones over the limit are refused with Retry-After, and only the others written
    refused = [a for a in answers if a[0] == 429]
    assert refused, [a[0] for a in answers]
    assert all(a[1]["error"]["code"] == "rate_limited" and int(a[2]["Retry-After"]) >= 1 for a in refused)
    assert topic_size(sender.topic, services) == sum(a[0] == 200 for a in answers)


def test_over_the_tenant_record_budget_is_429(services: Runtime, make_sender: Any) -> None:
    # given a tenant allowed three records per second
    sender = make_sender(max_records_per_second=3)

    # when one request alone carries more than a second's budget, then it can never pass:
    # 413 saying so, not a 429 the device would retry forever
    status, body, headers = sender.post({"records": [{"celsius": 1.0}] * 5})
    assert (status, body["error"]["code"]) == (413, "exceeds_tenant_limit"), body
    assert "Retry-After" not in headers

    # when requests fit alone but not together, then those over the budget get 429
    answers = [sender.post({"records": [{"celsius": 1.0}] * 2}) for _ in range(4)]
    refused = [a for a in answers if a[0] == 429]
    assert refused, [a[0] for a in answers]
    assert all(a[1]["error"]["code"] == "rate_limited" and a[2]["Retry-After"] == "1" for a in refused)
    assert topic_size(sender.topic, services) == 2 * sum(a[0] == 200 for a in answers)
