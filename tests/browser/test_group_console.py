"""The console's device-group form applies the same rule as the API: region and device type
follow the stream (Django's test client against the real admin views)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from devices.models import DeviceGroup, Stream
from tenants.models import Tenant
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
ADD = "/admin/devices/devicegroup/add/"


@pytest.fixture
def console(tenant: Tenant) -> Client:
    """acme's tenant admin, signed in to the console."""
    user = make_user("console-admin", tenant=tenant)
    user.is_staff = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def _group_form(tenant: Tenant, stream: Stream, **values: Any) -> dict[str, Any]:
    return {"tenant": tenant.pk, "slug": "shakers", "name": "", "region": "", "device_type": "",
            "stream": stream.pk, "schema_subject": f"{stream.topic}-value", "rate_limit_per_second": 10,
            "credential_policy": "mtls", "cert_key_type": "ec-p256", "cert_lifetime_days": 365,
            "cert_renewal_window_days": 30, "expected_interval_seconds": 3600, **values}  # fmt: skip


def test_the_console_refuses_a_group_that_contradicts_its_stream(console: Client, tenant: Tenant) -> None:
    # given the tenant's stream iot.acme.eu.temperature
    stream = Stream.objects.get(tenant=tenant)

    # when the add form names us/vibration for it
    response = console.post(ADD, _group_form(tenant, stream, region="us", device_type="vibration"), secure=True)

    # then the form comes back with the error on each field, and nothing was created
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["region"] == ["Must be 'eu', the region of the stream iot.acme.eu.temperature (or left empty)."]
    assert errors["device_type"] == [
        "Must be 'temperature', the type of the stream iot.acme.eu.temperature (or left empty)."
    ]
    assert "Must be &#x27;eu&#x27;, the region of the stream" in response.content.decode()
    assert not DeviceGroup.objects.filter(slug="shakers").exists()


def test_the_console_takes_region_and_type_from_the_stream(console: Client, tenant: Tenant) -> None:
    # given the tenant's stream and a second one, iot.acme.us.vibration
    stream = Stream.objects.get(tenant=tenant)
    vibration = Stream.objects.create(tenant=tenant, region="us", type="vibration", partitions=1)

    # when a group is added with region and device type left empty
    added = console.post(ADD, _group_form(tenant, stream), secure=True)

    # then it is created with the stream's
    assert added.status_code == 302, added.context["adminform"].form.errors if added.context else added
    group = DeviceGroup.objects.get(tenant=tenant, slug="shakers")
    assert (group.region, group.device_type) == ("eu", "temperature")

    # when its change form moves it to the other stream, leaving region and type as shown
    change = f"/admin/devices/devicegroup/{group.pk}/change/"
    moved = console.post(change, _group_form(tenant, vibration, region="eu", device_type="temperature"), secure=True)

    # then they follow the new stream
    assert moved.status_code == 302, moved.context["adminform"].form.errors if moved.context else moved
    group.refresh_from_db()
    assert (group.stream_id, group.region, group.device_type) == (vibration.pk, "us", "vibration")

    # when the change form names a region the stream does not have
    wrong = console.post(change, _group_form(tenant, vibration, region="eu", device_type="vibration"), secure=True)

    # then it is refused on that field
    assert wrong.status_code == 200
    assert list(wrong.context["adminform"].form.errors) == ["region"]
    group.refresh_from_db()
    assert group.region == "us"
