"""A tenant admin creates a consumer through the console, in a real browser (Chromium driven
by Playwright against ``live_server``): the add form offers the tenant's own streams, and the
consumer's page shows its Kafka principal prefix, consumer-group prefix and topics, and
where its credentials come from.  Screenshots under
``test-artifacts/screenshots/<test-name>/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from devices.models import Consumer, Stream
from tenants.models import AuditEvent, Membership
from tests.browser.conftest import make_staff_user
from tests.conftest import make_tenant

Shot = Callable[[str], Path]
Login = Callable[[str], None]


def test_a_tenant_admin_creates_a_consumer_in_the_console(
    page: Page, screenshot: Shot, login: Login, transactional_db: None
) -> None:
    # given acme with two streams, globex with one, and acme's tenant admin signed in
    acme, globex = make_tenant("acme"), make_tenant("globex")
    vibration = Stream.objects.create(tenant=acme, region="eu", type="vibration", partitions=1)
    admin = make_staff_user("acme-admin")
    Membership.objects.create(user=admin, tenant=acme, role=Membership.Role.ADMIN)
    login("acme-admin")

    # when they open Consumers and add one
    page.click("a[href='/admin/devices/consumer/']")
    expect(page.locator("#content h1")).to_contain_text("consumer")
    page.click("a[href='/admin/devices/consumer/add/']")

    # then the form offers acme's streams only, and reads every stream by default
    streams = page.locator(".field-streams input[type=checkbox]")
    expect(streams).to_have_count(2)
    expect(page.locator(".field-streams")).to_contain_text("iot.acme.eu.vibration")
    expect(page.locator(".field-streams")).not_to_contain_text("globex")
    expect(page.locator("#id_all_streams")).to_be_checked()
    screenshot("add-form")

    # when they name it, narrow it to the vibration stream and add the dead letters
    page.select_option("#id_tenant", str(acme.pk))
    page.fill("#id_slug", "analytics")
    page.fill("#id_name", "Analytics backend")
    page.uncheck("#id_all_streams")
    page.check(f".field-streams input[value='{vibration.pk}']")
    page.check("#id_dead_letters")
    page.click("input[name=_continue]")

    # then its page shows it on Kafka: principal prefix, group prefix and the topics it reads
    expect(page.locator("ul.messagelist")).to_contain_text("was added successfully")
    expect(page.locator("#principal-prefix")).to_have_text("User:acme.consumers.analytics.")
    expect(page.locator("#group-prefix")).to_have_text("acme.analytics.")
    expect(page.locator("#consumer-topics li")).to_have_text(["iot.acme.eu.vibration", "iot.acme.dlq"])
    # and where its credentials come from
    expect(page.locator("#no-credentials")).to_be_visible()
    expect(page.locator("#issue-certificate")).to_be_visible()
    expect(page.locator("#add-oauth-client")).to_be_visible()
    screenshot("consumer-page")

    # and the list says what it reads, with no usable credential yet
    page.goto("/admin/devices/consumer/")
    row = page.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".field-reads")).to_have_text("iot.acme.eu.vibration + dead letters")
    expect(row.locator(".field-credential_count")).to_have_text("0")
    screenshot("consumer-list")

    # and the service made it, audited as the tenant admin
    consumer = Consumer.objects.get(tenant=acme, slug="analytics")
    assert (consumer.name, consumer.all_streams, consumer.dead_letters) == ("Analytics backend", False, True)
    assert list(consumer.streams.all()) == [vibration]
    assert AuditEvent.objects.filter(action="consumer.create", actor_label="acme-admin").exists()
    assert not Consumer.objects.filter(tenant=globex).exists()
