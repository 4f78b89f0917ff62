"""A stream's schema in the console, in a real browser against the run's real schema registry:
a tenant admin registers a first version, sees an incompatible one refused on the form with
the registry's reason, registers a compatible second one and finds both listed; a viewer sees
the versions and no form."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import Page, expect

from config.env import Runtime
from devices.models import Stream
from tenants.models import AuditEvent, Membership, Tenant
from tests.conftest import make_tenant
from tests.ui.conftest import make_staff_user

pytestmark = pytest.mark.integration

Shot = Callable[[str], Path]
Login = Callable[[str], None]

READING_WITH_SITE = {"type": "object", "properties": {"celsius": {"type": "number"}, "site": {"type": "string"}}}
READING = {"type": "object", "properties": {"celsius": {"type": "number"}}}
CLOSED = {**READING_WITH_SITE, "additionalProperties": False}
AVRO = {"type": "record", "name": "Humidity", "fields": [{"name": "percent", "type": "float"}]}


@pytest.fixture
def tenant(runtime: object, transactional_db: None) -> Tenant:
    # A slug of its own per test: registry subjects outlive the test's database.
    return make_tenant(f"ui-{secrets.token_hex(4)}")


def submit_version(page: Page, schema_type: str, schema: dict) -> None:
    page.select_option("#id_schema_type", schema_type)
    page.fill("#id_schema", json.dumps(schema, indent=2))
    page.click("input[name=_continue]")


def test_tenant_admin_registers_and_evolves_a_streams_schema(
    page: Page, screenshot: Shot, login: Login, tenant: Tenant
) -> None:
    # given the tenant's admin on the stream's page, which has no schema yet
    stream = Stream.objects.get(tenant=tenant)
    user = make_staff_user(f"{tenant.slug}-admin")
    Membership.objects.create(user=user, tenant=tenant, role=Membership.Role.ADMIN)
    login(user.username)
    page.goto(f"/admin/devices/stream/{stream.pk}/change/")
    expect(page.locator(".field-schema_current")).to_contain_text("None yet")
    expect(page.locator("#schema-versions")).to_have_count(0)
    screenshot("no-schema-yet")

    # when they register a first version (JSON Schema)
    submit_version(page, "JSON", READING_WITH_SITE)

    # then it is version 1, shown as the current schema and in the versions
    expect(page.locator("ul.messagelist")).to_contain_text(f"Schema version 1 registered under {stream.topic}-value")
    expect(page.locator("#schema-current")).to_contain_text("Version 1")
    expect(page.locator("#schema-current pre")).to_contain_text('"site"')
    expect(page.locator("#schema-versions tr.schema-version")).to_have_count(1)
    screenshot("first-version")

    # when they submit a version that closes the object (the registry's BACKWARD rule refuses it)
    submit_version(page, "JSON", CLOSED)

    # then the form comes back with the registry's reason on the schema field, and nothing changed
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-schema .errorlist")).to_contain_text(
        "Incompatible with the latest version: Additional properties are no longer allowed"
    )
    expect(page.locator("#id_schema")).to_have_value(json.dumps(CLOSED, indent=2))
    expect(page.locator("#schema-versions tr.schema-version")).to_have_count(1)
    screenshot("incompatible-refused")

    # when they submit a compatible one (dropping a property of an open object)
    submit_version(page, "JSON", READING)

    # then it is version 2, the current one, and both versions are listed, newest first, with who
    expect(page.locator("ul.messagelist")).to_contain_text("Schema version 2 registered")
    expect(page.locator("#schema-current")).to_contain_text("Version 2")
    rows = page.locator("#schema-versions tr.schema-version")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("2")
    expect(rows.nth(1).locator("td").nth(0)).to_have_text("1")
    expect(rows.nth(0)).to_contain_text(user.username)
    screenshot("second-version-listed")

    # and each registration is in the audit log, the refused one is not
    events = AuditEvent.objects.filter(tenant=tenant, action="schema.register").order_by("created_at")
    assert [(e.actor_label, e.after["version"], e.after["stream"]) for e in events] == [
        (user.username, 1, stream.pk),
        (user.username, 2, stream.pk),
    ]


def test_tenant_viewer_sees_the_versions_but_no_form(
    page: Page, screenshot: Shot, login: Login, tenant: Tenant
) -> None:
    # given a stream with a schema, registered through the service
    from devices.services import stream_schema_register
    from tenants.audit import Actor

    stream = Stream.objects.get(tenant=tenant)
    stream_schema_register(actor=Actor.system("test"), stream=stream, schema_type="JSON",
                           schema=json.dumps(READING))  # fmt: skip
    user = make_staff_user(f"{tenant.slug}-viewer")
    Membership.objects.create(user=user, tenant=tenant, role=Membership.Role.VIEWER)

    # when the tenant's viewer opens the stream
    login(user.username)
    page.goto(f"/admin/devices/stream/{stream.pk}/change/")

    # then they see the current schema and its versions, and nothing to submit
    expect(page.locator("#schema-current")).to_contain_text("Version 1")
    expect(page.locator("#schema-versions tr.schema-version")).to_have_count(1)
    expect(page.locator("#schema-versions")).to_contain_text("system:test")
    expect(page.locator("#id_schema")).to_have_count(0)
    expect(page.locator("input[name=_save]")).to_have_count(0)
    screenshot("viewer")


def add_form(tenant: Tenant, **schema: str) -> dict[str, str]:
    return {"tenant": str(tenant.pk), "region": "us", "type": "humidity", "retention_class": "raw",
            "custom_retention_hours": "", "partitions": "3", "replication_factor": "1", "compression": "zstd",
            "cleanup_policy": "delete", **schema}  # fmt: skip


@pytest.fixture
def no_kafka_provisioning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """stream_create queues the topic's provisioning on commit, through Celery: run tasks
    in-process and make the Kafka call a no-op (tests/integration provisions for real)."""
    from config.celery import app

    monkeypatch.setattr("ingest.topic_sync.stream_provision", lambda *, stream: [])
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_a_stream_added_in_the_console_may_bring_its_first_schema_version(
    client: Client, tenant: Tenant, no_kafka_provisioning: None
) -> None:
    # given the tenant's admin on the add form
    user = make_staff_user(f"{tenant.slug}-admin")
    Membership.objects.create(user=user, tenant=tenant, role=Membership.Role.ADMIN)
    client.force_login(user)

    # when a malformed Avro schema comes with the stream, then the form says so and no stream is made
    refused = client.post("/admin/devices/stream/add/", add_form(tenant, schema_type="AVRO", schema='{"type": "recor'))
    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors["schema"][0].startswith("Not valid JSON")
    assert not Stream.objects.filter(tenant=tenant, type="humidity").exists()

    # when a valid one comes with it, then the stream exists and its schema is version 1, audited
    created = client.post("/admin/devices/stream/add/", add_form(tenant, schema_type="AVRO", schema=json.dumps(AVRO)))
    assert created.status_code == 302, created.context and created.context["adminform"].form.errors
    stream = Stream.objects.get(tenant=tenant, type="humidity")
    event = AuditEvent.objects.get(tenant=tenant, action="schema.register")
    assert (event.after["stream"], event.after["version"], event.after["schema_type"]) == (stream.pk, 1, "AVRO")


def test_the_streams_page_says_so_when_the_registry_is_unreachable(
    client: Client, tenant: Tenant, settings: Any, runtime: Runtime, tmp_path: Path
) -> None:
    # given the registry's socket looked for where nothing listens
    settings.SLUICE_RUNTIME = replace(runtime, state_dir=tmp_path)
    user = make_staff_user(f"{tenant.slug}-admin")
    Membership.objects.create(user=user, tenant=tenant, role=Membership.Role.ADMIN)
    client.force_login(user)
    # when the admin opens the stream, then the page is served, with the reason instead of the schema
    page = client.get(f"/admin/devices/stream/{Stream.objects.get(tenant=tenant).pk}/change/")
    assert page.status_code == 200
    assert "The schema registry is not reachable" in page.content.decode()
