"""``/api/docs/`` on a machine without internet: Swagger UI comes from Sluice's own static
files (drf-spectacular-sidecar, collected by the launcher and served by nginx), so in a
Chromium whose every request to a host other than this machine is cut off, the page still
renders the API's operations."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Route, expect

from config.env import Runtime
from tests.browser.conftest import SCREENSHOTS, TIMEOUT_MS

pytestmark = pytest.mark.integration
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}


def test_the_api_docs_render_with_no_network_beyond_this_machine(browser: Browser, services: Runtime) -> None:
    # given a browser that can reach this machine and nothing else (the platform's own CA is
    # not in Chromium's store; what is tested here is where the page's files come from)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    cut_off: list[str] = []

    def local_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            cut_off.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", local_only)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    loaded: list[str] = []
    page.on("requestfinished", lambda request: loaded.append(request.url))
    try:
        # when the API docs are opened through nginx, as the banner and the README name them
        response = page.goto(f"{services.web_url}/api/docs/")
        assert response is not None
        assert response.status == 200

        # then the operations render, among them the tenants collection
        tenants = page.locator(
            ".opblock", has=page.locator(".opblock-summary-path", has_text=re.compile(r"^/api/v1/tenants/$"))
        )
        expect(tenants.first).to_be_visible()
        expect(page.locator(".opblock-summary-method").first).to_be_visible()
        assert page.locator(".opblock").count() > 20
        directory = SCREENSHOTS / "test_the_api_docs_render_with_no_network_beyond_this_machine"
        directory.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(directory / "01-api-docs-offline.png"), full_page=False)

        # and nothing was asked of another host; Swagger UI's files came from /static/
        assert cut_off == []
        assets = [url for url in loaded if url.endswith((".js", ".css"))]
        assert assets
        assert all(urlsplit(url).path.startswith("/static/drf_spectacular_sidecar/") for url in assets), assets
    finally:
        context.close()
