"""The operator's guided onboarding (/onboarding/), in a real browser: Debian's Chromium
driven by Playwright against pytest-django's ``live_server``.  The browser and page fixtures
come from tests/browser/conftest.py; screenshots of each step are saved under
``test-artifacts/screenshots/onboarding/``."""

from __future__ import annotations

import os

# Playwright's sync API keeps an asyncio loop in this thread, and Django refuses ORM calls
# from a thread with a running loop; the assertions here query the test database.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import RegisteredSchema, Schema
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import Page, expect

from certs.models import Certificate
from certs.platform_pki import PlatformPki, ensure_platform_pki
from config.env import Runtime
from config.onboarding_forms import AVRO_EXAMPLE
from devices.models import Device, DeviceGroup, Stream
from devices.registry import AVRO, latest_schema_forget
from tenants.audit import Actor
from tenants.models import SLUG_RULE, AuditEvent, Membership, Tenant
from tenants.services import tenant_create
from tests.browser.conftest import PASSWORD, make_staff_user
from tests.conftest import make_tenant, make_user, unique_slug
from tests.integration.test_onboarding_first_post import CURLRC, PASSPHRASE, _onboard
from tests.integration.test_topic_provisioning import eager_tasks  # noqa: F401 - fixture

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots" / "onboarding"
READING = {
    "type": "record",
    "name": "Reading",
    "namespace": "com.initech.telemetry",
    "fields": [{"name": "device_id", "type": "string"}, {"name": "celsius", "type": "double"}],
}

Shot = Callable[[str], Path]
DOWNLOADS = ("root-ca", "chain", "key", "pkcs12")


@pytest.fixture(autouse=True)
def plain_http(settings: Any) -> None:
    """The live server speaks plain HTTP; production settings only send cookies over HTTPS."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


@pytest.fixture(autouse=True)
def platform_pki(settings: Any) -> None:
    """The platform root CA the credentials page offers (the launcher makes it at first start)."""
    ensure_platform_pki(settings.SLUICE_RUNTIME)


@pytest.fixture
def no_kafka_provisioning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """tenant_create and stream_create queue Kafka provisioning with ``transaction.on_commit``,
    and the live server commits for real.  Run Celery tasks in-process (no Redis) and make the
    Kafka calls no-ops: real provisioning is covered by tests/integration/test_topic_provisioning.py."""
    from config.celery import app

    monkeypatch.setattr("ingest.topic_sync.stream_provision", lambda *, stream: [])
    monkeypatch.setattr("ingest.topic_sync.tenant_dlq_provision", lambda *, tenant: [])
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


class RecordingRegistry:
    """Answers ``register_schema`` like the registry does for a first version, and
    ``get_latest_version`` with what was registered (the credentials page reads it)."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str, Any]] = []

    def register_schema(self, subject: str, schema: Schema) -> int:
        self.registered.append((subject, schema.schema_type, json.loads(schema.schema_str)))
        return 41

    def get_latest_version(self, subject: str) -> RegisteredSchema:
        found = [(i, kind, schema) for i, (name, kind, schema) in enumerate(self.registered, 1) if name == subject]
        if not found:
            raise SchemaRegistryError(404, 40401, f"Subject '{subject}' not found.")
        version, kind, schema = found[-1]
        return RegisteredSchema(subject=subject, version=version, schema_id=41, guid=None,
                                schema=Schema(json.dumps(schema), kind))  # fmt: skip

    def lookup_schema(self, subject: str, schema: Schema) -> RegisteredSchema:
        raise SchemaRegistryError(404, 40403, "Schema not found.")  # every schema here is registered once


@pytest.fixture
def schema_registry(monkeypatch: pytest.MonkeyPatch) -> RecordingRegistry:
    """Only the registry's network call is replaced: this test is about the flow and runs
    without the platform's services, while devices.registry still checks the schema text for
    real (the malformed schema below is refused by it).  Registration against the real
    registry is tested in tests/ingest/test_registry.py."""
    recording = RecordingRegistry()
    monkeypatch.setattr("devices.registry.registry_client", lambda: recording)
    # The latest-schema cache is per process and keyed by subject, which tests here reuse.
    latest_schema_forget()
    return recording


