"""The console's device import runs as a job: the page polls the job through the API and
draws a progress bar until the job ends, then the outcome.  A real Celery worker (a process
of its own, on the run's Redis and the test database) does the work."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from certs.models import Job
from devices.models import Device
from tenants.models import Tenant
from tests.browser.conftest import make_staff_user
from tests.conftest import make_tenant

Shot = Callable[[str], Path]
Login = Callable[[str], None]


@pytest.fixture
def acme(transactional_db: None) -> Tenant:
    tenant = make_tenant("acme")
    user = make_staff_user("acme-importer")
    tenant.memberships.create(user=user, role="admin")
    return tenant


def test_a_csv_import_shows_its_progress_to_100_percent(
    page: Page, screenshot: Shot, login: Login, acme: Tenant, celery_worker: subprocess.Popen[bytes]
) -> None:
    # given 300 devices in a CSV, two of its rows bad
    lines = ["device_id,group,label:site"] + [f"bulk-{i:04d},sensors,berlin" for i in range(300)]
    lines[42] = "bulk-0040,sensors,berlin"  # row 41 names the device of row 40 again
    lines[250] = "bulk-0249,nowhere,berlin"  # row 249: no such group
    # when a tenant admin imports it from the device list
    login("acme-importer")
    page.goto("/admin/devices/device/")
    page.click("text=Import devices (CSV)")
    page.fill("#id_csv_text", "\n".join(lines) + "\n")
    screenshot("form")
    page.click("input[name=import]")
    # then the page shows a bar that the job moves to 100 %, then the outcome
    expect(page.locator("#job-progress")).to_be_visible()
    screenshot("started")
    expect(page.locator("#job-percent")).to_have_text("100 %", timeout=60_000)
    expect(page.locator("#job-status")).to_have_text("partial")
    expect(page.locator("#job-outcome")).to_have_text("Imported 298 of 300 devices; 2 row(s) refused.")
    expect(page.locator("#job-errors li")).to_have_count(2)
    expect(page.locator("#job-errors")).to_contain_text("Row 249 (/rows/249/group)")
    assert page.eval_on_selector("#job-progress", "bar => [bar.value, bar.max]") == [300, 300]
    screenshot("done")
    job = Job.objects.get(tenant=acme)
    assert (job.status, job.done, job.failed, job.result) == ("partial", 300, 2, {"created": 298})
    assert Device.objects.filter(tenant=acme, device_id__startswith="bulk-").count() == 298
    assert Device.objects.get(tenant=acme, device_id="bulk-0000").labels == {"site": "berlin"}
    assert celery_worker.poll() is None  # the worker did it, and is still up
