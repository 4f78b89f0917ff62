"""The ingest ASGI app in-process, without nginx: the tests send nginx's headers themselves
(with the real proxy secret), on one event loop, against the run's real database, Redis
and registry.  Dependencies that fail are real clients pointed at closed ports.  What
Kafka does with accepted records is tested end to end in tests/integration/test_ingest.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from django.conf import settings
from django.utils import timezone

from certs.models import Certificate
from certs.services import Issued, certificate_issue_generated, certificate_revoke
from config.env import Runtime
from devices import registry
from devices.models import Device, DeviceGroup, Stream
from ingest import identity, services
from ingest.app import IngestApp
from ingest.kafka import IngestProducer, Outgoing, ingest_producer_config
from ingest.ratelimit import RateLimiter
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.conftest import unique_slug

pytestmark = pytest.mark.django_db(transaction=True)
ACTOR = Actor.system("test")
CLOSED_PORT = 1


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def code(self) -> str:
        return self.body["error"]["code"]


class Client:
    """Calls the app as nginx would, on one event loop for the whole test."""

    def __init__(self, app: IngestApp) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def request(self, method: str = "POST", path: str = "/ingest/v1/records", body: bytes = b'{"celsius": 1}',
                headers: dict[str, str] | None = None) -> Answer:  # fmt: skip
        return self.loop.run_until_complete(self._request(method, path, body, headers or {}))

    async def _request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        path, _, query = path.partition("?")
        scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start, payload = sent
        raw = {k.decode(): v.decode() for k, v in start["headers"]}
        return Answer(start["status"], raw, orjson.loads(payload["body"]))

    def worker(self) -> Any:
        """The app's worker state, made on this client's event loop."""

        async def made() -> Any:
            return self.app.worker

        return self.loop.run_until_complete(made())

    def settle(self, seconds: float = 0.2) -> None:
        """Let background tasks (the rights listener) run."""
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def close(self) -> None:
        if self.app._worker is not None:
            self.loop.run_until_complete(self.app._worker.close())
        self.loop.close()


def nginx_headers(issued: Issued | None, **extra: str) -> dict[str, str]:
    headers = {"X-Sluice-Proxy-Secret": settings.SLUICE_PROXY_SECRET, "X-Sluice-Client-Verify": "NONE",
               "Content-Type": "application/json"}  # fmt: skip
    if issued is not None:
        headers |= {
            "X-Sluice-Client-Verify": "SUCCESS",
            # nginx's $ssl_client_serial: upper-case hex of whole bytes
            "X-Sluice-Client-Serial": format(int(issued.certificate.serial, 16), "X").zfill(40),
            "X-Sluice-Client-Issuer": issued.certificate.ca.subject,
        }
    return headers | extra


@pytest.fixture
def client(services: Runtime) -> Iterator[Client]:
    client = Client(IngestApp())
    yield client
    client.close()


@pytest.fixture
def issued(services: Runtime, monkeypatch: pytest.MonkeyPatch) -> Issued:
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
    tenant = tenant_create(actor=ACTOR, slug=unique_slug("acme"), name="Acme")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject=f"{stream.topic}-value")  # fmt: skip
    device = Device.objects.create(tenant=tenant, group=group, device_id="meter-1")
    return certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")


@pytest.fixture
def no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry URL nothing listens on: requests that pass identity and limits stop there."""
    monkeypatch.setattr(registry, "registry_client", lambda: SchemaRegistryClient(
        {"url": f"http://127.0.0.1:{CLOSED_PORT}/apis/ccompat/v7", "timeout": 2, "max.retries": 0}))  # fmt: skip


# -- routing and credentials ------------------------------------------------------------------


def test_without_a_credential_it_is_401_with_a_bearer_challenge(client: Client) -> None:
    answer = client.request(headers=nginx_headers(None))
    assert (answer.status, answer.code) == (401, "client_certificate_required")
    assert answer.headers["www-authenticate"] == 'Bearer realm="sluice-ingest"'
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert len(answer.headers["x-request-id"]) == 32


