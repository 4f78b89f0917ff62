"""Every error under /api/ is the API's JSON error, through the real nginx and web workers:
paths no URL names (also outside /api/v1/), methods a page lacks, the API's index; never
Django's or nginx's bare HTML page."""

from __future__ import annotations

import json
import subprocess

import pytest

from certs.platform_pki import PlatformPki
from config.env import Runtime
from tenants.hashing import hash_token
from tenants.models import ApiToken
from tests.conftest import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
TOKEN = "slc_errors00_through-nginx-test-token"


@pytest.fixture
def operator_token(db: None) -> str:
    # committed, so that the web process behind nginx sees it
    user = make_user("nginx-errors-operator", operator=True)
    ApiToken.objects.create(user=user, name="errors", prefix="errors00", secret_hash=hash_token(TOKEN))
    return TOKEN


def curl(runtime: Runtime, method: str, path: str, token: str) -> tuple[int, dict[str, str], str]:
    """``curl -i`` through nginx, with the token when there is one."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    result = subprocess.run(
        ["curl", "-s", "-i", "--http1.1", "--cacert", str(PlatformPki(runtime.pki_dir).root_cert), "-X", method,
         *auth, f"{runtime.web_url}{path}"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    head, _, body = result.stdout.partition("\n\n")
    lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("path", ["/api/", "/api/v2/tenants/", "/api/nothing", "/api/v1/nothing/here/"])
@pytest.mark.parametrize("signed_in", [True, False])
def test_an_unknown_path_under_api_is_a_json_404(
    services: Runtime,
    operator_token: str,
    path: str,
    signed_in: bool,
) -> None:
    # when a path under /api/ that names nothing is asked for, with or without a token
    status, headers, body = curl(services, "GET", path, operator_token if signed_in else "")
    # then the answer is the API's JSON error with the stable code, whoever asks
    if not signed_in and path.startswith("/api/v1/"):
        # (/api/v1/ authenticates first: an anonymous caller learns nothing about its paths)
        assert status == 401, body
        assert json.loads(body)["error"]["code"] == "not_authenticated"
        return
    assert status == 404, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "not_found"
    assert path in error["message"]


def test_the_api_root_lists_its_collections(services: Runtime, operator_token: str) -> None:
    # when the API's root is opened, as the banner and the README name it
    status, headers, body = curl(services, "GET", "/api/v1/", "")
    # then it says where the collections, the OpenAPI document and the docs are
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    index = json.loads(body)
    assert index["collections"]["tenants"] == "/api/v1/tenants/"
    assert index["collections"]["devices"] == "/api/v1/tenants/{tenant}/devices/"
    assert index["openapi"] == "/api/schema/"
    assert index["docs"] == "/api/docs/"
    # and each listed collection answers (with a tenant named in its template: a 404 for
    # this unknown tenant, in JSON, not a missing route)
    for template in index["collections"].values():
        status, _, body = curl(services, "GET", template.replace("{tenant}", "no-such-tenant"), operator_token)
        assert status in (200, 404), (template, body)
        if status == 404:
            assert json.loads(body)["error"]["message"] == "No tenant 'no-such-tenant'.", template


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/v1/"), ("POST", "/api/docs/"), ("DELETE", "/api/schema/")])
def test_a_method_an_api_page_lacks_is_a_json_405(
    services: Runtime,
    operator_token: str,
    method: str,
    path: str,
) -> None:
    status, headers, body = curl(services, method, path, operator_token)
    assert status == 405, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
