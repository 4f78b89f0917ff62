"""The console shows what matters, in a real browser: the index's scoped counts and the link
to onboarding, a device's certificates (state, expiry, renew from a CSR, revoke with a
confirmation) and what ingest saw of it, sentence-case labels everywhere, and "unknown"
rather than an error when Redis is away.

Ingest activity is read from this run's real Redis; here it is written there by the data
plane's own flush (``ingest.metrics.flush_to_redis``), and end to end through nginx in
``test_device_activity_live.py``."""

from __future__ import annotations

import datetime as dt
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.utils import timezone
from playwright.sync_api import Page, expect

from certs.models import Certificate
from certs.services import certificate_issue_generated
from config.env import Runtime
from devices.models import Device, DeviceGroup, Stream
from ingest import metrics
from ingest.ratelimit import redis_client
from tenants.audit import Actor
from tenants.models import AuditEvent, Membership
from tenants.services import tenant_create
from tests.browser.conftest import make_staff_user
from tests.browser.test_admin_browser import no_kafka_provisioning  # noqa: F401 - fixture

Shot = Callable[[str], Path]
Login = Callable[[str], None]
ACTOR = Actor.system("test")


@pytest.fixture
def clean_ingest_activity(runtime: Runtime) -> Iterator[redis.Redis]:
    """This run's Redis without earlier tests' sightings and refusals (test databases reuse
    primary keys, so an old entry could name one of this test's devices)."""
    client = redis_client()

    def clear() -> None:
        for pattern in (f"{metrics.KEY_PREFIX}:refused:*", f"{metrics.KEY_PREFIX}:refusals:*"):
            keys = list(client.scan_iter(pattern))
            if keys:
                client.delete(*keys)
        client.delete(metrics.LAST_SEEN_KEY)

    clear()
    yield client
    clear()


def provision(slug: str, *, devices: tuple[str, ...] = ("thermo-1",), lifetime_days: int = 365) -> dict[str, Any]:
    """A tenant (with its issuing CA, through the service), a stream, a group and devices."""
    tenant = tenant_create(actor=ACTOR, slug=slug, name=slug.title())
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject="s", cert_lifetime_days=lifetime_days)  # fmt: skip
    made = [Device.objects.create(tenant=tenant, group=group, device_id=name) for name in devices]
    return {"tenant": tenant, "group": group, "devices": made}


def record_ingest(client: redis.Redis, *, seen: list[Device], refused: list[tuple[Device | None, str]]) -> None:
    """What an ingest worker's flush writes for these sightings and refusals."""
    outcomes = metrics.Outcomes()
    for device in seen:
        outcomes.accepted(1, device.pk)
    for device, code in refused:
        outcomes.refused(code)
        if device is not None:
            outcomes.refused_device(device.tenant_id, device.pk, code)
    metrics.flush_to_redis(client, outcomes.take())


def csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "thermo-1")])
    )
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def overview(page: Page) -> dict[str, str]:
    rows = page.locator("#sluice-overview tbody tr")
    return {rows.nth(i).locator("th").inner_text(): rows.nth(i).locator("td").inner_text() for i in range(rows.count())}


def test_index_counts_what_each_user_may_see(
    page: Page, screenshot: Shot, login: Login, transactional_db: None, clean_ingest_activity: redis.Redis,
    no_kafka_provisioning: None,  # noqa: F811
) -> None:  # fmt: skip
    # given acme (two devices, one certificate expiring in 10 days, one in a year) and globex
    # (one device, one certificate expiring in 20 days), and refusals in the last hour: 3 for
    # acme's devices, 1 for globex's and 2 that named no device (no client certificate)
    acme = provision("acme", devices=("thermo-1", "thermo-2"), lifetime_days=10)
    globex = provision("globex", lifetime_days=20)
    certificate_issue_generated(actor=ACTOR, device=acme["devices"][0], passphrase="long passphrase")
    DeviceGroup.objects.filter(pk=acme["group"].pk).update(cert_lifetime_days=365)
    certificate_issue_generated(actor=ACTOR, device=Device.objects.get(pk=acme["devices"][1].pk),
                                passphrase="long passphrase")  # fmt: skip
    certificate_issue_generated(actor=ACTOR, device=globex["devices"][0], passphrase="long passphrase")
    one, two = acme["devices"]
    record_ingest(clean_ingest_activity, seen=[one], refused=[
        (one, "schema_validation_failed"), (one, "schema_validation_failed"), (two, "rate_limited"),
        (globex["devices"][0], "certificate_revoked"), (None, "no_client_certificate"), (None, "invalid_token"),
    ])  # fmt: skip
    make_staff_user("operator", operator=True)
    admin = make_staff_user("acme-admin")
    Membership.objects.create(user=admin, tenant=acme["tenant"], role=Membership.Role.ADMIN)

    # when the operator opens the console
    login("operator")

    # then the index counts every tenant and links to onboarding
    assert overview(page) == {
        "Tenants": "2",
        "Devices": "3",
        "Certificates expiring within 30 days": "2",
        "Ingest refusals in the last hour": "6",
    }
    expect(page.locator("#sluice-onboarding a")).to_have_attribute("href", "/onboarding/")
    screenshot("operator-index")

    # and the expiring count links to exactly those certificates
    page.click("#overview-expiring a")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#result_list")).to_contain_text("thermo-1")
    expect(page.locator("#result_list")).not_to_contain_text("thermo-2")
    screenshot("expiring-certificates")

    # when acme's admin opens the console, then only acme counts, and there is no onboarding
    page.click("#logout-form button")
    login("acme-admin")
    assert overview(page) == {
        "Tenants": "1",
        "Devices": "2",
        "Certificates expiring within 30 days": "1",
        "Ingest refusals in the last hour": "3",
    }
    expect(page.locator("#sluice-onboarding")).to_have_count(0)
    screenshot("tenant-admin-index")