def test_only_post_on_the_records_path(client: Client) -> None:
    answer = client.request(method="GET", headers=nginx_headers(None))
    assert (answer.status, answer.code, answer.headers["allow"]) == (405, "method_not_allowed", "POST")
    answer = client.request(path="/ingest/v2/records", headers=nginx_headers(None))
    assert (answer.status, answer.code) == (404, "not_found")


def test_a_well_formed_request_id_is_echoed(client: Client) -> None:
    answer = client.request(headers=nginx_headers(None, **{"X-Request-ID": "device-req-000123"}))
    assert answer.headers["x-request-id"] == "device-req-000123"
    answer = client.request(headers=nginx_headers(None, **{"X-Request-ID": "no way\x7f"}))
    assert answer.headers["x-request-id"] != "no way\x7f"


def test_certificate_headers_count_only_with_nginx_secret(client: Client, issued: Issued) -> None:
    # given a local process that reaches the socket and claims a verified certificate
    forged = nginx_headers(issued, **{"X-Sluice-Proxy-Secret": "guess"})
    # then it is treated as having presented no certificate at all
    answer = client.request(headers=forged)
    assert (answer.status, answer.code) == (401, "client_certificate_required")


def test_nginx_refusals_of_a_certificate_get_their_own_codes(client: Client) -> None:
    for verdict, status, code in [("FAILED:certificate has expired", 401, "certificate_expired"),
                                  ("FAILED:certificate revoked", 403, "certificate_revoked"),
                                  ("FAILED:unable to get local issuer", 401, "certificate_invalid")]:  # fmt: skip
        answer = client.request(headers=nginx_headers(None, **{"X-Sluice-Client-Verify": verdict}))
        assert (answer.status, answer.code) == (status, code)


def test_a_certificate_sluice_never_issued_is_refused(client: Client, issued: Issued) -> None:
    unknown = nginx_headers(issued, **{"X-Sluice-Client-Serial": "0123456789ABCDEF"})
    assert (client.request(headers=unknown).code) == "unknown_certificate"
    wrong_issuer = nginx_headers(issued, **{"X-Sluice-Client-Issuer": "CN=someone else,O=other"})
    assert (client.request(headers=wrong_issuer).code) == "unknown_certificate"
    garbled = nginx_headers(issued, **{"X-Sluice-Client-Serial": "not hex"})
    answer = client.request(headers=garbled)
    assert (answer.status, answer.code) == (401, "certificate_invalid")


def test_a_certificate_and_a_token_together_are_ambiguous(client: Client, issued: Issued) -> None:
    answer = client.request(headers=nginx_headers(issued, Authorization="Bearer abc"))
    assert (answer.status, answer.code) == (400, "ambiguous_credentials")


# -- identity: read from the database, cached until a change is announced -------------------


@pytest.mark.parametrize(
    ("model", "change", "status", "code"),
    [
        (Tenant, {"status": Tenant.Status.SUSPENDED}, 403, "tenant_suspended"),
        (Device, {"status": Device.Status.DISABLED}, 403, "device_disabled"),
        (DeviceGroup, {"credential_policy": DeviceGroup.CredentialPolicy.OAUTH2}, 403, "credential_not_allowed"),
        (Certificate, {"status": Certificate.Status.REVOKED}, 403, "certificate_revoked"),
        (Certificate, {"status": Certificate.Status.SUPERSEDED, "overlap_until": None}, 403, "certificate_superseded"),
        (Certificate, {"not_after": timezone.now()}, 401, "certificate_expired"),
    ],
)
def test_identity_refusals_as_the_database_says(
    client: Client, issued: Issued, no_registry: None, model: Any, change: dict[str, Any], status: int, code: str
) -> None:
    # given the database says so before the worker read this certificate
    model.objects.all().update(**change)
    # when the device sends, then it is refused with the database's reason
    answer = client.request(headers=nginx_headers(issued))
    assert (answer.status, answer.code) == (status, code)


