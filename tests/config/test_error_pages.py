"""What answers when no view does, under /api/ and in the console and onboarding: the API's
JSON error, or the console's own error page with a message and the way back; never a bare
server page.  (Through nginx: tests/contract/test_errors_through_nginx.py.)"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tenants.models import Tenant
from tests.conftest import make_user


def console_page(response: object) -> str:
    html = response.content.decode()  # type: ignore[attr-defined]
    assert response["Content-Type"].startswith("text/html")  # type: ignore[index]
    assert 'id="site-name"' in html  # the console's own header (admin/base_site.html)
    return html


def test_a_tenant_admin_is_refused_onboarding_on_the_consoles_page(tenant: Tenant) -> None:
    # given a tenant admin signed in to the console
    client = Client()
    client.force_login(make_user("acme-admin", tenant=tenant))
    for path in ("/onboarding/", "/onboarding/acme/stream/"):
        # when they open onboarding, then it is a 403 that says why, with a way back
        response = client.get(path)
        assert response.status_code == 403, path
        html = console_page(response)
        assert "<h1>Not allowed</h1>" in html
        assert "Onboarding is for platform operators." in html
        assert '<a class="button" href="/admin/">Back to the console</a>' in html


def test_onboarding_pages_that_do_not_exist_are_the_consoles_404(db: None) -> None:
    client = Client()
    client.force_login(make_user("operator", operator=True))
    # a path no URL names, and a step for a tenant that does not exist
    for path, said in (("/onboarding/no/such/page/", "There is no page at /onboarding/no/such/page/."),
                       ("/onboarding/no-such-tenant/stream/", "No tenant &#x27;no-such-tenant&#x27;.")):  # fmt: skip
        response = client.get(path)
        assert response.status_code == 404, path
        html = console_page(response)
        assert "<h1>Page not found</h1>" in html
        assert said in html, html
        assert '<a class="button" href="/onboarding/">Back to onboarding</a>' in html


def test_a_console_page_that_does_not_exist_is_the_consoles_404(db: None) -> None:
    response = Client().get("/no/such/page")
    assert response.status_code == 404
    assert "There is no page at /no/such/page." in console_page(response)


@pytest.mark.urls("tests.config.crashing_urls")
def test_a_crash_under_api_is_a_json_500_and_in_the_console_its_page(db: None) -> None:
    client = Client(raise_request_exception=False)
    # under /api/: the API's error body, with the request id to quote
    response = client.get("/api/v1/crash/", HTTP_X_REQUEST_ID="crash-request-0001")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    error = json.loads(response.content)["error"]
    assert error["code"] == "server_error"
    assert "crash-request-0001" in error["message"]
    # in the console: its own page
    response = client.get("/admin/crash/", HTTP_X_REQUEST_ID="crash-request-0002")
    assert response.status_code == 500
    html = console_page(response)
    assert "<h1>Server error</h1>" in html
    assert "crash-request-0002" in html


def test_a_malformed_request_under_api_is_a_json_400(db: None) -> None:
    # a Host header Django refuses (SuspiciousOperation: handler400)
    response = Client().get("/api/v1/tenants/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert json.loads(response.content)["error"]["code"] == "bad_request"
