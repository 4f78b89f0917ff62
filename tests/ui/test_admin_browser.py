"""The admin console in a real browser: operators provision tenants through the forms, and a
tenant's users see their own tenant only -- the same scoping as the REST API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from devices.models import Device, DeviceGroup, Stream
from tenants.models import SLUG_RULE, AuditEvent, Membership, Tenant
from tests.conftest import make_tenant
from tests.ui.conftest import make_staff_user

Shot = Callable[[str], Path]
Login = Callable[[str], None]


@pytest.fixture
def no_kafka_provisioning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """tenant_create queues the tenant's DLQ topic with ``transaction.on_commit``, and the
    live server commits for real.  Run Celery tasks in-process and make the Kafka call a
    no-op: Kafka provisioning is covered by tests/integration, this test is about the UI."""
    from config.celery import app

    monkeypatch.setattr("ingest.topic_sync.tenant_dlq_provision", lambda *, tenant: [])
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def two_tenants(transactional_db: None) -> dict[str, Any]:
    """acme and globex, each with a stream, a group and a device, written with the ORM
    (test setup only: the services would queue Kafka provisioning)."""
    objects: dict[str, Any] = {}
    for slug in ("acme", "globex"):
        tenant = make_tenant(slug)
        group = DeviceGroup.objects.get(tenant=tenant)
        objects[slug] = {
            "tenant": tenant,
            "stream": Stream.objects.get(tenant=tenant),
            "group": group,
            "device": Device.objects.create(tenant=tenant, group=group, device_id=f"{slug}-thermo-1"),
        }
    return objects


def test_operator_creates_a_tenant_through_the_add_form(
    page: Page, screenshot: Shot, no_kafka_provisioning: None, transactional_db: None
) -> None:
    # given an operator at the login form
    make_staff_user("operator", operator=True)
    page.goto("/admin/")
    expect(page).to_have_url("/admin/login/?next=/admin/")
    expect(page.locator("#site-name")).to_have_text("Sluice")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "correct-horse-battery-staple-42")
    screenshot("login-form")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("operator")
    expect(page.locator("#content h1")).to_have_text("Tenants, devices and Kafka streams")
    screenshot("console-index")

    # when they add a tenant with a slug Kafka topic names cannot carry
    page.click("a[href='/admin/tenants/tenant/add/']")
    page.fill("#id_slug", "Bad Slug!")
    page.fill("#id_name", "Initech")
    page.click("input[name=_save]")

    # then the form comes back with the model's own rule, and nothing was created
    expect(page.locator(".field-slug .errorlist")).to_have_text(f"Must be {SLUG_RULE}.")
    screenshot("invalid-slug")
    assert not Tenant.objects.filter(name="Initech").exists()

    # when they correct the slug
    page.fill("#id_slug", "initech")
    page.click("input[name=_save]")

    # then the tenant is in the list, and the creation is in the audit log
    expect(page).to_have_url("/admin/tenants/tenant/")
    expect(page.locator(".messagelist")).to_contain_text("initech")
    expect(page.locator("#result_list")).to_contain_text("initech")
    screenshot("tenant-list")
    assert AuditEvent.objects.filter(action="tenant.create", tenant_slug="initech", actor_label="operator").exists()

    page.goto("/admin/tenants/auditevent/?action=tenant.create")
    expect(page.locator("#result_list")).to_contain_text("tenant.create")
    screenshot("audit-log")


def test_tenant_admin_sees_only_their_tenant(
    page: Page, screenshot: Shot, login: Login, two_tenants: dict[str, Any]
) -> None:
    # given acme's admin, logged in
    acme, globex = two_tenants["acme"], two_tenants["globex"]
    user = make_staff_user("acme-admin")
    Membership.objects.create(user=user, tenant=acme["tenant"], role=Membership.Role.ADMIN)
    login("acme-admin")
    screenshot("console-index")

    # when they list device groups and devices, they see acme's and nothing of globex
    page.goto("/admin/devices/devicegroup/")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text("acme")
    expect(page.locator("#content")).not_to_contain_text("globex")
    screenshot("device-groups")

    page.goto("/admin/devices/device/")
    expect(page.locator("#result_list")).to_contain_text("acme-thermo-1")
    expect(page.locator("#content")).not_to_contain_text("globex")
    screenshot("devices")

    page.goto("/admin/tenants/tenant/")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#content")).not_to_contain_text("globex")

    # when they open globex's objects by URL, the console says they do not exist
    for path in (
        f"/admin/devices/device/{globex['device'].pk}/change/",
        f"/admin/devices/devicegroup/{globex['group'].pk}/change/",
        f"/admin/devices/stream/{globex['stream'].pk}/change/",
        f"/admin/tenants/tenant/{globex['tenant'].pk}/change/",
    ):
        page.goto(path)
        expect(page).to_have_url("/admin/")
        expect(page.locator(".messagelist")).to_contain_text("doesn\u2019t exist. Perhaps it was deleted?")
        expect(page.locator("#content")).not_to_contain_text("globex")
    screenshot("other-tenant-not-found")

    # while their own device opens for editing
    page.goto(f"/admin/devices/device/{acme['device'].pk}/change/")
    expect(page.locator("input[name=_save]")).to_be_visible()
    expect(page.locator("#id_group option")).to_have_text(["---------", "acme/sensors"])
    screenshot("own-device")


def test_a_service_refusal_shows_on_the_form(
    page: Page, screenshot: Shot, login: Login, two_tenants: dict[str, Any]
) -> None:
    # given acme's admin on acme's stream (3 partitions)
    stream = two_tenants["acme"]["stream"]
    user = make_staff_user("acme-admin")
    Membership.objects.create(user=user, tenant=stream.tenant, role=Membership.Role.ADMIN)
    login("acme-admin")
    page.goto(f"/admin/devices/stream/{stream.pk}/change/")
    expect(page.locator(".field-kafka_topic")).to_contain_text("iot.acme.eu.temperature")
    expect(page.locator(".field-status_display")).to_contain_text("pending")

    # when they lower the partitions, which Kafka cannot do
    page.fill("#id_partitions", "1")
    page.click("input[name=_save]")

    # then stream_update's refusal is on the form, not a server error, and nothing changed
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-partitions .errorlist")).to_have_text("Must be at least the current 3.")
    expect(page.locator(".errorlist.nonfield")).to_contain_text("Kafka cannot remove partitions from a topic.")
    screenshot("partitions-refused")
    stream.refresh_from_db()
    assert stream.partitions == 3
    assert not AuditEvent.objects.filter(action="stream.update").exists()


def test_tenant_viewer_gets_view_only_pages(
    page: Page, screenshot: Shot, login: Login, two_tenants: dict[str, Any]
) -> None:
    # given acme's viewer
    acme = two_tenants["acme"]
    user = make_staff_user("acme-viewer")
    Membership.objects.create(user=user, tenant=acme["tenant"], role=Membership.Role.VIEWER)
    login("acme-viewer")

    # when they open acme's device list and a device
    page.goto("/admin/devices/device/")
    expect(page.locator("#result_list")).to_contain_text("acme-thermo-1")
    expect(page.locator("a.addlink")).to_have_count(0)
    page.goto(f"/admin/devices/device/{acme['device'].pk}/change/")

    # then it is a view page: no form inputs, no save or delete
    expect(page.locator("#content h1")).to_have_text("View device")
    expect(page.locator("input[name=_save]")).to_have_count(0)
    expect(page.locator("a.deletelink")).to_have_count(0)
    screenshot("view-only-device")


def test_tenant_admin_lists_and_revokes_their_oauth_clients(
    page: Page, screenshot: Shot, login: Login, two_tenants: dict[str, Any]
) -> None:
    # given an OAuth client for a device of acme and one of globex
    from tenants.audit import Actor
    from tenants.oauth.models import OAuthClient
    from tenants.oauth.services import oauth_client_create

    acme, globex = two_tenants["acme"], two_tenants["globex"]
    for objects in (acme, globex):
        DeviceGroup.objects.filter(pk=objects["group"].pk).update(credential_policy="both")
        objects["device"].refresh_from_db()
        objects["client"], _secret = oauth_client_create(
            actor=Actor.system("test"), tenant=objects["tenant"], kind="device", name=f"{objects['tenant'].slug}-dev",
            scopes=["ingest:write"], device=objects["device"],
        )  # fmt: skip
    user = make_staff_user("acme-admin")
    Membership.objects.create(user=user, tenant=acme["tenant"], role=Membership.Role.ADMIN)
    login("acme-admin")

    # when acme's admin opens the OAuth clients, then only acme's is listed, without any secret
    page.goto("/admin/tenants/oauthclient/")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text(acme["client"].client_id)
    expect(page.locator("#content")).not_to_contain_text(globex["client"].client_id)
    expect(page.locator("#content")).not_to_contain_text("secret_hash")
    screenshot("oauth-clients")

    # when they revoke it with the list action
    page.check("#result_list tbody input.action-select")
    page.select_option("select[name=action]", "revoke")
    page.click("button[name=index]")

    # then the console confirms, the client is revoked (and audited), globex's is untouched
    expect(page.locator(".messagelist")).to_contain_text(f"Revoked {acme['client'].client_id}.")
    screenshot("revoked")
    assert OAuthClient.objects.get(pk=acme["client"].pk).status == "revoked"
    assert OAuthClient.objects.get(pk=globex["client"].pk).status == "active"
    assert AuditEvent.objects.filter(action="oauth_client.revoke", tenant=acme["tenant"]).count() == 1
