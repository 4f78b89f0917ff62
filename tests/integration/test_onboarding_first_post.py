"""The onboarding flow's last page promises a first telemetry POST that works as shown.  This
drives the flow as an operator (Django's test client, the real registry and Kafka, Celery
tasks eager), then runs the page's own shell text -- the curl that fetches the root CA, the
heredoc that writes reading.json and the curl that POSTs it -- with bash against the real
nginx listeners, and reads the record back."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from certs.platform_pki import PlatformPki
from config.env import Runtime
from config.onboarding_forms import AVRO_EXAMPLE
from devices.models import Stream
from devices.registry import AVRO, JSON, latest_schema, value_subject
from ingest import records
from tests.conftest import make_user, unique_slug
from tests.integration.test_ingest import consume
from tests.integration.test_topic_provisioning import eager_tasks  # noqa: F401 - fixture

# The web process behind nginx reads the same database: rows must be committed to be seen.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

READING_JSON_SCHEMA = json.dumps(
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "ts": {"type": "string", "format": "date-time"},
            "celsius": {"type": "number", "minimum": -40, "maximum": 125},
            "unit": {"enum": ["C", "F"]},
            "site": {"type": "string"},
        },
        "required": ["ts", "celsius", "unit"],
    },
    indent=2,
)
PASSPHRASE = "a long passphrase"
# curl reads options from $CURL_HOME/.curlrc: the test learns the HTTP status without a
# single character of the displayed command changing.
CURLRC = 'silent\nshow-error\nwrite-out = "\\nHTTP %{http_code}\\n"\n'


def _pre(page: str, element_id: str) -> str:
    """The text of ``<pre id=element_id>`` as a browser shows it (and a copy gives it)."""
    found = re.search(rf'<pre[^>]*\bid="{element_id}"[^>]*>(.*?)</pre>', page, re.DOTALL)
    assert found is not None, f"no pre#{element_id} on the page"
    return html.unescape(found.group(1))


def _onboard(client: Client, *, schema_type: str, schema: str) -> tuple[str, str, str]:
    """Walk every step of /onboarding/ as the operator; the tenant slug, the stream's topic
    and the device id."""
    slug = unique_slug("t")
    response = client.post("/onboarding/", {
        "slug": slug, "name": "First post test", "max_devices": "10", "max_records_per_second": "100",
        "max_bytes_per_second": "1048576", "topic_deletion_policy": "delete",
    })  # fmt: skip
    assert (response.status_code, response.get("Location")) == (302, f"/onboarding/{slug}/admin/"), response.content
    response = client.post(f"/onboarding/{slug}/admin/", {"username": f"{slug}-admin", "email": ""})
    assert response.status_code == 200
    assert 'id="admin-password"' in response.content.decode()

    response = client.post(f"/onboarding/{slug}/stream/", {
        "region": "eu", "type": "temperature", "retention_class": "raw", "custom_retention_hours": "",
        "partitions": "1", "schema_type": schema_type, "schema": schema,
    })  # fmt: skip
    assert response.status_code == 302, response.content
    stream = Stream.objects.get(tenant__slug=slug)
    assert response["Location"] == f"/onboarding/{slug}/streams/{stream.pk}/group/"
    stream.refresh_from_db()
    assert stream.status == Stream.Status.PROVISIONED

    response = client.post(response["Location"], {
        "slug": "sensors", "name": "Sensors", "region": "eu", "device_type": "temperature", "stream": stream.pk,
        "schema_subject": value_subject(stream.topic), "credential_policy": "mtls",
    })  # fmt: skip
    assert (response.status_code, response.get("Location")) == (302, f"/onboarding/{slug}/groups/sensors/device/")
    device_id = unique_slug("thermo")
    response = client.post(response["Location"], {"device_id": device_id, "labels": ""})
    assert (response.status_code, response.get("Location")) == (302, f"/onboarding/{slug}/devices/{device_id}/")
    assert client.get(response["Location"]).status_code == 200
    return slug, stream.topic, device_id


@pytest.mark.parametrize(("schema_type", "schema"), [(AVRO, AVRO_EXAMPLE), (JSON, READING_JSON_SCHEMA)],
                         ids=["avro-form-default", "json-schema"])  # fmt: skip
@pytest.mark.usefixtures("eager_tasks")
def test_the_first_post_the_credentials_page_shows_works_as_shown(
    services: Runtime, tmp_path: Path, schema_type: str, schema: str
) -> None:
    # given an operator who onboarded a tenant up to its first device, against the real
    # registry and Kafka
    client = Client()
    client.force_login(make_user(unique_slug("operator"), operator=True))
    slug, topic, device_id = _onboard(client, schema_type=schema_type, schema=schema)

    # when they issue the device's credentials (generated key, PKCS#12 passphrase)
    response = client.post(f"/onboarding/{slug}/devices/{device_id}/credentials/", {"passphrase": PASSPHRASE})

    # then the page shows a sample record for the schema, ready to copy
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="reading-json-unavailable"' not in page
    reading = _pre(page, "reading-json")
    heredoc = re.fullmatch(r"cat > reading\.json <<'EOF'\n(.*)\nEOF", reading, re.DOTALL)
    assert heredoc is not None, reading
    sample = json.loads(heredoc.group(1))
    curl = _pre(page, "curl-ingest")

    # when the device's files are saved under the names the page uses, and the page's shell
    # text is run exactly as displayed: fetch the root CA, write the record, POST it (the
    # page names the platform's own URLs, here this test stack's nginx)
    (tmp_path / f"{device_id}.crt").write_text(_pre(page, "chain-pem"))
    (tmp_path / f"{device_id}.key").write_text(_pre(page, "key-pem"))
    (tmp_path / ".curlrc").write_text(CURLRC)
    script = f"{_pre(page, 'curl-root-ca')}\n{reading}\n{curl}\n"
    assert f"{services.web_url}/ingest/v1/records" in curl
    assert services.root_ca_url in script
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CURL_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # then nginx and ingest accepted the record, and Kafka acknowledged it
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "root-ca.crt").read_bytes() == PlatformPki(services.pki_dir).root_cert.read_bytes()
    # (each curl's body, then its status line: the root CA's, then the POST's)
    answers = re.findall(r"(.*?)\nHTTP (\d{3})\n", result.stdout, re.DOTALL)
    assert [status for _, status in answers] == ["200", "200"], result.stdout
    body = answers[-1][0].strip().splitlines()[-1]  # after the fingerprint openssl printed
    answer: dict[str, Any] = json.loads(body)
    assert (answer["accepted"], answer["topic"]) == (1, topic), answer
    assert json.loads((tmp_path / "reading.json").read_text()) == sample

    # and the topic holds exactly the sample, keyed by the device, in the wire format of the
    # subject's latest schema
    (message,) = consume(topic, services, expected=1)
    assert message.key() == device_id.encode()
    assert message.value() == records.wire_value(sample, latest_schema(value_subject(topic)))


def test_nginx_serves_the_root_ca_over_plain_http_beside_the_crls(services: Runtime) -> None:
    # when anyone fetches the root CA from the URL the credentials page and the README give
    with urllib.request.urlopen(services.root_ca_url, timeout=10) as response:  # noqa: S310 - our own http URL
        status, headers, body = response.status, response.headers, response.read()

    # then it is the platform root's certificate, as a PEM attachment, readable by nginx's workers
    assert status == 200
    assert headers["Content-Type"] == "application/pem-certificate-chain"
    assert headers["Content-Disposition"] == 'attachment; filename="root-ca.crt"'
    assert body == PlatformPki(services.pki_dir).root_cert.read_bytes()
