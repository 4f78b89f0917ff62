"""Onboarding's summary creates a consumer of the tenant just onboarded (a backend reading its
streams) and says how it gets its credentials: its console page, and the REST API's paths
(Django's test client against the real views)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from devices.models import Consumer, Device, DeviceGroup, Stream
from tenants.models import AuditEvent, Tenant
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
SUMMARY = "/onboarding/acme/devices/thermo-1/"
CREATE = f"{SUMMARY}consumer/"


@pytest.fixture
def device(tenant: Tenant) -> Device:
    return Device.objects.create(tenant=tenant, group=DeviceGroup.objects.get(tenant=tenant), device_id="thermo-1")


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(make_user("operator", operator=True))
    return client


def test_the_summary_creates_a_consumer_reading_every_stream_by_default(operator: Client, device: Device) -> None:
    # given the summary of acme's onboarding
    page = operator.get(SUMMARY, secure=True).content.decode()

    # then it offers a consumer reading every stream, and lists none yet
    assert 'id="consumer-form"' in page
    assert f'action="{CREATE}"' in page
    assert re.search(r'<input type="checkbox" name="consumer-all_streams"[^>]* checked>', page)
    assert 'id="consumer-list"' not in page

    # when the operator creates one with the slug alone (and the dead letters)
    created = operator.post(CREATE, {"consumer-slug": "analytics", "consumer-all_streams": "on",
                                     "consumer-dead_letters": "on"}, secure=True)  # fmt: skip

    # then the service created it, audited as the operator, and the summary shows it
    assert (created.status_code, created["Location"]) == (302, f"{SUMMARY}#consumers")
    consumer = Consumer.objects.get(tenant=device.tenant, slug="analytics")
    assert (consumer.all_streams, consumer.dead_letters, consumer.status) == (True, True, "active")
    assert AuditEvent.objects.filter(action="consumer.create", actor_label="operator").exists()
    page = operator.get(SUMMARY, secure=True).content.decode()
    assert "Consumer analytics created" in page
    assert '<dd class="consumer" id="consumer-analytics">' in page
    assert "<code>iot.acme.eu.temperature</code>, <code>iot.acme.dlq</code>" in page
    # with how to get its credentials: its console page and the API's paths
    assert f'href="/admin/devices/consumer/{consumer.pk}/change/"' in page
    assert "POST /api/v1/tenants/acme/consumers/analytics/certificates/" in page
    assert "POST /api/v1/tenants/acme/oauth-clients/" in page
    assert '{"kind": "consumer", "consumer": "analytics"' in page
    assert "User:acme.consumers.analytics.&lt;credential id&gt;" in page


def test_the_summary_creates_a_consumer_of_chosen_streams(operator: Client, device: Device) -> None:
    vibration = Stream.objects.create(tenant=device.tenant, region="eu", type="vibration", partitions=1)

    created = operator.post(CREATE, {"consumer-slug": "vib", "consumer-streams": [vibration.pk]}, secure=True)

    assert created.status_code == 302
    consumer = Consumer.objects.get(tenant=device.tenant, slug="vib")
    assert (consumer.all_streams, list(consumer.streams.all())) == (False, [vibration])


def test_the_summary_shows_the_services_refusals_on_the_form(
    operator: Client, device: Device, other_tenant: Tenant
) -> None:
    # given acme's consumer analytics
    operator.post(CREATE, {"consumer-slug": "analytics", "consumer-all_streams": "on"}, secure=True)
    theirs = Stream.objects.get(tenant=other_tenant)

    # when the same slug, a bad slug, both "every stream" and a stream, or globex's stream is posted
    again = operator.post(CREATE, {"consumer-slug": "analytics", "consumer-all_streams": "on"}, secure=True)
    bad = operator.post(CREATE, {"consumer-slug": "Not A Slug", "consumer-all_streams": "on"}, secure=True)
    stream = Stream.objects.get(tenant=device.tenant)
    both = operator.post(CREATE, {"consumer-slug": "both", "consumer-all_streams": "on",
                                  "consumer-streams": [stream.pk]}, secure=True)  # fmt: skip
    foreign = operator.post(CREATE, {"consumer-slug": "spy", "consumer-streams": [theirs.pk]}, secure=True)

    # then the summary comes back with the error on the field, and nothing more was created
    assert {r.status_code for r in (again, bad, both, foreign)} == {200}
    assert "Consumer &#x27;analytics&#x27; already exists in this tenant." in again.content.decode()
    assert again.context["consumer_form"].errors["slug"]
    assert bad.context["consumer_form"].errors["slug"]
    assert both.context["consumer_form"].errors["streams"] == ["Choose all_streams or a list of streams, not both."]
    assert "Select a valid choice" in str(foreign.context["consumer_form"].errors["streams"])
    assert "globex" not in foreign.content.decode()
    assert list(Consumer.objects.values_list("slug", flat=True)) == ["analytics"]


def test_only_operators_create_consumers_in_onboarding(tenant: Tenant, device: Device) -> None:
    admin = make_user("acme-admin", tenant=tenant)
    admin.is_staff = True
    admin.save()
    client = Client()
    client.force_login(admin)

    refused = client.post(CREATE, {"consumer-slug": "analytics", "consumer-all_streams": "on"}, secure=True)

    assert refused.status_code == 403
    assert not Consumer.objects.exists()
    # and a GET of the form's address leads an operator back to the summary
    operator = Client()
    operator.force_login(make_user("operator", operator=True))
    assert operator.get(CREATE, secure=True)["Location"] == SUMMARY
