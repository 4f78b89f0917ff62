"""The console's overviews: the Prometheus client against a real Prometheus (scraping the
contract's metrics from a server of this test), the charts they draw, the selectors behind
the lists (silent devices, certificates at risk), and who may open them and renew."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from certs import selectors as cert_selectors
from certs import services as cert_services
from certs.models import Certificate
from config.overviews import overview
from config.prometheus import Prometheus, PrometheusQueryFailed, PrometheusUnavailable
from devices import selectors as device_selectors
from devices.models import Device, DeviceGroup
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.scoping import Scope
from tests.conftest import make_tenant, make_user
from tests.prometheus_fixture import free_port, metrics_prometheus

ACTOR = Actor.system("test")


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus at the port the console reads (the runtime's), with the contract's series."""
    with metrics_prometheus(settings.SLUICE_RUNTIME.ports.prometheus, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


# -- the client ------------------------------------------------------------------------------


def test_query_range_returns_each_series_with_its_points(prometheus_url: str) -> None:
    client = Prometheus(prometheus_url)
    end = timezone.now()
    found = client.query_range("sum by (tenant, stream) (rate(sluice_ingest_records_total[1m]))",
                               start=end - dt.timedelta(minutes=5), end=end, step=dt.timedelta(seconds=1))  # fmt: skip
    by_name = {(s.labels["tenant"], s.labels["stream"]): s.points for s in found}
    assert set(by_name) == {("acme", "eu.temperature"), ("globex", "us.vibration")}
    # acme's counter grows 50 a scrape, globex's 20: acme's rate is the larger
    assert by_name[("acme", "eu.temperature")][-1][1] > by_name[("globex", "us.vibration")][-1][1] > 0
    times = [t for t, _ in by_name[("acme", "eu.temperature")]]
    assert times == sorted(times)
    assert times[-1] <= end.timestamp() + 1


def test_an_instant_query_and_a_refused_one(prometheus_url: str) -> None:
    client = Prometheus(prometheus_url)
    up = {s.labels["broker"]: s.value for s in client.query('up{job="kafka"}')}
    assert up == {"1": 1.0, "2": 0.0}
    with pytest.raises(PrometheusQueryFailed) as refused:
        client.query("sum by (")
    assert refused.value.code == "prometheus_query_failed"
    assert "parse error" in refused.value.message


def test_nothing_listening_is_unavailable_and_quick() -> None:
    began = time.monotonic()
    with pytest.raises(PrometheusUnavailable) as unavailable:
        Prometheus(f"http://127.0.0.1:{free_port()}").query("up")
    assert time.monotonic() - began < 3
    assert unavailable.value.code == "prometheus_unavailable"
    assert "not reachable" in unavailable.value.message


# -- the overviews' content ------------------------------------------------------------------


def _series(svg: str) -> set[str]:
    return set(re.findall(r'data-series="([^"]*)"', svg))


@pytest.mark.django_db
def test_the_operator_sees_every_tenant_and_the_brokers(prometheus_url: str) -> None:
    make_tenant("acme"), make_tenant("globex")
    page = overview(scope=Scope.operator(), tenant=None)
    assert page.prometheus_error is None
    assert page.records is not None
    assert page.refusals is not None
    assert page.lag is not None
    assert _series(page.records.svg) == {"acme/eu.temperature", "globex/us.vibration"}
    assert _series(page.refusals.svg) == {"acme/schema_invalid", "globex/rate_limited"}
    assert _series(page.lag.svg) == {"acme/analytics", "globex/billing"}
    assert [(b.broker, b.up, b.active_controller) for b in page.brokers or []] == [("1", True, 1.0), ("2", False, None)]
    assert not page.can_renew  # renewing is on a tenant's overview


@pytest.mark.django_db
def test_a_tenants_overview_shows_its_own_series_only(prometheus_url: str) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    page = overview(scope=Scope.of_tenant(acme, role="viewer"), tenant=acme)
    assert page.records is not None
    assert page.refusals is not None
    assert page.lag is not None
    assert _series(page.records.svg) == {"eu.temperature"}
    assert _series(page.refusals.svg) == {"schema_invalid"}
    assert _series(page.lag.svg) == {"analytics"}
    assert "globex" not in page.records.svg + page.refusals.svg + page.lag.svg
    assert page.brokers is None  # the brokers are the operator's
    assert not page.can_renew  # a viewer
    # and another tenant's overview does not exist for acme's members
    from config.errors import NotFound

    with pytest.raises(NotFound):
        overview(scope=Scope.of_tenant(acme), tenant=globex)


@pytest.mark.django_db
def test_without_prometheus_the_page_says_so_and_keeps_the_lists() -> None:
    acme = make_tenant("acme")
    Device.objects.create(tenant=acme, group=DeviceGroup.objects.get(tenant=acme), device_id="quiet",
                          last_seen_at=timezone.now() - dt.timedelta(days=2))  # fmt: skip
    page = overview(scope=Scope.of_tenant(acme), tenant=acme, client=Prometheus(f"http://127.0.0.1:{free_port()}"))
    assert page.prometheus_error is not None
    assert "not reachable" in page.prometheus_error
    assert page.records is None
    assert [d.device_id for d in page.silent] == ["quiet"]


# -- the lists' selectors ----------------------------------------------------------------------


@pytest.mark.django_db
def test_silent_devices_follow_their_groups_interval_and_the_scope() -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    group = DeviceGroup.objects.get(tenant=acme)
    group.expected_interval_seconds = 600
    group.save()
    seen = {"fresh": now - dt.timedelta(minutes=5), "late": now - dt.timedelta(minutes=11), "never": None}
    for device_id, last_seen in seen.items():
        Device.objects.create(tenant=acme, group=group, device_id=device_id, last_seen_at=last_seen)
    Device.objects.create(tenant=acme, group=group, device_id="off", status="disabled",
                          last_seen_at=now - dt.timedelta(days=3))  # fmt: skip
    Device.objects.filter(device_id="never").update(created_at=now - dt.timedelta(hours=1))
    Device.objects.create(tenant=globex, group=DeviceGroup.objects.get(tenant=globex), device_id="globex-late",
                          last_seen_at=now - dt.timedelta(hours=2))  # fmt: skip
    # a device created just now and not seen yet is not silent: its interval has not passed
    Device.objects.create(tenant=acme, group=group, device_id="new")

    acme_silent = device_selectors.devices_silent(scope=Scope.of_tenant(acme), now=now)
    assert [d.device_id for d in acme_silent] == ["never", "late"]
    everyone = device_selectors.devices_silent(scope=Scope.operator(), now=now)
    assert [d.device_id for d in everyone] == ["never", "globex-late", "late"]


def _issue(tenant: Tenant, device_id: str, *, expires_in: dt.timedelta) -> Certificate:
    issued = cert_services.certificates_issue_bulk(actor=ACTOR, tenant=tenant, items=[{"device_id": device_id}])[0]
    Certificate.objects.filter(pk=issued.certificate.pk).update(not_after=timezone.now() + expires_in)
    return Certificate.objects.get(pk=issued.certificate.pk)


def _with_ca(slug: str) -> Tenant:
    tenant = make_tenant(slug)
    cert_services.tenant_ca_create(actor=ACTOR, tenant=tenant)
    for device_id in ("d1", "d2", "d3"):
        Device.objects.create(tenant=tenant, group=DeviceGroup.objects.get(tenant=tenant), device_id=device_id)
    return tenant


@pytest.mark.django_db
def test_certificates_at_risk_expire_within_30_days_without_a_successor() -> None:
    acme, globex = _with_ca("acme"), _with_ca("globex")
    soon = _issue(acme, "d1", expires_in=dt.timedelta(days=10))
    _issue(acme, "d2", expires_in=dt.timedelta(days=60))  # not yet
    covered = _issue(acme, "d3", expires_in=dt.timedelta(days=5))
    _issue(acme, "d3", expires_in=dt.timedelta(days=300))  # d3 already holds a longer one
    other = _issue(globex, "d1", expires_in=dt.timedelta(days=3))
    assert [c.pk for c in cert_selectors.certificates_at_risk(scope=Scope.of_tenant(acme))] == [soon.pk]
    assert [c.pk for c in cert_selectors.certificates_at_risk(scope=Scope.operator())] == [other.pk, soon.pk]
    assert covered.pk not in [c.pk for c in cert_selectors.certificates_at_risk(scope=Scope.operator())]


# -- the pages and the renew action: who may, and another tenant's is a missing one -------------


def _console(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


@pytest.mark.django_db
def test_overview_pages_are_scoped_and_renew_needs_the_tenants_admin(prometheus_url: str) -> None:
    acme, globex = _with_ca("acme"), _with_ca("globex")
    acme_cert = _issue(acme, "d1", expires_in=dt.timedelta(days=10))
    globex_cert = _issue(globex, "d1", expires_in=dt.timedelta(days=10))
    admin = make_user("acme-admin", tenant=acme)
    viewer = make_user("acme-viewer", tenant=acme, role="viewer")
    for user in (admin, viewer):
        user.is_staff = True
        user.save()
    as_admin, as_viewer = _console(admin), _console(viewer)

    # the tenant's own overview opens for its admin and viewer, with acme's numbers only
    for client in (as_admin, as_viewer):
        own = client.get("/admin/overview/acme/", secure=True)
        assert own.status_code == 200
        assert 'data-series="eu.temperature"' in own.content.decode()
        assert "globex" not in own.content.decode()
    # another tenant's overview, the operator's, and another tenant's renew: as missing ones
    assert as_admin.get("/admin/overview/globex/", secure=True).status_code == 404
    assert as_admin.get("/admin/overview/", secure=True).status_code == 404
    for path in (f"/admin/overview/globex/certificates/{globex_cert.serial}/renew/",
                 f"/admin/overview/acme/certificates/{globex_cert.serial}/renew/"):  # fmt: skip
        assert as_admin.post(path, secure=True).status_code == 404
    globex_cert.refresh_from_db()
    assert globex_cert.status == "active"

    # a viewer sees no renew button, and a renew it sends is refused
    assert b"button renew" not in as_viewer.get("/admin/overview/acme/", secure=True).content
    refused = as_viewer.post(f"/admin/overview/acme/certificates/{acme_cert.serial}/renew/", secure=True, follow=True)
    assert "needs the tenant admin role" in refused.content.decode()
    acme_cert.refresh_from_db()
    assert acme_cert.status == "active"

    # the admin renews: a successor with its key shown once, the old one superseded and no longer at risk
    renewed = as_admin.post(f"/admin/overview/acme/certificates/{acme_cert.serial}/renew/", secure=True)
    assert renewed.status_code == 200
    assert renewed["Cache-Control"].startswith("no-store")
    assert "BEGIN PRIVATE KEY" in renewed.content.decode()
    acme_cert.refresh_from_db()
    assert acme_cert.status == "superseded"
    assert acme_cert.superseded_by is not None
    assert acme_cert.superseded_by.status == "active"
    assert acme_cert.superseded_by.device_ref == "d1"
    assert "PRIVATE KEY" not in acme_cert.superseded_by.certificate_pem
    assert list(cert_selectors.certificates_at_risk(scope=Scope.of_tenant(acme))) == []
    # a second renew of the same certificate finds nothing to renew
    assert as_admin.post(f"/admin/overview/acme/certificates/{acme_cert.serial}/renew/",
                         secure=True).status_code == 404  # fmt: skip


# -- the group's expected interval in the API -----------------------------------------------------


@pytest.mark.django_db
def test_the_api_sets_and_validates_the_expected_interval(admin_client: APIClient, tenant: Tenant) -> None:
    stream = tenant.streams.get()
    body = {"slug": "meters", "stream": stream.pk}
    created = admin_client.post("/api/v1/tenants/acme/groups/", body, format="json")
    assert created.status_code == 201
    assert created.json()["expected_interval_seconds"] == 3600
    changed = admin_client.patch("/api/v1/tenants/acme/groups/meters/", {"expected_interval_seconds": 300},
                                 format="json")  # fmt: skip
    assert changed.status_code == 200
    assert changed.json()["expected_interval_seconds"] == 300
    refused = admin_client.patch("/api/v1/tenants/acme/groups/meters/", {"expected_interval_seconds": 5},
                                 format="json")  # fmt: skip
    assert refused.status_code == 400
    field = refused.json()["error"]["fields"][0]
    assert (field["pointer"], field["code"]) == ("/expected_interval_seconds", "min_value")
    schema = Client().get("/api/schema/?format=json", secure=True)
    assert "expected_interval_seconds" in schema.content.decode()