def test_device_page_shows_certificates_and_renews_and_revokes(
    page: Page, screenshot: Shot, login: Login, transactional_db: None, clean_ingest_activity: redis.Redis,
    no_kafka_provisioning: None,  # noqa: F811
) -> None:  # fmt: skip
    # given a device with four certificates, one in each state, and what ingest saw of it
    acme = provision("acme")
    device = acme["devices"][0]
    issued = [certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
              for _ in range(4)]  # fmt: skip
    now = timezone.now()
    expired, superseded, revoked, active = issued
    Certificate.objects.filter(pk=expired.pk).update(not_after=now - dt.timedelta(days=1))
    Certificate.objects.filter(pk=superseded.pk).update(status="superseded", superseded_by=active,
                                                        overlap_until=now + dt.timedelta(hours=20))  # fmt: skip
    Certificate.objects.filter(pk=revoked.pk).update(status="revoked", revoked_at=now, revocation_reason="superseded")
    record_ingest(clean_ingest_activity, seen=[device], refused=[(device, "schema_validation_failed")])
    admin = make_staff_user("acme-admin")
    Membership.objects.create(user=admin, tenant=acme["tenant"], role=Membership.Role.ADMIN)
    login("acme-admin")

    # when acme's admin opens the device
    page.goto(f"/admin/devices/device/{device.pk}/change/")

    # then its certificates are listed with their state and expiry, newest first
    rows = page.locator("#device-certificates tr.certificate")
    expect(rows).to_have_count(4)
    expect(rows.locator("td.state")).to_have_text(["active", "revoked", "superseded", "expired"])
    expect(rows.nth(0).locator("td.expiry")).to_contain_text(active.not_after.strftime("%Y-%m-%d"))
    expect(rows.nth(2).locator("td.expiry")).to_contain_text("overlap until")
    # only usable certificates can be revoked
    expect(rows.locator("a.revoke-certificate")).to_have_count(2)
    # and when ingest last saw it, and what it refused
    expect(page.locator("#last-seen")).to_contain_text(f"{timezone.now():%Y-%m-%d}")
    expect(page.locator("#recent-refusals tr.refusal")).to_have_count(1)
    expect(page.locator("#recent-refusals")).to_contain_text("schema_validation_failed")
    screenshot("device-page")

    # when they renew it by uploading the device's CSR
    page.click("#renew-certificate")
    expect(page.locator("#content h1")).to_have_text("Renew the certificate of thermo-1")
    page.click("input[name=issue]")
    expect(page.locator(".errorlist")).to_contain_text("Upload or paste a CSR")
    screenshot("renew-without-csr")
    page.set_input_files("#id_csr_file", files=[{"name": "thermo-1.csr", "mimeType": "application/pkcs10",
                                                  "buffer": csr_pem()}])  # fmt: skip
    screenshot("renew-form")
    page.click("input[name=issue]")

    # then the new chain is shown (no key: it stayed on the device), and the device has a fifth certificate
    expect(page.locator("pre.sluice-pem")).to_contain_text("BEGIN CERTIFICATE")
    expect(page.locator("pre.sluice-key")).to_have_count(0)
    screenshot("renewed")
    renewed = Certificate.objects.filter(device=device).order_by("-created_at").first()
    assert renewed is not None
    assert renewed.origin == "csr"
    assert renewed.status == "active"
    assert AuditEvent.objects.filter(action="certificate.issue", object_id=str(renewed.pk)).exists()
    page.click("#back-to-device")
    expect(rows).to_have_count(5)

    # when they revoke the old active certificate, the console asks first
    page.click(f"tr.certificate[data-serial='{active.serial}'] a.revoke-certificate")
    expect(page.locator("#revoke-serial")).to_have_text(active.serial)
    page.select_option("#id_reason", "key_compromise")
    screenshot("revoke-confirmation")
    assert Certificate.objects.get(pk=active.pk).status == "active"
    page.click("input[name=revoke]")

    # then it is revoked, said so, and audited with the reason chosen
    expect(page.locator(".messagelist")).to_contain_text(f"Revoked certificate {active.serial}")
    expect(page.locator(f"tr.certificate[data-serial='{active.serial}'] td.state")).to_have_text("revoked")
    screenshot("revoked")
    assert Certificate.objects.get(pk=active.pk).revocation_reason == "key_compromise"
    assert AuditEvent.objects.filter(action="certificate.revoke", object_id=str(active.pk),
                                     actor_label="acme-admin").exists()  # fmt: skip


