"""Certificates in the admin console: issue for selected devices (the key is shown once),
then revoke -- in a real browser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from certs.models import Certificate
from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
from tenants.models import AuditEvent
from tenants.services import tenant_create
from tests.browser.conftest import make_staff_user
from tests.browser.test_admin_browser import no_kafka_provisioning  # noqa: F401 - fixture

Shot = Callable[[str], Path]


def test_operator_issues_and_revokes_device_certificates(
    page: Page, login: Callable[[str], None], screenshot: Shot, transactional_db: None,
    no_kafka_provisioning: None,  # noqa: F811
) -> None:  # fmt: skip
    # given a tenant (with its issuing CA) and two devices
    tenant = tenant_create(actor=Actor.system("test"), slug="acme", name="Acme")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject="s")  # fmt: skip
    for name in ("thermo-1", "thermo-2"):
        Device.objects.create(tenant=tenant, group=group, device_id=name)
    make_staff_user("operator", operator=True)
    login("operator")

    # when the operator selects both devices and runs "Issue certificates"
    page.goto("/admin/devices/device/")
    for name in ("thermo-1", "thermo-2"):
        page.check(f"input.action-select[value='{Device.objects.get(device_id=name).pk}']")
    page.select_option("select[name=action]", "issue_certificates")
    screenshot("select-devices")
    page.click("button[name=index]")

    # then the page shows each device's chain and private key, once
    expect(page.locator("text=Copy these now.")).to_be_visible()
    expect(page.locator("pre.sluice-key").first).to_contain_text("BEGIN PRIVATE KEY")
    expect(page.locator("pre.sluice-key")).to_have_count(2)
    screenshot("keys-shown-once")
    assert Certificate.objects.filter(tenant=tenant, status="active").count() == 2

    # when one certificate is revoked from the certificates list
    certificate = Certificate.objects.get(device_ref="thermo-1")
    page.goto("/admin/certs/certificate/")
    page.check(f"input.action-select[value='{certificate.pk}']")
    page.select_option("select[name=action]", "revoke")
    page.click("button[name=index]")

    # then it is revoked, said so on the page, and audited
    expect(page.locator(".messagelist")).to_contain_text("Revoked 1 certificate(s)")
    screenshot("revoked")
    certificate.refresh_from_db()
    assert certificate.status == "revoked"
    assert AuditEvent.objects.filter(action="certificate.revoke", tenant_slug="acme").count() == 1
    # and the key never reached the database
    assert all("PRIVATE KEY" not in c.certificate_pem for c in Certificate.objects.all())


def test_tenant_viewer_cannot_issue(page: Page, login: Callable[[str], None], transactional_db: None,
                                    no_kafka_provisioning: None, settings: Any) -> None:  # noqa: F811  # fmt: skip
    tenant = tenant_create(actor=Actor.system("test"), slug="acme", name="Acme")
    from tenants.models import Membership

    viewer = make_staff_user("viewer")
    Membership.objects.create(user=viewer, tenant=tenant, role="viewer")
    login("viewer")
    page.goto("/admin/devices/device/")
    assert page.locator("select[name=action] option[value=issue_certificates]").count() == 0