@pytest.fixture
def shot(page: Page) -> Shot:
    """``shot("step")`` saves ``<NN>-step.png`` in the onboarding folder, numbered in order."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    counter = iter(range(1, 100))

    def take(step: str) -> Path:
        path = SCREENSHOTS / f"{next(counter):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def test_operator_onboards_a_tenant_from_tenant_to_first_device(
    page: Page, shot: Shot, transactional_db: None, no_kafka_provisioning: None, schema_registry: RecordingRegistry
) -> None:
    # given an operator who signs in through the console's login form, asking for onboarding
    make_staff_user("operator", operator=True)
    page.goto("/admin/login/?next=/onboarding/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(re.compile(r"/onboarding/$"))
    expect(page.locator("#progress")).to_have_text("Step 1 of 6")

    # when they name the tenant with a slug Kafka topic names cannot carry
    page.fill("#id_slug", "Bad Slug!")
    page.fill("#id_name", "Initech")
    page.fill("#id_max_devices", "5000")
    shot("tenant")
    page.click("main button[type=submit]")

    # then the form comes back with the model's slug rule on the slug field, and nothing was created
    expect(page.locator(".field-slug .errors")).to_have_text(f"Must be {SLUG_RULE}.")
    expect(page.locator("#id_name")).to_have_value("Initech")
    shot("tenant-error")
    assert not Tenant.objects.exists()

    # when they correct it
    page.fill("#id_slug", "initech")
    page.click("main button[type=submit]")

    # then step 2 asks for the tenant's first administrator
    expect(page).to_have_url(re.compile(r"/onboarding/initech/admin/$"))
    expect(page.locator("#progress")).to_have_text("Step 2 of 6 · initech")
    expect(page.locator(".messages")).to_contain_text("Tenant initech created")
    page.fill("#id_username", "initech-admin")
    page.fill("#id_email", "ops@initech.example")
    shot("admin")
    page.click("main button[type=submit]")

    # then the generated password is shown once, with a notice to copy it, and only in this response
    expect(page.locator("#password-notice")).to_contain_text("Copy this password now.")
    password = page.locator("#admin-password").inner_text().strip()
    admin = get_user_model().objects.get(username="initech-admin")
    assert admin.check_password(password)
    assert password not in page.url
    shot("admin-password")
    page.click("text=I have copied it")
    expect(page).to_have_url(re.compile(r"/onboarding/initech/stream/$"))
    assert password not in page.content()

    # when they describe the stream with a schema that names an unknown Avro type
    expect(page.locator("#progress")).to_have_text("Step 3 of 6 · initech")
    page.fill("#id_region", "eu")
    page.fill("#id_type", "temperature")
    page.fill("#id_partitions", "3")
    page.select_option("#id_schema_type", "AVRO")
    broken = {**READING, "fields": [{"name": "celsius", "type": "dubble"}]}
    page.fill("#id_schema", json.dumps(broken, indent=2))
    shot("stream")
    page.click("main button[type=submit]")

    # then the schema field says so, and neither the stream nor the registry saw anything
    expect(page.locator(".field-schema .errors")).to_contain_text("unknown type 'com.initech.telemetry.dubble'")
    assert not Stream.objects.exists()
    assert schema_registry.registered == []
    shot("stream-error")

    # when they fix the schema
    page.fill("#id_schema", json.dumps(READING, indent=2))
    page.click("main button[type=submit]")

    # then the stream exists and its schema was registered under <topic>-value
    expect(page.locator("#progress")).to_have_text("Step 4 of 6 · initech")
    expect(page.locator(".messages")).to_contain_text("iot.initech.eu.temperature-value")
    assert schema_registry.registered == [("iot.initech.eu.temperature-value", "AVRO", READING)]

    # and the group form is prefilled from the stream
    expect(page.locator("#id_region")).to_have_value("eu")
    expect(page.locator("#id_device_type")).to_have_value("temperature")
    expect(page.locator("#id_schema_subject")).to_have_value("iot.initech.eu.temperature-value")
    expect(page.locator("#id_stream option:checked")).to_have_text("iot.initech.eu.temperature")
    page.fill("#id_slug", "sensors")
    page.fill("#id_name", "Temperature sensors")
    page.select_option("#id_credential_policy", "mtls")
    shot("group")
    page.click("main button[type=submit]")

    # when they register the first device with two labels
    expect(page.locator("#progress")).to_have_text("Step 5 of 6 · initech")
    expect(page.locator(".messages")).to_contain_text("Device group sensors created")
    page.fill("#id_device_id", "thermo-1")
    page.fill("#id_labels", "site=berlin-1\nfloor=3")
    shot("device")
    page.click("main button[type=submit]")

    # then the summary lists what was created
    expect(page.locator("#progress")).to_have_text("Step 6 of 6 · initech")
    expect(page.locator("#summary-tenant")).to_contain_text("Initech (initech)")
    expect(page.locator("#summary-admin")).to_have_text("initech-admin")
    expect(page.locator("#summary-topic")).to_contain_text("iot.initech.eu.temperature")
    expect(page.locator("#summary-subject")).to_have_text("iot.initech.eu.temperature-value")
    expect(page.locator("#summary-principal")).to_have_text("User:initech.sensors")
    expect(page.locator("#summary-device")).to_contain_text("thermo-1")
    expect(page.locator("#next")).to_contain_text("Issue thermo-1 a client certificate")
    shot("summary")

    # when they issue the device's credentials, first with a passphrase too short
    page.fill("#id_passphrase", "short")
    page.click("#issue-certificate")
    expect(page.locator(".field-passphrase .errors")).to_contain_text("at least 8 characters")
    page.fill("#id_passphrase", "a long passphrase")
    page.click("#issue-certificate")

    # then the chain and the key are shown once, with a runnable renewal and a runnable first POST:
    # a sample record of the registered schema written to reading.json, then the curl that sends it
    expect(page.locator("#chain-pem")).to_contain_text("BEGIN CERTIFICATE")
    expect(page.locator("#key-pem")).to_contain_text("BEGIN PRIVATE KEY")
    expect(page.locator("pre#curl-renew")).to_contain_text("/.well-known/est/initech/simplereenroll")
    sample = {"device_id": "example", "celsius": 0.0}
    expect(page.locator("pre#reading-json")).to_have_text(
        f"cat > reading.json <<'EOF'\n{json.dumps(sample, indent=2)}\nEOF"
    )
    expect(page.locator("#reading-json-unavailable")).to_have_count(0)
    curl = page.locator("pre#curl-ingest")
    expect(curl).to_contain_text("curl --cacert root-ca.crt --cert thermo-1.crt --key thermo-1.key")
    expect(curl).to_contain_text("--data-binary @reading.json")
    expect(curl).to_contain_text("/ingest/v1/records")
    expect(page.locator("#next")).to_contain_text("iot.initech.eu.temperature-value")
    expect(page.locator("#next")).not_to_contain_text("Shape only")
    shot("credentials")
    issued = Certificate.objects.get(device_ref="thermo-1")
    assert issued.status == "active"
    assert "PRIVATE KEY" not in issued.certificate_pem

    # and the database holds each object, created by the operator and audited
    tenant = Tenant.objects.get(slug="initech")
    assert (tenant.name, tenant.max_devices) == ("Initech", 5000)
    assert Membership.objects.get(tenant=tenant, user=admin).role == Membership.Role.ADMIN
    stream = Stream.objects.get(tenant=tenant)
    assert (stream.topic, stream.partitions) == ("iot.initech.eu.temperature", 3)
    group = DeviceGroup.objects.get(tenant=tenant)
    assert (group.slug, group.stream, group.schema_subject) == ("sensors", stream, "iot.initech.eu.temperature-value")
    device = Device.objects.get(tenant=tenant)
    assert (device.device_id, device.group, device.labels) == ("thermo-1", group, {"site": "berlin-1", "floor": "3"})
    events = AuditEvent.objects.filter(tenant_slug="initech", actor_label="operator")
    actions = set(events.values_list("action", flat=True))
    assert {"tenant.create", "user.create", "stream.create", "group.create", "device.create"} <= actions
    assert "schema.register" in actions
    assert all(password not in json.dumps(event.after) for event in events)


def test_a_tenant_admin_is_refused_onboarding_on_the_consoles_page(
    page: Page, transactional_db: None, screenshot: Callable[[str], Path]
) -> None:
    # given a tenant admin, signed in to the console
    tenant = make_tenant("acme")
    user = make_staff_user("acme-admin")
    Membership.objects.create(user=user, tenant=tenant, role=Membership.Role.ADMIN)
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "acme-admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("acme-admin")

    # when they open the onboarding flow, or a step of it for their own tenant
    for path in ("/onboarding/", "/onboarding/acme/stream/"):
        response = page.goto(path)

        # then the console's own page refuses it (403), says why, and leads back
        assert response is not None
        assert response.status == 403, path
        expect(page.locator("h1")).to_have_text("Not allowed")
        expect(page.locator(".errornote")).to_contain_text("Onboarding is for platform operators.")
        expect(page.locator("#user-tools")).to_contain_text("acme-admin")
    screenshot("onboarding-refused")
    page.get_by_role("link", name="Back to the console").click()
    expect(page).to_have_url(re.compile(r"/admin/$"))
    assert not Stream.objects.filter(tenant=tenant).exclude(type="temperature").exists()


def test_signed_out_visitors_are_sent_to_the_login_page(client: Client, db: None) -> None:
    response = client.get("/onboarding/acme/stream/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/onboarding/acme/stream/"


class RefusingRegistry:
    """Answers ``register_schema`` like the registry does for an incompatible new version."""

    def get_latest_version(self, subject: str) -> RegisteredSchema:
        raise SchemaRegistryError(404, 40401, f"Subject '{subject}' not found.")

    def lookup_schema(self, subject: str, schema: Schema) -> RegisteredSchema:
        raise SchemaRegistryError(404, 40401, f"Subject '{subject}' not found.")

    def register_schema(self, subject: str, schema: Schema) -> int:
        raise SchemaRegistryError(409, 409, "Incompatible schema: field 'unit' has no default")


def test_a_registry_refusal_is_shown_on_the_schema_field_and_creates_no_stream(
    client: Client, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an operator on step 3, and a registry that refuses the schema (the mapping of the
    # real registry's 409 is tested in tests/ingest/test_registry.py)
    tenant = make_tenant("acme")
    client.force_login(make_staff_user("operator", operator=True))
    monkeypatch.setattr("devices.registry.registry_client", RefusingRegistry)

    # when the stream and schema are submitted
    response = client.post(
        "/onboarding/acme/stream/",
        {"region": "eu", "type": "vibration", "retention_class": "raw", "partitions": "3", "schema_type": "AVRO",
         "schema": json.dumps(READING)},
    )  # fmt: skip

    # then the same form comes back with the registry's reason on the schema field
    assert response.status_code == 200
    assert "field 'unit' has no default" in " ".join(response.context["form"].errors["schema"])
    # and the stream was rolled back with its audit row
    assert not Stream.objects.filter(tenant=tenant, type="vibration").exists()
    assert not AuditEvent.objects.filter(action="stream.create").exists()


def test_a_taken_username_is_shown_on_the_username_field(client: Client, db: None) -> None:
    make_tenant("acme")
    client.force_login(make_staff_user("operator", operator=True))
    response = client.post("/onboarding/acme/admin/", {"username": "operator", "email": ""})
    assert response.status_code == 200
    assert response.context["form"].errors["username"] == ["A user with that username already exists."]
    assert "password" not in response.context


class UnreachableRegistry:
    """Fails every read like a registry that is down (connection refused)."""

    def get_latest_version(self, subject: str) -> RegisteredSchema:
        raise httpx.ConnectError("[Errno 111] Connection refused")


def test_the_credentials_page_says_so_when_the_registry_is_unreachable(
    client: Client, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an operator at the end of the flow for a device, and a registry that is down
    tenant = tenant_create(actor=Actor.system("test"), slug="acme", name="Acme")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject=f"{stream.topic}-value")  # fmt: skip
    Device.objects.create(tenant=tenant, group=group, device_id="thermo-1")
    client.force_login(make_staff_user("operator", operator=True))
    monkeypatch.setattr("devices.registry.registry_client", UnreachableRegistry)
    latest_schema_forget()

    # when they issue the device's credentials
    response = client.post("/onboarding/acme/devices/thermo-1/credentials/", {"passphrase": "a long passphrase"})

    # then the key is still shown (its only showing), with a note instead of a sample record
    assert response.status_code == 200
    page = response.content.decode()
    assert "BEGIN PRIVATE KEY" in page
    assert 'id="reading-json"' not in page
    assert 'id="reading-json-unavailable"' in page
    assert "The schema registry is not reachable" in page
    assert 'id="curl-ingest"' in page
    assert Certificate.objects.get(device_ref="thermo-1").status == "active"


def test_the_group_step_keeps_region_and_type_in_agreement_with_the_stream(client: Client, db: None) -> None:
    # given an operator at the group step of acme's stream iot.acme.eu.temperature
    tenant = make_tenant("acme")
    stream = Stream.objects.get(tenant=tenant)
    client.force_login(make_staff_user("operator", operator=True))
    url = f"/onboarding/acme/streams/{stream.pk}/group/"
    form = {"slug": "shakers", "name": "", "stream": stream.pk, "schema_subject": f"{stream.topic}-value",
            "credential_policy": "mtls"}  # fmt: skip

    # when they name us/vibration for it
    refused = client.post(url, {**form, "region": "us", "device_type": "vibration"})

    # then each field says what it must be, and no group was created
    assert refused.status_code == 200
    errors = refused.context["form"].errors
    assert errors["region"] == ["Must be 'eu', the region of the stream iot.acme.eu.temperature (or left empty)."]
    assert errors["device_type"] == [
        "Must be 'temperature', the type of the stream iot.acme.eu.temperature (or left empty)."
    ]
    assert not DeviceGroup.objects.filter(slug="shakers").exists()

    # when they clear both fields
    created = client.post(url, {**form, "region": "", "device_type": ""})

    # then the group is created with the stream's region and type
    assert (created.status_code, created["Location"]) == (302, "/onboarding/acme/groups/shakers/device/")
    group = DeviceGroup.objects.get(tenant=tenant, slug="shakers")
    assert (group.region, group.device_type) == ("eu", "temperature")


def test_the_credentials_url_opened_again_explains_the_key_was_shown_once(client: Client, db: None) -> None:
    # given an operator at the end of the flow for a device that has no certificate yet
    tenant = tenant_create(actor=Actor.system("test"), slug="acme", name="Acme")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject=f"{stream.topic}-value")  # fmt: skip
    Device.objects.create(tenant=tenant, group=group, device_id="thermo-1")
    client.force_login(make_staff_user("operator", operator=True))
    url = "/onboarding/acme/devices/thermo-1/credentials/"

    # when the credentials URL is opened before anything was issued
    early = client.get(url)

    # then it leads to the summary, where the certificate is issued
    assert (early.status_code, early["Location"]) == (302, "/onboarding/acme/devices/thermo-1/")

    # when the certificate is issued, and the same URL is then opened, and posted again
    issued = client.post(url, {"passphrase": "a long passphrase"})
    revisit = client.get(url)
    again = client.post(url, {"passphrase": "a long passphrase"})

    # then the first answer had the key; the others say it was shown once and how to get a new
    # one, carry no key, are never cached, and issued nothing more
    assert issued.status_code == 200
    assert "BEGIN PRIVATE KEY" in issued.content.decode()
    certificate = Certificate.objects.get(device_ref="thermo-1")
    for response in (revisit, again):
        page = response.content.decode()
        assert response.status_code == 410
        assert "no-store" in response["Cache-Control"]
        assert "The key Sluice generated for this device was shown once" in page
        assert certificate.serial in page
        assert "How to get a new one" in page
        assert "/.well-known/est/acme/simplereenroll" in page
        assert "Revoke selected certificates" in page
        assert "PRIVATE KEY" not in page
    assert Certificate.objects.filter(device_ref="thermo-1").count() == 1

    # and the summary says the credentials were issued instead of offering them again
    summary = client.get("/onboarding/acme/devices/thermo-1/").content.decode()
    assert 'id="credentials-issued"' in summary
    assert 'id="credentials-form"' not in summary


def test_the_platform_root_ca_downloads_from_its_documented_url(client: Client, settings: Any) -> None:
    # when anyone, signed in or not, asks the web app for the root CA
    response = client.get("/pki/root-ca.crt")

    # then it is the platform root's certificate, as a PEM attachment
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pem-certificate-chain"
    assert response["Content-Disposition"] == 'attachment; filename="root-ca.crt"'
    assert response.content == PlatformPki(settings.SLUICE_RUNTIME.pki_dir).root_cert.read_bytes()


def _save_download(page: Page, selector: str, directory: Path) -> Path:
    """Click a download on the page and save the file under the name the page gives it."""
    with page.expect_download() as started:
        page.click(selector)
    download = started.value
    target = directory / download.suggested_filename
    download.save_as(target)
    return target


def _run(script: str, directory: Path) -> str:
    """Run the page's shell text with bash in ``directory``; every curl reports its HTTP status
    through ``$CURL_HOME/.curlrc`` (the commands themselves stay exactly as shown).  Its
    standard output."""
    (directory / ".curlrc").write_text(CURLRC)
    result = subprocess.run(
        ["bash", "-c", script], cwd=directory, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(directory), "CURL_HOME": str(directory)},
    )  # fmt: skip
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result.stdout


def _answers(stdout: str) -> list[tuple[int, str]]:
    """The HTTP status and body of each curl in ``_run``'s output, in order."""
    return [(int(status), body) for body, status in re.findall(r"(.*?)\nHTTP (\d{3})\n", stdout, re.DOTALL)]


