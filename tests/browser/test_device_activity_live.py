"""End to end on the real stack: a device sends through nginx to the ingest workers, which
flush what they saw to the real Redis; the console (in Chromium) shows when the device was
last seen and why its requests were refused -- a bad record (after authentication) and a
revoked certificate (refused at authentication)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from certs.services import certificate_revoke
from config.env import Runtime
from ingest import metrics
from tenants.audit import Actor
from tenants.models import Membership
from tests.browser.conftest import make_staff_user
from tests.integration.test_ingest import Sender, make_sender  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration]

Shot = Callable[[str], Path]
# Workers flush every metrics.FLUSH_SECONDS; allow for a busy machine.
WAIT_SECONDS = 15 * metrics.FLUSH_SECONDS


def _post_until(sender: Sender, body: Any, status: int) -> dict[str, Any]:
    """POST until the answer has ``status`` (a revocation reaches every worker within
    milliseconds, but not before the POST that races it)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        got, answer, _headers = sender.post(body)
        if got == status or time.monotonic() > deadline:
            assert got == status, answer
            return answer
        time.sleep(0.1)


def _reload_until(page: Page, selector: str, text: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while text not in page.locator(selector).inner_text() and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    expect(page.locator(selector)).to_contain_text(text)


def test_console_shows_last_seen_and_refusals_of_a_device_that_sent_through_nginx(
    services: Runtime, make_sender: Callable[..., Sender], page: Page, login: Callable[[str], None],  # noqa: F811
    screenshot: Shot, transactional_db: None,
) -> None:  # fmt: skip
    # given a provisioned device with a certificate, and its tenant's admin in the console
    sender = make_sender()
    device, tenant = sender.device, sender.device.tenant
    admin = make_staff_user("tenant-admin")
    Membership.objects.create(user=admin, tenant=tenant, role=Membership.Role.ADMIN)
    login("tenant-admin")
    page.goto(f"/admin/devices/device/{device.pk}/change/")
    expect(page.locator("#last-seen")).to_have_text("never")
    expect(page.locator("#recent-refusals")).to_have_text("none")
    screenshot("before")

    # when the device sends a good record and a bad one through nginx
    before = timezone.now().replace(microsecond=0)
    status, answer, _ = sender.post({"celsius": 21.5})
    assert status == 200, answer
    status, answer, _ = sender.post({"celsius": "warm"})
    assert (status, answer["error"]["code"]) == (422, "schema_validation_failed")

    # then, within a flush, its page shows when it was last seen and the refusal's code
    _reload_until(page, "#recent-refusals", "schema_validation_failed")
    _reload_until(page, "#last-seen", "UTC")
    seen = page.locator("#last-seen").inner_text().split(" UTC")[0]
    assert seen >= f"{before:%Y-%m-%d %H:%M:%S}"
    screenshot("seen-and-refused")

    # when its certificate is revoked and it tries again
    certificate_revoke(actor=Actor.system("test"), certificate=sender.issued.certificate, reason="key_compromise")
    answer = _post_until(sender, {"celsius": 22.0}, 403)
    assert answer["error"]["code"] == "certificate_revoked"

    # then that refusal, made before ingest knew whose request it was writing, is on the page too
    _reload_until(page, "#recent-refusals", "certificate_revoked")
    codes = page.locator("#recent-refusals tr.refusal td code").all_inner_texts()
    assert codes[0] == "certificate_revoked"
    assert "schema_validation_failed" in codes
    expect(page.locator(f"tr.certificate[data-serial='{sender.issued.certificate.serial}'] td.state")).to_have_text(
        "revoked"
    )
    screenshot("revoked-and-refused")

    # and the console's index counts this tenant's refusals of the last hour
    refused = sum(int(n) for n in page.locator("#recent-refusals tr.refusal td:nth-child(3)").all_inner_texts())
    assert refused == 2
    page.goto("/admin/")
    expect(page.locator("#overview-refusals td")).to_have_text(str(refused))
    screenshot("index")
