"""The operator's guided onboarding (/onboarding/), in a real browser: Debian's Chromium
driven by Playwright against pytest-django's ``live_server``.  The browser and page fixtures
come from tests/ui/conftest.py; screenshots of each step are saved under
``test-artifacts/screenshots/onboarding/``."""

from __future__ import annotations

import os

# Playwright's sync API keeps an asyncio loop in this thread, and Django refuses ORM calls
# from a thread with a running loop; the assertions here query the test database.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import RegisteredSchema, Schema
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import Page, expect

from certs.models import Certificate
from devices.models import Device, DeviceGroup, Stream
from ingest.registry import latest_schema_forget
from tenants.audit import Actor
from tenants.models import SLUG_RULE, AuditEvent, Membership, Tenant
from tenants.services import tenant_create
from tests.conftest import make_tenant
from tests.ui.conftest import PASSWORD, make_staff_user

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots" / "onboarding"
READING = {
    "type": "record",
    "name": "Reading",
    "namespace": "com.initech.telemetry",
    "fields": [{"name": "device_id", "type": "string"}, {"name": "celsius", "type": "double"}],
}

Shot = Callable[[str], Path]


@pytest.fixture(autouse=True)
def plain_http(settings: Any) -> None:
    """The live server speaks plain HTTP; production settings only send cookies over HTTPS."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


@pytest.fixture
def no_kafka_provisioning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """tenant_create and stream_create queue Kafka provisioning with ``transaction.on_commit``,
    and the live server commits for real.  Run Celery tasks in-process (no Redis) and make the
    Kafka calls no-ops: real provisioning is covered by tests/integration/test_topic_provisioning.py."""
    from config.celery import app

    monkeypatch.setattr("devices.services.stream_provision", lambda *, stream: [])
    monkeypatch.setattr("devices.services.tenant_dlq_provision", lambda *, tenant: [])
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
    without the platform's services, while ingest.registry still checks the schema text for
    real (the malformed schema below is refused by it).  Registration against the real
    registry is tested in tests/ingest/test_registry.py."""
    recording = RecordingRegistry()
    monkeypatch.setattr("ingest.registry.registry_client", lambda: recording)
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


def test_a_tenant_admin_gets_404_on_onboarding(page: Page, transactional_db: None) -> None:
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

        # then it does not exist for them
        assert response is not None
        assert response.status == 404, path
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
    monkeypatch.setattr("ingest.registry.registry_client", RefusingRegistry)

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
    monkeypatch.setattr("ingest.registry.registry_client", UnreachableRegistry)
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