def test_bad_csr_is_refused_on_the_form_and_viewers_get_no_actions(
    page: Page, screenshot: Shot, login: Login, transactional_db: None, clean_ingest_activity: redis.Redis,
    no_kafka_provisioning: None,  # noqa: F811
) -> None:  # fmt: skip
    acme = provision("acme")
    device = acme["devices"][0]
    other = provision("globex")["devices"][0]
    certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    admin = make_staff_user("acme-admin")
    Membership.objects.create(user=admin, tenant=acme["tenant"], role=Membership.Role.ADMIN)
    viewer = make_staff_user("acme-viewer")
    Membership.objects.create(user=viewer, tenant=acme["tenant"], role=Membership.Role.VIEWER)

    # when an admin pastes something that is not a CSR
    login("acme-admin")
    page.goto(f"/admin/devices/device/{device.pk}/certificates/issue/")
    page.fill("#id_csr", "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n")
    page.click("input[name=issue]")

    # then the service's reason is on the field, and nothing was issued
    expect(page.locator(".field-csr .errorlist")).to_be_visible()
    screenshot("bad-csr")
    assert Certificate.objects.filter(device=device).count() == 1

    # when they tick "generate" as well as giving a CSR, the form asks for one of them
    page.fill("#id_csr", csr_pem().decode())
    page.check("#id_generate")
    page.click("input[name=issue]")
    expect(page.locator(".errorlist.nonfield")).to_contain_text("one of them")
    assert Certificate.objects.filter(device=device).count() == 1

    # when they let Sluice generate the key, it is shown once, with the chain
    page.fill("#id_csr", "")
    page.click("input[name=issue]")
    expect(page.locator("text=Copy these now.")).to_be_visible()
    expect(page.locator("pre.sluice-key")).to_contain_text("BEGIN PRIVATE KEY")
    screenshot("generated-key-shown-once")
    generated = Certificate.objects.filter(device=device).order_by("-created_at").first()
    assert generated is not None
    assert generated.origin == "generated"
    assert "PRIVATE KEY" not in generated.certificate_pem

    # and another tenant's device has no certificate pages for them
    response = page.goto(f"/admin/devices/device/{other.pk}/certificates/issue/")
    assert response is not None
    assert response.status == 404

    # when the viewer opens the device, there are no renew or revoke actions, and the pages refuse them
    page.goto("/admin/")
    page.click("#logout-form button")
    login("acme-viewer")
    page.goto(f"/admin/devices/device/{device.pk}/change/")
    expect(page.locator("#device-certificates tr.certificate")).to_have_count(2)
    expect(page.locator("#renew-certificate")).to_have_count(0)
    expect(page.locator("a.revoke-certificate")).to_have_count(0)
    screenshot("viewer-device-page")
    serial = Certificate.objects.filter(device=device).first().serial
    response = page.goto(f"/admin/devices/device/{device.pk}/certificates/{serial}/revoke/")
    assert response is not None
    assert response.status == 403


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_away_shows_unknown_not_an_error(
    page: Page, screenshot: Shot, login: Login, transactional_db: None, monkeypatch: pytest.MonkeyPatch,
    no_kafka_provisioning: None,  # noqa: F811
) -> None:  # fmt: skip
    # given the console's Redis client pointed at a port nothing listens on
    device = provision("acme")["devices"][0]
    port = _closed_port()
    monkeypatch.setattr("ingest.selectors.redis_client", lambda: redis.Redis(port=port, socket_connect_timeout=0.5))
    make_staff_user("operator", operator=True)

    # when the operator opens the index and the device
    login("operator")

    # then the counts that need Redis say "unknown", the others are there
    assert overview(page)["Ingest refusals in the last hour"] == "unknown (Redis unavailable)"
    assert overview(page)["Devices"] == "1"
    screenshot("index-without-redis")
    response = page.goto(f"/admin/devices/device/{device.pk}/change/")
    assert response is not None
    assert response.status == 200
    expect(page.locator("#last-seen")).to_have_text("unknown (Redis unavailable)")
    expect(page.locator("#recent-refusals")).to_have_text("unknown (Redis unavailable)")
    screenshot("device-without-redis")


