"""OAuth fixtures: the signing keys live under this run's state directory."""

from __future__ import annotations

import pytest
from django.conf import settings

from devices.models import Device, DeviceGroup
from tenants.models import Tenant
from tenants.oauth import keys


@pytest.fixture(scope="session", autouse=True)
def signing_keys() -> list[keys.SigningKey]:
    # settings' runtime, not the ``runtime`` fixture, which some modules here override.
    return keys.ensure_signing_keys(settings.SLUICE_RUNTIME)


@pytest.fixture
def oauth_group(tenant: Tenant) -> DeviceGroup:
    """The tenant's "sensors" group, open to OAuth2 as well as mTLS."""
    group = DeviceGroup.objects.get(tenant=tenant, slug="sensors")
    group.credential_policy = DeviceGroup.CredentialPolicy.BOTH
    group.save()
    return group


@pytest.fixture
def device(oauth_group: DeviceGroup) -> Device:
    return Device.objects.create(tenant=oauth_group.tenant, group=oauth_group, device_id="dev-1")
