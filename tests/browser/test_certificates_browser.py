"""Certificates in the admin console: issue for selected devices (a job; the generated keys
downloaded once), then revoke -- in a real browser."""

from __future__ import annotations

import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Page, expect

from certs.models import Certificate, Job, JobKeys
from devices.models import Device, DeviceGroup, Stream
from tenants.audit import Actor
from tenants.models import AuditEvent
from tenants.services import tenant_create
from tests.browser.conftest import make_staff_user
from tests.browser.test_admin_browser import no_kafka_provisioning  # noqa: F401 - fixture

Shot = Callable[[str], Path]


def test_operator_issues_and_revokes_device_certificates(
    page: Page, login: Callable[[str], None], screenshot: Shot, transactional_db: None,
    no_kafka_provisioning: None, celery_worker: subprocess.Popen[bytes],  # noqa: F811
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

    # then a job issues them (a real worker), the page follows it, then offers the keys once
    expect(page.locator("#job-percent")).to_have_text("100 %", timeout=60_000)
    expect(page.locator("#job-outcome")).to_have_text("Issued 2 of 2 certificates; 0 device(s) refused.")
    expect(page.locator("#job-keys-download")).to_be_visible()
    screenshot("keys-offered")
    with page.expect_download() as download_info:
        page.click("#job-keys-download")
    archive = zipfile.ZipFile(download_info.value.path())
    assert sorted(archive.namelist()) == ["thermo-1.crt", "thermo-1.key", "thermo-2.crt", "thermo-2.key"]
    for name in ("thermo-1", "thermo-2"):
        key = serialization.load_pem_private_key(archive.read(f"{name}.key"), None)
        leaf = x509.load_pem_x509_certificate(archive.read(f"{name}.crt"))
        assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
    expect(page.locator("#job-keys-gone")).to_contain_text("no longer has")
    screenshot("keys-downloaded")
    assert Certificate.objects.filter(tenant=tenant, status="active").count() == 2
    # and a second download is refused: they were given once
    page.reload()
    expect(page.locator("#job-keys-gone")).to_contain_text("were downloaded at")
    assert page.locator("#job-keys-download").is_hidden()
    job = Job.objects.get(tenant=tenant)
    assert not JobKeys.objects.filter(job=job).exists()

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