def test_a_superseded_certificate_works_during_its_overlap(client: Client, issued: Issued, no_registry: None) -> None:
    Certificate.objects.filter(pk=issued.certificate.pk).update(
        status=Certificate.Status.SUPERSEDED, overlap_until=timezone.now() + timezone.timedelta(days=1)
    )
    # it gets past identity and the limits, to the (unreachable) registry
    assert client.request(headers=nginx_headers(issued)).code == "registry_unavailable"


def test_a_revocation_reaches_a_worker_that_cached_the_certificate(
    client: Client, issued: Issued, no_registry: None
) -> None:
    # given a worker that has read the certificate and is subscribed to changes of rights
    assert client.request(headers=nginx_headers(issued)).code == "registry_unavailable"
    deadline = time.monotonic() + 5
    while not client.worker().cache.live and time.monotonic() < deadline:
        client.settle(0.05)
    key = identity.certificate_key(issued.certificate.serial)
    assert client.request(headers=nginx_headers(issued)).code == "registry_unavailable"
    assert client.worker().cache.get(key) is not None
    # when the certificate is revoked through the services (announced after the commit)
    certificate_revoke(actor=ACTOR, certificate=issued.certificate, reason="key_compromise")
    client.settle(0.3)
    # then the cached entry is gone and the next request is refused
    assert client.worker().cache.get(key) is None
    answer = client.request(headers=nginx_headers(issued))
    assert (answer.status, answer.code) == (403, "certificate_revoked")


def test_without_a_subscription_every_request_reads_the_database(client: Client, issued: Issued,
                                                                 no_registry: None) -> None:  # fmt: skip
    # given a worker that is not subscribed to changes of rights (Redis lost, or starting)
    worker = client.worker()
    for task in worker.tasks:
        task.cancel()
    client.settle(0.05)
    assert not worker.cache.live
    assert client.request(headers=nginx_headers(issued)).code == "registry_unavailable"
    # when the certificate is revoked without any announcement reaching it
    Certificate.objects.filter(pk=issued.certificate.pk).update(status=Certificate.Status.REVOKED)
    # then the very next request says so: nothing was kept from the first read
    assert client.request(headers=nginx_headers(issued)).code == "certificate_revoked"
    assert len(worker.cache) == 0


def test_identity_is_checked_before_the_body(client: Client, issued: Issued) -> None:
    Tenant.objects.all().update(status=Tenant.Status.SUSPENDED)
    answer = client.request(body=b"x" * (2**20 + 10), headers=nginx_headers(issued, **{"Content-Type": "text/plain"}))
    assert (answer.status, answer.code) == (403, "tenant_suspended")


def test_a_bad_batch_option_is_400_after_identity_and_before_the_body(client: Client, issued: Issued) -> None:
    # without a credential, the refusal is still who (401), whatever the query says
    assert client.request(path="/ingest/v1/records?invalid=bogus", headers=nginx_headers(None)).status == 401
    # with one, a bad option is refused before the body is even parsed
    answer = client.request(path="/ingest/v1/records?invalid=bogus", body=b"{not json",
                            headers=nginx_headers(issued))  # fmt: skip
    assert (answer.status, answer.code) == (400, "invalid_parameter")
    assert answer.body["error"]["fields"][0]["pointer"] == "/query/invalid"


def test_a_declared_length_over_the_limit_is_413_before_reading(client: Client, issued: Issued) -> None:
    answer = client.request(headers=nginx_headers(issued, **{"Content-Length": str(2**20 + 1)}))
    assert (answer.status, answer.code) == (413, "payload_too_large")
    answer = client.request(headers=nginx_headers(issued, **{"Content-Length": "many"}))
    assert (answer.status, answer.code) == (400, "invalid_content_length")


# -- dependencies that fail ---------------------------------------------------------------------


def test_an_unreachable_registry_is_503_with_retry_after(client: Client, issued: Issued, no_registry: None) -> None:
    answer = client.request(headers=nginx_headers(issued))
    assert (answer.status, answer.code) == (503, "registry_unavailable")
    assert int(answer.headers["retry-after"]) > 0
    # and the rate-limit fields describe what the request was measured against
    assert answer.headers["ratelimit-policy"].startswith('"device";q=10;w=1')


