"""Methods a resource does not have, through the real nginx: TRACE (which nginx refuses on its
own, before any location) gets the app's JSON 405 with the resource's exact ``Allow``, like
every other method the API's spec does not list."""

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
TOKEN = "slc_methods0_through-nginx-test-token"


@pytest.fixture
def operator_token(db: None) -> str:
    # committed, so that the web process behind nginx sees it
    user = make_user("nginx-operator", operator=True)
    ApiToken.objects.create(user=user, name="methods", prefix="methods0", secret_hash=hash_token(TOKEN))
    return TOKEN


def curl(runtime: Runtime, method: str, path: str, token: str) -> tuple[int, dict[str, str], str]:
    result = subprocess.run(
        ["curl", "-s", "-i", "--http1.1", "--cacert", str(PlatformPki(runtime.pki_dir).root_cert), "-X", method,
         "-H", f"Authorization: Bearer {token}", f"{runtime.web_url}{path}"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    # text=True reads "\r\n" as "\n"
    head, _, body = result.stdout.partition("\n\n")
    lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("TRACE", "/api/v1/tenants/", "GET, POST, HEAD, OPTIONS"),
        ("TRACE", "/api/v1/tenants/acme/streams/1/", "GET, PATCH, DELETE, HEAD, OPTIONS"),
        ("PUT", "/api/v1/tenants/", "GET, POST, HEAD, OPTIONS"),
    ],
)
def test_a_method_a_resource_lacks_is_a_json_405_with_allow(
    services: Runtime, operator_token: str, method: str, path: str, allow: str
) -> None:
    # when an operator sends a method the resource does not have, through nginx
    status, headers, body = curl(services, method, path, operator_token)
    # then it is the API's 405: JSON, with the stable code and the resource's methods in Allow
    assert status == 405, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    assert headers["allow"] == allow
