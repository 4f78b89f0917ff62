"""One format for a device's labels: ``key=value`` lines in the console's device form, as in
onboarding (``devices.forms.LabelsField``); and the certificate list's renewal column says
when each certificate falls due (Django's test client against the real admin views)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django import forms
from django.test import Client
from django.utils import timezone
from django.utils.formats import date_format

from certs.models import Certificate
from certs.services import certificate_issue_generated, tenant_ca_create
from devices.forms import labels_as_text, labels_from_text
from devices.models import Device, DeviceGroup
from tenants.audit import Actor
from tenants.models import Tenant
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
ADD = "/admin/devices/device/add/"


@pytest.fixture
def console(tenant: Tenant) -> Client:
    """acme's tenant admin, signed in to the console."""
    user = make_user("labels-admin", tenant=tenant)
    user.is_staff = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def _device_form(tenant: Tenant, **values: Any) -> dict[str, Any]:
    group = DeviceGroup.objects.get(tenant=tenant, slug="sensors")
    return {"tenant": tenant.pk, "device_id": "th-1", "group": group.pk, "status": "active", "labels": "", **values}


def test_labels_text_round_trips_and_names_the_bad_line() -> None:
    assert labels_from_text("site=berlin-1\n\n floor = 3 \nurl=a=b") == {"site": "berlin-1", "floor": "3", "url": "a=b"}
    assert labels_as_text({"site": "berlin-1", "floor": "3"}) == "floor=3\nsite=berlin-1"
    with pytest.raises(forms.ValidationError, match="Line 2: expected key=value, got 'oops'"):
        labels_from_text("site=x\noops")
    with pytest.raises(forms.ValidationError, match="Line 2: the key 'site' appears twice"):
        labels_from_text("site=x\nsite=y")


def test_the_console_reads_and_writes_labels_as_key_value_lines(console: Client, tenant: Tenant) -> None:
    # when a device is added with labels typed as onboarding asks for them
    added = console.post(ADD, _device_form(tenant, labels="site=berlin-1\nfloor=3"), secure=True)

    # then they are stored as the API shows them
    assert added.status_code == 302, added.context["adminform"].form.errors if added.context else added
    device = Device.objects.get(tenant=tenant, device_id="th-1")
    assert device.labels == {"site": "berlin-1", "floor": "3"}

    # and the change form shows them as lines, not JSON
    change = f"/admin/devices/device/{device.pk}/change/"
    page = console.get(change, secure=True).content.decode()
    assert "floor=3\nsite=berlin-1</textarea>" in page
    assert "{&quot;site&quot;" not in page

    # when a line is not key=value
    wrong = console.post(change, _device_form(tenant, labels="site=berlin-1\nfloor 3"), secure=True)

    # then the field says which line, and nothing changed
    assert wrong.status_code == 200
    assert wrong.context["adminform"].form.errors["labels"] == ["Line 2: expected key=value, got 'floor 3'."]
    device.refresh_from_db()
    assert device.labels == {"site": "berlin-1", "floor": "3"}


def test_the_certificate_list_says_when_renewal_falls_due(console: Client, tenant: Tenant) -> None:
    # given a device of a group renewing 30 days before expiry, with one certificate
    group = DeviceGroup.objects.get(tenant=tenant, slug="sensors")
    group.cert_renewal_window_days = 30
    group.save()
    device = Device.objects.create(tenant=tenant, group=group, device_id="th-2")
    actor = Actor.system("test")
    tenant_ca_create(actor=actor, tenant=tenant)
    certificate = certificate_issue_generated(actor=actor, device=device, passphrase="long passphrase").certificate
    not_after = timezone.now() + dt.timedelta(days=100)
    Certificate.objects.filter(pk=certificate.pk).update(not_after=not_after)

    # then the list shows the day its renewal window opens
    opens = timezone.localtime(not_after - dt.timedelta(days=30))
    page = console.get("/admin/certs/certificate/", secure=True).content.decode()
    assert f"From {date_format(opens, 'DATE_FORMAT')}" in page

    # when rotation has marked it due
    Certificate.objects.filter(pk=certificate.pk).update(renewal_due=True)

    # then it says so
    assert ">Now<" in console.get("/admin/certs/certificate/", secure=True).content.decode()
