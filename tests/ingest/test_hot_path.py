"""The cheap ingest hot path keeps ingest's promises: the one-round-trip rate limiter (a Redis
script) still refuses over each limit, takes back what a refused request counted and fails
closed; identity read through the compiled lookups is as fresh as the ORM's; the async
view under ASGI (its own middleware road, its own thread for blocking work) answers as the
full chain would; the awaitable Kafka wait reports what was not acknowledged."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from urllib.parse import quote

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import AsyncClient
from django.utils import timezone

from certs import ca
from certs.models import Certificate
from certs.services import Issued, certificate_issue_generated
from config.env import Runtime
from config.errors import PermissionDenied, RateLimited, ServiceUnavailable
from devices.models import Device, DeviceGroup, Stream
from ingest import identity, metrics, ratelimit
from ingest.kafka import IngestProducer, OutgoingRecord
from ingest.services import _kafka_failure, ingest_authorize
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.conftest import unique_slug

ACTOR = Actor.system("test")
CLOSED_PORT = 1
NOW = 1_900_000_000.25  # a fixed window, so a test never straddles two


def budget(**overrides: int) -> ratelimit.Budget:
    values = {"tenant_id": secrets.randbelow(10**9) + 10**9, "device_pk": secrets.randbelow(10**9) + 10**9,
              "device_requests_per_second": 100, "tenant_records_per_second": 1000,
              "tenant_bytes_per_second": 10**6, "records": 1, "body_bytes": 100}  # fmt: skip
    return ratelimit.Budget(**(values | overrides))


def tenant_counts(b: ratelimit.Budget) -> tuple[int, int]:
    client = ratelimit.redis_client()
    prefix = f"{ratelimit.KEY_PREFIX}:rl:{int(NOW)}:tenant:{b.tenant_id}"
    return int(client.get(f"{prefix}:records") or 0), int(client.get(f"{prefix}:bytes") or 0)


# -- the rate-limit script ----------------------------------------------------------------


@pytest.mark.integration
def test_the_device_limit_refuses_the_request_over_it_and_leaves_the_tenant_untouched(services: Runtime) -> None:
    b = budget(device_requests_per_second=2)
    ratelimit.rate_limit_take(b, now=NOW)
    ratelimit.rate_limit_take(b, now=NOW)
    with pytest.raises(RateLimited) as refused:
        ratelimit.rate_limit_take(b, now=NOW)
    assert refused.value.retry_after == 1
    assert "2 request(s) per second" in refused.value.message
    assert tenant_counts(b) == (2, 200)


@pytest.mark.integration
def test_the_tenant_limits_refuse_and_take_back_what_the_refused_request_counted(services: Runtime) -> None:
    b = budget(tenant_records_per_second=5, records=3, body_bytes=10)
    ratelimit.rate_limit_take(b, now=NOW)
    with pytest.raises(RateLimited) as refused:
        ratelimit.rate_limit_take(b, now=NOW)
    assert "5 records per second" in refused.value.message
    assert "bytes per second" not in refused.value.message
    assert tenant_counts(b) == (3, 10)

    small = budget(tenant_id=b.tenant_id, tenant_bytes_per_second=35, body_bytes=20)
    ratelimit.rate_limit_take(small, now=NOW)
    with pytest.raises(RateLimited) as refused:
        ratelimit.rate_limit_take(small, now=NOW)
    assert "35 bytes per second" in refused.value.message
    assert tenant_counts(b) == (4, 30)


@pytest.mark.integration
def test_the_script_is_loaded_again_when_redis_forgot_it(services: Runtime) -> None:
    ratelimit.redis_client().script_flush()
    b = budget()
    ratelimit.rate_limit_take(b, now=NOW)  # EVALSHA fails with NOSCRIPT, EVAL loads it
    ratelimit.rate_limit_take(b, now=NOW)  # EVALSHA
    assert tenant_counts(b) == (2, 200)


def test_a_redis_that_cannot_answer_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = redis.Redis(host="127.0.0.1", port=CLOSED_PORT, socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setattr(ratelimit, "redis_client", lambda: dead)
    with pytest.raises(ServiceUnavailable) as refused:
        ratelimit.rate_limit_take(budget(), now=NOW)
    assert refused.value.code == "rate_limiter_unavailable"
    # and the bookkeeping after a 200 stays best effort
    monkeypatch.setattr(metrics, "redis_client", lambda: dead)
    assert metrics.count_accepted(3, device_pk=1) is False


@pytest.mark.integration
def test_accepted_records_are_counted_and_last_seen_is_due_once_a_minute(services: Runtime) -> None:
    device_pk = secrets.randbelow(10**9) + 10**9
    before = metrics.counters().get(metrics.ACCEPTED, 0)
    assert metrics.count_accepted(3, device_pk=device_pk) is True
    assert metrics.count_accepted(2, device_pk=device_pk) is False
    assert metrics.counters()[metrics.ACCEPTED] >= before + 5


# -- identity, read in one compiled query ---------------------------------------------------


@pytest.fixture
def issued(db: None) -> Issued:
    tenant = tenant_create(actor=ACTOR, slug=unique_slug("acme"), name="Acme")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1,
                                   retention_class=Stream.RetentionClass.ENRICHED)  # fmt: skip
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject="iot.acme.eu.temperature-value",
                                       rate_limit_per_second=7)  # fmt: skip
    device = Device.objects.create(tenant=tenant, group=group, device_id="meter-1")
    return certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")


def fingerprint(issued: Issued) -> str:
    return ca.fingerprint_sha256(ca.load_certificate(issued.certificate.certificate_pem.encode()))


def test_the_compiled_lookup_reads_what_the_orm_reads_and_reads_it_fresh(issued: Issued) -> None:
    certificate = Certificate.objects.select_related("device__group__stream__tenant", "device__tenant").get(
        pk=issued.certificate.pk
    )
    row, writer = identity.certificate_writer(fingerprint(issued)) or (None, None)
    assert row is not None
    assert writer is not None
    assert (row.status, row.not_after, row.serial) == (certificate.status, certificate.not_after, certificate.serial)
    assert writer == identity.Writer.from_device(certificate.device)
    assert writer.topic.endswith(".enriched")
    assert writer.rate_limit_per_second == 7

    # when the tenant is suspended and the group changes, the next read says so
    Tenant.objects.filter(pk=writer.tenant_id).update(status=Tenant.Status.SUSPENDED)
    DeviceGroup.objects.all().update(rate_limit_per_second=9)
    _, fresh = identity.certificate_writer(fingerprint(issued)) or (None, None)
    assert fresh is not None
    assert (fresh.tenant_status, fresh.rate_limit_per_second) == (Tenant.Status.SUSPENDED, 9)
    assert identity.certificate_writer("0" * 64) is None
    assert identity.device_writer_by_id(tenant_slug=writer.tenant_slug, device_id="meter-1") == fresh
    assert identity.device_writer_by_id(tenant_slug="nobody", device_id="meter-1") is None


def test_a_certificate_whose_device_is_gone_is_refused(issued: Issued) -> None:
    Certificate.objects.filter(pk=issued.certificate.pk).update(device=None)
    row, writer = identity.certificate_writer(fingerprint(issued)) or (None, None)
    assert row is not None
    assert writer is None
    with pytest.raises(PermissionDenied) as refused:
        ingest_authorize(certificate=row, writer=writer)
    assert refused.value.code == "unknown_device"


# -- the async view on its own road (as under uvicorn) ---------------------------------------


def async_post(issued: Issued, *, content_type: str = "application/json", **headers: str) -> Any:
    forwarded = {"X-Sluice-Proxy-Secret": settings.SLUICE_PROXY_SECRET, "X-Sluice-Client-Verify": "SUCCESS",
                 "X-Sluice-Client-Cert": quote(issued.certificate.certificate_pem)}  # fmt: skip
    client = AsyncClient(enforce_csrf_checks=True)
    return async_to_sync(client.post)("/ingest/v1/records", data=b'{"celsius": 1}', content_type=content_type,
                                      headers=forwarded | headers, secure=True)  # fmt: skip


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("model", "change", "status", "code"),
    [
        (Tenant, {"status": Tenant.Status.SUSPENDED}, 403, "tenant_suspended"),
        (Device, {"status": Device.Status.DISABLED}, 403, "device_disabled"),
        (Certificate, {"status": Certificate.Status.REVOKED}, 403, "certificate_revoked"),
        (Certificate, {"not_after": timezone.now()}, 401, "certificate_expired"),
    ],
)
def test_under_asgi_identity_is_read_at_each_request_and_the_headers_are_those_of_the_full_chain(
    issued: Issued, model: Any, change: dict[str, Any], status: int, code: str
) -> None:
    # given a device whose first request passes identity (it stops at the missing body type)
    first = async_post(issued, content_type="text/plain")
    assert (first.status_code, first.json()["error"]["code"]) == (415, "unsupported_media_type")

    # when its identity changes, then the very next request is refused
    model.objects.all().update(**change)
    response = async_post(issued, **{"X-Request-ID": "request-0123456789"})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    # with the response headers the skipped chain would have set
    assert response["X-Request-ID"] == "request-0123456789"
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Length"] == str(len(response.content))


@pytest.mark.django_db(transaction=True)
def test_other_paths_still_take_the_full_chain_under_asgi(issued: Issued) -> None:
    response = async_to_sync(AsyncClient().get)("/onboarding/", secure=True)
    # the login redirect comes from the authentication middleware's user
    assert response.status_code in (302, 200)
    assert response["X-Frame-Options"] == "DENY"


# -- the awaitable delivery wait ------------------------------------------------------------


def test_the_async_wait_reports_records_kafka_did_not_acknowledge() -> None:
    producer = IngestProducer({"bootstrap.servers": f"127.0.0.1:{CLOSED_PORT}", "enable.idempotence": True,
                               "acks": "all", "message.timeout.ms": 1000, "log_level": 0})  # fmt: skip
    try:
        outcome = asyncio.run(
            producer.produce_and_wait_async("iot.acme.eu.temperature", [OutgoingRecord(b"k", b"v", [])] * 2, timeout=5)
        )
    finally:
        producer.close(timeout=0)
    assert not outcome.complete
    assert outcome.queued == 2
    error = _kafka_failure("iot.acme.eu.temperature", outcome)
    assert "did not acknowledge 2 of 2 record(s)" in error.message
