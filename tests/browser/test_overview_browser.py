"""The console's overviews in a real browser: an operator's (every tenant, the brokers) and a
tenant admin's (their tenant only), with charts drawn from a real Prometheus, silent devices
and a certificate at risk renewed from the page.  Screenshots go under the test's tmp dir."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Page, expect

from certs import services as cert_services
from certs.models import Certificate
from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
from tenants.models import Membership, Tenant
from tenants.services import tenant_create
from tests.browser.conftest import make_staff_user
from tests.browser.test_admin_browser import no_kafka_provisioning  # noqa: F401 - fixture
from tests.prometheus_fixture import metrics_prometheus

ACTOR = Actor.system("test")


@pytest.fixture
def prometheus_running(tmp_path: Path) -> Iterator[str]:
    with metrics_prometheus(settings.SLUICE_RUNTIME.ports.prometheus, tmp_path / "prometheus") as url:
        yield url


def _tenant(slug: str, *, region: str, kind: str) -> Tenant:
    tenant = tenant_create(actor=ACTOR, slug=slug, name=slug.title())
    stream = Stream.objects.create(tenant=tenant, region=region, type=kind, partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region=region, device_type=kind, stream=stream,
                                       schema_subject="s", expected_interval_seconds=600)  # fmt: skip
    now = timezone.now()
    Device.objects.create(
        tenant=tenant, group=group, device_id=f"{slug}-quiet", last_seen_at=now - dt.timedelta(hours=3)
    )
    Device.objects.create(tenant=tenant, group=group, device_id=f"{slug}-chatty", last_seen_at=now)
    Device.objects.create(tenant=tenant, group=group, device_id=f"{slug}-expiring", last_seen_at=now)
    issued = cert_services.certificates_issue_bulk(
        actor=ACTOR, tenant=tenant, items=[{"device_id": f"{slug}-expiring"}]
    )
    Certificate.objects.filter(pk=issued[0].certificate.pk).update(not_after=now + dt.timedelta(days=9))
    return tenant


def _series(page: Page, chart: str) -> set[str]:
    return set(page.locator(f"#{chart} svg g.series").evaluate_all("els => els.map(e => e.dataset.series)"))


def test_operator_and_tenant_overviews_with_charts_and_a_renewal(
    page: Page, login: Callable[[str], None], tmp_path: Path, transactional_db: None,
    no_kafka_provisioning: None, prometheus_running: str,  # noqa: F811
) -> None:  # fmt: skip
    # given two tenants with traffic in Prometheus, a silent device and a certificate at risk each
    acme = _tenant("acme", region="eu", kind="temperature")
    _tenant("globex", region="us", kind="vibration")
    make_staff_user("operator", operator=True)
    admin = make_staff_user("acme-admin")
    Membership.objects.create(user=admin, tenant=acme, role="admin")
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # when the operator opens the operator overview from the console's index
    login("operator")
    page.click("#link-operator-overview")
    expect(page.locator("#chart-records svg")).to_be_visible()
    page.screenshot(path=str(shots / "01-operator-overview.png"), full_page=True)

    # then every tenant's series are drawn, the brokers' health is listed, and both lists show both tenants
    assert _series(page, "chart-records") == {"acme/eu.temperature", "globex/us.vibration"}
    assert _series(page, "chart-refusals") == {"acme/schema_invalid", "globex/rate_limited"}
    assert _series(page, "chart-lag") == {"acme/analytics", "globex/billing"}
    expect(page.locator("#broker-health tr.broker")).to_have_count(2)
    expect(page.locator("#broker-health tr.broker-down")).to_have_count(1)
    expect(page.locator("#devices-silent tr.silent-device")).to_have_count(2)
    expect(page.locator("#certificates-at-risk tr.at-risk")).to_have_count(2)

    # when acme's admin logs in and opens acme's overview
    page.context.clear_cookies()
    login("acme-admin")
    expect(page.locator("#link-operator-overview")).to_have_count(0)
    page.click("a.link-tenant-overview:text('acme')")
    expect(page.locator("#chart-records svg")).to_be_visible()
    page.screenshot(path=str(shots / "02-tenant-overview.png"), full_page=True)

    # then only acme's series and rows are there, and no brokers
    assert _series(page, "chart-records") == {"eu.temperature"}
    assert _series(page, "chart-refusals") == {"schema_invalid"}
    assert _series(page, "chart-lag") == {"analytics"}
    expect(page.locator("#broker-health")).to_have_count(0)
    expect(page.locator("#devices-silent tr.silent-device")).to_have_count(1)
    expect(page.locator("#devices-silent")).to_contain_text("acme-quiet")
    expect(page.locator("body")).not_to_contain_text("globex")

    # when the admin renews the certificate at risk
    page.click("button.renew[data-device='acme-expiring']")

    # then the new key is shown once, and the certificate is no longer at risk
    expect(page.locator("pre.sluice-key")).to_contain_text("BEGIN PRIVATE KEY")
    page.screenshot(path=str(shots / "03-renewed.png"), full_page=True)
    old = Certificate.objects.get(device_ref="acme-expiring", status="superseded")
    assert old.superseded_by is not None
    assert old.superseded_by.status == "active"
    page.click("#back-to-device")
    expect(page.locator("#certificates-at-risk tr.at-risk")).to_have_count(0)
    page.screenshot(path=str(shots / "04-after-renewal.png"), full_page=True)
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "01-operator-overview.png", "02-tenant-overview.png", "03-renewed.png", "04-after-renewal.png"
    ]  # fmt: skip


def test_without_prometheus_the_overview_says_so_and_shows_the_lists(
    page: Page, login: Callable[[str], None], tmp_path: Path, transactional_db: None,
    no_kafka_provisioning: None,  # noqa: F811
) -> None:  # fmt: skip
    # given no Prometheus on its port (sluice up --no-prometheus)
    _tenant("acme", region="eu", kind="temperature")
    make_staff_user("operator", operator=True)
    login("operator")
    # when the operator opens the overview
    page.goto("/admin/overview/")
    # then the page says the charts are unavailable, and still lists the silent device
    expect(page.locator("#prometheus-unavailable")).to_contain_text("Charts unavailable")
    expect(page.locator("#devices-silent")).to_contain_text("acme-quiet")
    page.screenshot(path=str(tmp_path / "no-prometheus.png"), full_page=True)
