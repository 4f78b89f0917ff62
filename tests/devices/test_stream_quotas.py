"""Per-tenant limits on streams and partitions: operator-set, invisible to nobody, enforced
inside the writing transaction so that concurrent requests cannot both take the last slot."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from config.errors import QuotaExceeded
from devices import services
from devices.models import Stream
from tenants.audit import Actor
from tenants.models import Tenant
from tests.conftest import make_tenant

pytestmark = pytest.mark.django_db
BASE = "/api/v1/tenants/acme"


def test_limits_have_sane_defaults_and_are_shown(admin_client: APIClient, tenant: Tenant) -> None:
    # when a tenant admin reads their tenant
    body = admin_client.get(f"{BASE}/").json()
    # then both limits are in the answer, with the defaults
    assert (body["max_streams"], body["max_partitions"]) == (50, 1000)


def test_only_an_operator_sets_the_limits(operator_client: APIClient, admin_client: APIClient, tenant: Tenant) -> None:
    # given a tenant admin trying to raise their own limits
    for field in ("max_streams", "max_partitions"):
        refused = admin_client.patch(f"{BASE}/", {field: 10_000}, format="json")
        # then they are refused, and nothing changed
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "permission_denied")
    assert Tenant.objects.values_list("max_streams", "max_partitions").get(slug="acme") == (50, 1000)
    # when the operator sets them
    changed = operator_client.patch(f"{BASE}/", {"max_streams": 3, "max_partitions": 20}, format="json")
    # then they apply and show
    assert (changed.json()["max_streams"], changed.json()["max_partitions"]) == (3, 20)
    assert operator_client.patch(f"{BASE}/", {"max_streams": 0}, format="json").status_code == 400


def test_a_stream_over_the_stream_limit_is_409_naming_it(
    operator_client: APIClient, admin_client: APIClient, tenant: Tenant
) -> None:
    # given a tenant with one stream (from the fixture) allowed two
    operator_client.patch(f"{BASE}/", {"max_streams": 2}, format="json")
    second = admin_client.post(f"{BASE}/streams/", {"region": "eu", "type": "humidity", "partitions": 1}, format="json")
    assert second.status_code == 201, second.json()
    # when the admin asks for a third
    third = admin_client.post(f"{BASE}/streams/", {"region": "eu", "type": "wind", "partitions": 1}, format="json")
    # then it is refused with the limit named, and nothing was written
    assert third.status_code == 409
    error = third.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "max_streams" in error["message"]
    assert "2 streams" in error["message"]
    assert error["fields"][0]["code"] == "max_streams"
    assert not Stream.objects.filter(tenant=tenant, type="wind").exists()


def test_partitions_count_across_all_streams_on_create_and_on_growth(
    operator_client: APIClient, admin_client: APIClient, tenant: Tenant
) -> None:
    # given 10 partitions allowed in total and a 3-partition stream already there
    operator_client.patch(f"{BASE}/", {"max_partitions": 10}, format="json")
    existing = Stream.objects.get(tenant=tenant)
    assert existing.partitions == 3
    # when a new stream would take the total to 11
    over = admin_client.post(f"{BASE}/streams/", {"region": "eu", "type": "humidity", "partitions": 8}, format="json")
    # then it is refused on /partitions with the limit named
    assert over.status_code == 409
    assert over.json()["error"]["fields"] == [
        {"pointer": "/partitions", "code": "max_partitions", "message": over.json()["error"]["message"]}
    ]
    assert "max_partitions" in over.json()["error"]["message"]
    # and exactly up to the limit is fine
    fits = admin_client.post(f"{BASE}/streams/", {"region": "eu", "type": "humidity", "partitions": 7}, format="json")
    assert fits.status_code == 201, fits.json()
    # when an existing stream grows past the total
    grown = admin_client.patch(f"{BASE}/streams/{existing.pk}/", {"partitions": 4}, format="json")
    # then that is refused too, and the stream keeps its partitions
    assert (grown.status_code, grown.json()["error"]["code"]) == (409, "quota_exceeded")
    assert Stream.objects.get(pk=existing.pk).partitions == 3


def test_a_single_stream_is_bounded_whatever_the_total(operator_client: APIClient, admin_client: APIClient,
                                                       tenant: Tenant) -> None:  # fmt: skip
    # given a tenant allowed many partitions
    operator_client.patch(f"{BASE}/", {"max_partitions": 100_000}, format="json")
    # when one stream asks for more than a stream may have
    response = admin_client.post(
        f"{BASE}/streams/", {"region": "eu", "type": "humidity", "partitions": services.MAX_STREAM_PARTITIONS + 1},
        format="json",
    )  # fmt: skip
    # then it is a field error on /partitions
    assert response.status_code == 400
    assert response.json()["error"]["fields"][0]["pointer"] == "/partitions"
    # and the service refuses it too (the console and onboarding call it directly)
    with pytest.raises(Exception, match="at most 1000 partitions"):
        services.stream_create(actor=Actor.system("test"), tenant=tenant, region="eu", type="wind",
                               partitions=services.MAX_STREAM_PARTITIONS + 1)  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_never_both_take_the_last_slot() -> None:
    # given a tenant with room for exactly two more streams (one exists)
    tenant = make_tenant("race")
    Tenant.objects.filter(pk=tenant.pk).update(max_streams=3)
    tenant.refresh_from_db()
    contenders = 6
    start = threading.Barrier(contenders)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def create(index: int) -> None:
        try:
            start.wait()
            stream = services.stream_create(actor=Actor.system("test"), tenant=tenant, region="eu",
                                            type=f"kind-{index}", partitions=1)  # fmt: skip
            result: Any = stream.pk
        except QuotaExceeded as exc:
            result = exc
        finally:
            connection.close()  # each thread has its own connection; give it back
        with lock:
            outcomes.append(result)

    # when six requests race for them, each in its own thread and database connection
    threads = [threading.Thread(target=create, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # then exactly two won and four were refused, and the tenant has exactly its limit
    assert len(outcomes) == contenders
    assert sum(isinstance(o, int) for o in outcomes) == 2
    assert sum(isinstance(o, QuotaExceeded) for o in outcomes) == 4
    assert Stream.objects.filter(tenant=tenant).count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_growth_never_overshoots_the_partition_total() -> None:
    # given 3 + 3 partitions used of 10, and both streams asking to grow by 3 at once
    tenant = make_tenant("grow")
    other = Stream.objects.create(tenant=tenant, region="eu", type="humidity", partitions=3)
    Tenant.objects.filter(pk=tenant.pk).update(max_partitions=10)
    streams = [Stream.objects.get(tenant=tenant, type="temperature"), other]
    start = threading.Barrier(2)
    outcomes: list[Any] = []

    def grow(stream: Stream) -> None:
        try:
            start.wait()
            stream.refresh_from_db()
            outcomes.append(services.stream_update(actor=Actor.system("test"), stream=stream, partitions=6).pk)
        except QuotaExceeded as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=grow, args=(s,)) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # then one grew and the other was refused: 9 of 10, never 12
    assert sorted(type(o).__name__ for o in outcomes) == ["QuotaExceeded", "int"]
    assert sum(Stream.objects.filter(tenant=tenant).values_list("partitions", flat=True)) == 9