# A capital first letter, then lower case, except names that are always written so.
NAMES = "Kafka|CSR|CRL|CA|ID|SHA-256|PEM|DER|OAuth|API|EST|TLS"
SENTENCE_CASE = re.compile(rf"^(?:{NAMES}|[A-Z0-9])[^_A-Z]*(?:(?:{NAMES})[^_A-Z]*)*$")


def test_labels_are_human_and_in_sentence_case(
    page: Page, screenshot: Shot, login: Login, transactional_db: None, clean_ingest_activity: redis.Redis,
    no_kafka_provisioning: None,  # noqa: F811
) -> None:  # fmt: skip
    # given an operator, a tenant with a member, a device with a certificate and an OAuth
    # client, and an API token: a row in every list
    from tenants.oauth.services import oauth_client_create
    from tenants.services import api_token_create

    acme = provision("acme")
    device = acme["devices"][0]
    certificate = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    DeviceGroup.objects.filter(pk=acme["group"].pk).update(credential_policy="both")
    device.refresh_from_db()
    oauth_client_create(actor=ACTOR, tenant=acme["tenant"], kind="device", name="acme-dev", scopes=["ingest:write"],
                        device=device)  # fmt: skip
    operator = make_staff_user("operator", operator=True)
    Membership.objects.create(user=make_staff_user("acme-admin"), tenant=acme["tenant"], role=Membership.Role.ADMIN)
    api_token_create(actor=ACTOR, user=operator, name="automation")
    login("operator")

    # then every list's column headers, as the browser shows them, are words in sentence case
    checked = 0
    for url in ("/admin/tenants/tenant/", "/admin/tenants/membership/", "/admin/tenants/apitoken/",
                "/admin/tenants/auditevent/", "/admin/tenants/oauthclient/", "/admin/devices/stream/",
                "/admin/devices/devicegroup/", "/admin/devices/device/", "/admin/certs/certificate/",
                "/admin/certs/certificateauthority/"):  # fmt: skip
        page.goto(url)
        headers = [h.strip() for h in page.locator("#result_list thead th div.text").all_inner_texts() if h.strip()]
        assert headers, url
        for header in headers:
            assert SENTENCE_CASE.match(header), f"{url}: {header!r}"
        checked += 1
    assert checked == 10
    page.goto("/admin/certs/certificate/")
    headers = [h.strip() for h in page.locator("#result_list thead th div.text").all_inner_texts() if h.strip()]
    assert headers == ["Device ID", "Tenant", "Status", "Renewal due", "Origin", "Key type", "Valid until",
                       "Serial number"]  # fmt: skip
    expect(page.locator("#result_list tbody")).to_contain_text("Generated key")
    filters = page.locator("#changelist-filter summary").all_inner_texts()
    assert [f.strip() for f in filters][:2] == ["By status", "By expiry"]
    screenshot("certificate-list")

    # and the apps and the detail page say it the same way
    page.goto("/admin/")
    apps = [a.strip() for a in page.locator("#content-main caption a").all_inner_texts()]
    assert apps == ["Certificates", "Devices", "Tenants", "Users and groups"]
    models = [m.strip() for m in page.locator("#content-main th[scope=row] a").all_inner_texts()]
    assert "API tokens" in models
    assert "OAuth clients" in models
    for name in apps + models:
        assert SENTENCE_CASE.match(name), name
    page.goto(f"/admin/certs/certificate/{certificate.pk}/change/")
    labels = [t.strip().rstrip(":") for t in page.locator("fieldset .form-row label").all_inner_texts()]
    assert "SHA-256 fingerprint" in labels
    assert "Valid from" in labels
    assert "Device ID" in labels
    for label in labels:
        assert SENTENCE_CASE.match(label), label
    screenshot("certificate-detail")
    # the save button too is shown as written ("Save"), not upper-cased by the stylesheet
    page.goto(f"/admin/devices/device/{device.pk}/change/")
    save = page.locator(".submit-row input.default")
    expect(save).to_have_value("Save")
    assert save.evaluate("e => getComputedStyle(e).textTransform") == "none"