@pytest.mark.integration
@pytest.mark.usefixtures("eager_tasks")
def test_a_newcomer_follows_the_credentials_page_literally_and_gets_a_200_from_ingest(
    page: Page, screenshot: Shot, transactional_db: None, services: Runtime, tmp_path: Path
) -> None:
    # given a tenant onboarded up to its first device against the real registry and Kafka,
    # and its operator signed in on the device's summary page
    operator = Client()
    operator.force_login(make_user(unique_slug("operator"), operator=True))
    slug, topic, device_id = _onboard(operator, schema_type=AVRO, schema=AVRO_EXAMPLE)
    make_staff_user("newcomer", operator=True)
    page.goto(f"/admin/login/?next=/onboarding/{slug}/devices/{device_id}/")
    page.fill("#id_username", "newcomer")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    # when they issue the credentials
    page.fill("#id_passphrase", PASSPHRASE)
    page.click("#issue-certificate")
    expect(page.locator("#key-pem")).to_contain_text("BEGIN PRIVATE KEY")
    screenshot("credentials-page")

    # and save the four files with the page's download buttons
    files = {name: _save_download(page, f"#download-{name}", tmp_path) for name in DOWNLOADS}

    # then they arrive under the names the commands use, with the page's content and types
    assert {name: path.name for name, path in files.items()} == {
        "root-ca": "root-ca.crt", "chain": f"{device_id}.crt", "key": f"{device_id}.key", "pkcs12": f"{device_id}.p12"
    }  # fmt: skip
    assert files["chain"].read_text() == page.locator("#chain-pem").inner_text()
    assert files["key"].read_text() == page.locator("#key-pem").inner_text()
    assert files["root-ca"].read_bytes() == PlatformPki(services.pki_dir).root_cert.read_bytes()
    types = {name: page.locator(f"#download-{name}").get_attribute("href").split(";", 1)[0]
             for name in ("chain", "key", "pkcs12")}  # fmt: skip
    assert types == {"chain": "data:application/pem-certificate-chain", "key": "data:application/x-pem-file",
                     "pkcs12": "data:application/x-pkcs12"}  # fmt: skip
    key, leaf, _ = pkcs12.load_key_and_certificates(files["pkcs12"].read_bytes(), PASSPHRASE.encode())
    assert key is not None
    assert leaf is not None
    assert leaf.public_bytes(Encoding.PEM).decode() in files["chain"].read_text()
    # and the PKCS#12 text decodes the way the page says to the same bundle
    (tmp_path / f"{device_id}.p12.b64").write_text(page.locator("#pkcs12").inner_text())
    decode = re.search(r"base64 -d \S+ > \S+", page.locator("#credentials").inner_text())
    assert decode is not None
    _run(decode.group(0), tmp_path)
    assert (tmp_path / f"{device_id}.p12").read_bytes() == files["pkcs12"].read_bytes()

    # when they run the page's commands as shown: fetch the root CA over plain HTTP and check
    # its fingerprint, write the sample record, and POST it
    root_ca = _run(page.locator("pre#curl-root-ca").inner_text(), tmp_path)
    script = page.locator("pre#reading-json").inner_text() + "\n" + page.locator("pre#curl-ingest").inner_text()
    first_post = _answers(_run(script, tmp_path))

    # then the fetched root CA is the one downloaded, with the fingerprint the page shows, and
    # ingest answered 200 for the record
    assert [status for status, _ in _answers(root_ca)] == [200]
    assert (tmp_path / "root-ca.crt").read_bytes() == PlatformPki(services.pki_dir).root_cert.read_bytes()
    fingerprint = page.locator("#root-fingerprint").inner_text()
    assert re.search(rf"^sha256 Fingerprint={fingerprint}$", root_ca, re.MULTILINE | re.IGNORECASE), root_ca
    ((status, body),) = first_post
    assert status == 200, body
    assert (json.loads(body)["accepted"], json.loads(body)["topic"]) == (1, topic)

    # when they renew as the page shows, and POST again with the same command
    old_chain = (tmp_path / f"{device_id}.crt").read_text()
    renewal = _answers(_run(page.locator("pre#curl-renew").inner_text(), tmp_path))
    after_renewal = _answers(_run(page.locator("pre#curl-ingest").inner_text(), tmp_path))

    # then the renewed certificate replaced the old one in the file, and it is accepted too
    assert [status for status, _ in renewal] == [200]
    assert (tmp_path / f"{device_id}.crt").read_text() != old_chain
    ((status, body),) = after_renewal
    assert status == 200, body
    statuses = dict(Certificate.objects.filter(device_ref=device_id).values_list("origin", "status"))
    assert statuses == {"generated": "superseded", "est_renewal": "active"}

    # when they open the credentials page's address again
    page.goto(f"/onboarding/{slug}/devices/{device_id}/credentials/")

    # then it says the key was shown once, and how to get a new one
    expect(page.locator("#shown-once-notice")).to_contain_text("shown once")
    expect(page.locator("#shown-once-how")).to_contain_text("Revoke selected certificates")
    screenshot("credentials-again")