def test_an_unreachable_rate_limiter_fails_closed(client: Client, issued: Issued) -> None:
    # given a worker whose Redis is unreachable
    client.worker().limiter = RateLimiter(f"redis://127.0.0.1:{CLOSED_PORT}/0")
    # when the device sends, then nothing is accepted unmetered
    answer = client.request(headers=nginx_headers(issued))
    assert (answer.status, answer.code) == (503, "rate_limiter_unavailable")
    assert "retry-after" in answer.headers


def test_the_producer_is_idempotent_with_acks_all(services: Runtime) -> None:
    config = ingest_producer_config(settings.SLUICE_RUNTIME)
    assert (config["enable.idempotence"], config["acks"]) == (True, "all")
    assert config["security.protocol"] == "SSL"
    assert config["compression.type"] == settings.SLUICE_RUNTIME.ingest.compression


def test_records_kafka_did_not_acknowledge_are_503_and_said_to_be_uncertain() -> None:
    # given a producer whose broker never answers, giving up on a record after one second
    producer = IngestProducer({"bootstrap.servers": f"127.0.0.1:{CLOSED_PORT}", "enable.idempotence": True,
                               "acks": "all", "message.timeout.ms": 1000, "log_level": 0})  # fmt: skip
    try:
        # when a request's two records are produced
        outcome = asyncio.run(
            producer.produce_and_wait_async("iot.acme.eu.temperature", Outgoing(b"k", [], [b"v", b"v"]), timeout=5)
        )
    finally:
        producer.close(timeout=0)

    # then the outcome is incomplete, and the error says what may have been written
    assert not outcome.complete
    assert outcome.queued == 2
    error = services.kafka_failure("iot.acme.eu.temperature", outcome)
    assert (error.status, error.code, error.retry_after) == (503, "kafka_unavailable", 5)
    assert "did not acknowledge 2 of 2 record(s)" in error.message
    assert "may or may not have been written" in error.message


def test_a_request_that_finds_the_producer_idle_does_not_wait_for_the_idle_poll() -> None:
    # given a producer that has been idle long enough to poll at its idle interval
    from ingest.kafka import IDLE_POLL_INTERVAL, POLL_INTERVAL

    producer = IngestProducer({"bootstrap.servers": f"127.0.0.1:{CLOSED_PORT}", "log_level": 0})

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        producer._ensure_ticking()
        await asyncio.sleep(5 * POLL_INTERVAL)  # nobody waits: the next poll is an idle one
        assert producer._timer is not None
        assert producer._timer_idle
        idle_in = producer._timer.when() - loop.time()
        # when a request starts waiting for Kafka
        producer._ensure_ticking()
        busy_in = producer._timer.when() - loop.time()
        await producer.aclose(timeout=0)
        return idle_in, busy_in

    idle_in, busy_in = asyncio.run(scenario())
    # then the next poll moves from the idle interval to the short one at once
    assert idle_in > 10 * POLL_INTERVAL
    assert busy_in <= POLL_INTERVAL < IDLE_POLL_INTERVAL


def test_nginx_serial_numbers_are_read_as_sluice_stores_them() -> None:
    assert services.certificate_serial("00AB0F") == "ab0f"
    assert services.certificate_serial("7F") == "7f"
    for bad in ("", "-01", "xyz", "0" * 65):
        with pytest.raises(services.Unauthenticated):
            services.certificate_serial(bad)


def test_a_worker_starts_with_what_it_loaded_out_of_the_collectors_sight() -> None:
    # given an ingest worker that has not started yet
    import gc

    app = IngestApp()
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            frozen.append(gc.get_freeze_count())

    frozen: list[int] = []
    gc.unfreeze()
    try:
        # when it starts
        asyncio.run(app({"type": "lifespan"}, receive, send))
    finally:
        gc.unfreeze()
    # then everything loaded before is frozen (a full collection will not scan it)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert frozen
    assert frozen[0] > 10_000
