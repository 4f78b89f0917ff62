"""Browser tests of the admin console: Debian's Chromium driven by Playwright (sync API)
against pytest-django's ``live_server`` (plain HTTP, a thread of this process, on the test
database).  Each test saves a screenshot per step under
``test-artifacts/screenshots/<test-name>/<NN>-<step>.png``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

# Playwright's sync API keeps an asyncio loop in this thread, and Django refuses ORM calls
# from a thread with a running loop; fixtures and assertions here query the test database.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "correct-horse-battery-staple-42"
TIMEOUT_MS = 15_000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Remember each phase's outcome on the item, so ``page`` can screenshot failures."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; install it with: apt-get install -y chromium", pytrace=False)
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(autouse=True)
def plain_http_cookies(settings: Any) -> None:
    """The live server speaks plain HTTP; production settings only send cookies over HTTPS."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


def _screenshot_dir(item: pytest.Item) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", item.name).strip("-")
    return SCREENSHOTS / name


@pytest.fixture
def page(browser: Browser, live_server: Any, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (no cookies) per test, based at the live server's URL."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        directory = _screenshot_dir(request.node)
        directory.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(directory / "99-failure.png"), full_page=True)
    context.close()


@pytest.fixture
def screenshot(page: Page, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``screenshot("step")`` saves ``<NN>-step.png`` for this test, numbering steps in order."""
    directory = _screenshot_dir(request.node)
    if directory.exists():
        for old in directory.glob("*.png"):
            old.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 99))

    def take(step: str) -> Path:
        path = directory / f"{next(counter):02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', step)}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def login(page: Page) -> Callable[[str], None]:
    """Log in through the admin's real login form."""

    def log_in(username: str, password: str = PASSWORD) -> None:
        page.goto("/admin/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_selector("#user-tools")

    return log_in


def make_staff_user(username: str, *, operator: bool = False) -> Any:
    """A user who can log into the console: operators are superusers, tenant users are staff
    with a membership (as ``tenants.services.user_create_tenant_admin`` makes them)."""
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=True)
    if operator:
        user.is_superuser = True
        user.save(update_fields=["is_superuser"])
    return user
