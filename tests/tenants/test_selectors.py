"""The read layer: every selector takes the caller's scope, a tenant scope never returns
another tenant's rows, and the operator scope sees every tenant's."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from certs import selectors as certs_selectors
from certs.models import Certificate, CertificateAuthority
from config.errors import NotFound
from devices import selectors as devices_selectors
from devices.models import Device, DeviceGroup
from ingest import selectors as ingest_selectors
from tenants import selectors as tenants_selectors
from tenants.audit import Actor, audit_record
from tenants.models import Membership, Tenant
from tenants.oauth import selectors as oauth_selectors
from tenants.scoping import Scope, scope_for
from tenants.services import api_token_create
from tests.conftest import make_tenant, make_user
from tests.oauth.support import make_oauth_client

pytestmark = pytest.mark.django_db


def _pki(tenant: Tenant, device: Device) -> Certificate:
    """A CA and one active certificate expiring soon, written directly (only the rows matter)."""
    now = timezone.now()
    authority = CertificateAuthority.objects.create(
        tenant=tenant, subject=f"CN={tenant.slug} CA", serial=secrets.token_hex(8), certificate_pem="-",
        encrypted_key_pem="-", not_before=now, not_after=now + dt.timedelta(days=365),
    )  # fmt: skip
    return Certificate.objects.create(
        tenant=tenant, device=device, device_ref=device.device_id, ca=authority, serial=secrets.token_hex(8),
        fingerprint_sha256=secrets.token_hex(32), subject=f"CN={device.device_id}", certificate_pem="-",
        key_type="ec-p256", origin=Certificate.Origin.GENERATED, not_before=now, not_after=now + dt.timedelta(days=7),
    )  # fmt: skip


@pytest.fixture
def two_tenants() -> dict[str, Any]:
    """acme and globex, each with a stream, a group, a device, a certificate, an OAuth client,
    an admin and an audit event."""
    world: dict[str, Any] = {}
    for slug in ("acme", "globex"):
        tenant = make_tenant(slug)
        group = DeviceGroup.objects.get(tenant=tenant)
        device = Device.objects.create(tenant=tenant, group=group, device_id="dev-1")
        certificate = _pki(tenant, device)
        client, _ = make_oauth_client(tenant)
        admin = make_user(f"{slug}-admin", tenant=tenant)
        audit_record(actor=Actor.system("test"), tenant=tenant, action="test.event", object_repr=slug)
        world[slug] = {"tenant": tenant, "device": device, "certificate": certificate, "client": client,
                       "admin": admin}  # fmt: skip
    return world


def _tenants_of(rows: Any) -> set[str]:
    slugs = set()
    for row in rows:
        if isinstance(row, Tenant):
            slugs.add(row.slug)
        elif isinstance(row, certs_selectors.DeviceCertificate):
            slugs.add(row.certificate.tenant.slug)
        elif isinstance(row, str):  # a username: "<tenant>-admin"
            slugs.add(row.split("-", 1)[0])
        else:
            slugs.add(row.tenant.slug)
    return slugs


# Every list selector, called with a scope (and, for a device's rows, a device of ``slug``).
LISTS: dict[str, Callable[[Scope, dict[str, Any], str], Any]] = {
    "tenant_list": lambda scope, world, slug: tenants_selectors.tenant_list(scope=scope),
    "membership_list": lambda scope, world, slug: tenants_selectors.membership_list(scope=scope),
    "tenant_admin_usernames": lambda scope, world, slug: tenants_selectors.tenant_admin_usernames(scope=scope),
    "audit_event_list": lambda scope, world, slug: tenants_selectors.audit_event_list(scope=scope),
    "oauth_client_list": lambda scope, world, slug: oauth_selectors.oauth_client_list(scope=scope),
    "stream_list": lambda scope, world, slug: devices_selectors.stream_list(scope=scope),
    "group_list": lambda scope, world, slug: devices_selectors.group_list(scope=scope),
    "device_list": lambda scope, world, slug: devices_selectors.device_list(scope=scope),
    "certificate_list": lambda scope, world, slug: certs_selectors.certificate_list(scope=scope),
    "certificates_expiring": lambda scope, world, slug: certs_selectors.certificates_expiring(scope=scope),
    "authority_list": lambda scope, world, slug: certs_selectors.authority_list(scope=scope),
    "device_certificate_list": lambda scope, world, slug: certs_selectors.device_certificate_list(
        scope=scope, device=world[slug]["device"]),
    "device_certificates": lambda scope, world, slug: certs_selectors.device_certificates(
        scope=scope, device=world[slug]["device"]),
    "device_active_certificate": lambda scope, world, slug: [
        c for c in [certs_selectors.device_active_certificate(scope=scope, device=world[slug]["device"])] if c],
    "device_certificate_get": lambda scope, world, slug: [
        c for c in [certs_selectors.device_certificate_get(
            scope=scope, device=world[slug]["device"], serial=world[slug]["certificate"].serial)] if c],
}  # fmt: skip

# Every get selector, for the object of ``slug``.
GETS: dict[str, Callable[[Scope, dict[str, Any], str], Any]] = {
    "tenant_get": lambda scope, world, slug: tenants_selectors.tenant_get(scope=scope, slug=slug),
    "oauth_client_get": lambda scope, world, slug: oauth_selectors.oauth_client_get(
        scope=scope, client_id=world[slug]["client"].client_id),
    "stream_get": lambda scope, world, slug: devices_selectors.stream_get(
        scope=scope, pk=world[slug]["device"].group.stream_id),
    "group_get": lambda scope, world, slug: devices_selectors.group_get(scope=scope, slug="sensors"),
    "device_get": lambda scope, world, slug: devices_selectors.device_get(scope=scope, device_id="dev-1"),
    "certificate_get": lambda scope, world, slug: certs_selectors.certificate_get(
        scope=scope, serial=world[slug]["certificate"].serial.upper()),
}  # fmt: skip

EVERY_SELECTOR = [
    tenants_selectors.tenant_list, tenants_selectors.tenant_get, tenants_selectors.membership_list,
    tenants_selectors.tenant_admin_usernames, tenants_selectors.audit_event_list, tenants_selectors.api_token_list,
    oauth_selectors.oauth_client_list, oauth_selectors.oauth_client_get,
    devices_selectors.stream_list, devices_selectors.stream_get, devices_selectors.group_list,
    devices_selectors.group_get, devices_selectors.device_list, devices_selectors.device_get,
    certs_selectors.certificate_list, certs_selectors.certificate_get, certs_selectors.certificates_expiring,
    certs_selectors.authority_list, certs_selectors.device_certificate_list, certs_selectors.device_certificates,
    certs_selectors.device_certificate_get, certs_selectors.device_active_certificate,
    ingest_selectors.refusals_last_hour,
]  # fmt: skip


@pytest.mark.parametrize("selector", EVERY_SELECTOR, ids=lambda f: f.__name__)
def test_a_selector_cannot_be_called_without_a_scope(selector: Callable[..., Any]) -> None:
    # given no scope at all: Python refuses the call
    with pytest.raises(TypeError, match="scope"):
        selector()
    # and a tenant is not a scope
    with pytest.raises(TypeError):
        selector(scope=Tenant(slug="acme"))


@pytest.mark.parametrize("name", sorted(LISTS))
def test_a_tenant_scope_never_lists_another_tenants_rows(two_tenants: dict[str, Any], name: str) -> None:
    # given acme's scope, as its admin, its viewer, or narrowed from the operator's
    acme = two_tenants["acme"]["tenant"]
    scopes = [Scope.of_tenant(acme), Scope.of_tenant(acme, role=Membership.Role.VIEWER),
              scope_for(two_tenants["acme"]["admin"]), Scope.operator().within(acme)]  # fmt: skip
    for scope in scopes:
        # when it reads acme's rows, then it sees them; globex's rows it never sees
        assert _tenants_of(LISTS[name](scope, two_tenants, "acme")) == {"acme"}
        assert _tenants_of(LISTS[name](scope, two_tenants, "globex")) <= {"acme"}
        assert not _tenants_of(LISTS[name](scope, two_tenants, "globex")) & {"globex"}


@pytest.mark.parametrize("name", sorted(LISTS))
def test_the_operator_scope_lists_every_tenants_rows(two_tenants: dict[str, Any], name: str) -> None:
    operator = make_user("operator", operator=True)
    for scope in (Scope.operator(), scope_for(operator)):
        seen = _tenants_of(LISTS[name](scope, two_tenants, "acme")) | _tenants_of(
            LISTS[name](scope, two_tenants, "globex"))  # fmt: skip
        assert seen == {"acme", "globex"}


@pytest.mark.parametrize("name", sorted(GETS))
def test_a_tenant_scope_never_gets_another_tenants_object(two_tenants: dict[str, Any], name: str) -> None:
    acme, globex = two_tenants["acme"]["tenant"], two_tenants["globex"]["tenant"]
    # given globex's object asked for in acme's scope: it does not exist there (a name both
    # tenants use, like the group "sensors", finds acme's own)
    try:
        found = GETS[name](Scope.of_tenant(acme), two_tenants, "globex")
    except NotFound:
        pass
    else:
        assert _tenants_of([found]) == {"acme"}
    # while each scope finds its own, and the operator narrowed to globex finds globex's
    assert _tenants_of([GETS[name](Scope.of_tenant(acme), two_tenants, "acme")]) == {"acme"}
    assert _tenants_of([GETS[name](Scope.operator().within(globex), two_tenants, "globex")]) == {"globex"}


def test_a_scope_cannot_be_narrowed_to_a_tenant_it_cannot_see(two_tenants: dict[str, Any]) -> None:
    acme, globex = two_tenants["acme"]["tenant"], two_tenants["globex"]["tenant"]
    with pytest.raises(NotFound):
        Scope.of_tenant(acme).within(globex)
    assert Scope.of_tenant(acme).within(acme).tenant_ids == {acme.pk}
    assert Scope.operator().tenant_ids is None


def test_the_writable_part_of_a_scope_is_the_tenants_administered(two_tenants: dict[str, Any]) -> None:
    acme, globex = two_tenants["acme"]["tenant"], two_tenants["globex"]["tenant"]
    user = make_user("mixed", tenant=acme)
    Membership.objects.create(user=user, tenant=globex, role=Membership.Role.VIEWER)
    scope = scope_for(user)
    assert {t.slug for t in tenants_selectors.tenant_list(scope=scope)} == {"acme", "globex"}
    assert {t.slug for t in tenants_selectors.tenant_list(scope=scope.writable())} == {"acme"}


def test_api_tokens_are_their_users_own(two_tenants: dict[str, Any]) -> None:
    acme_admin, globex_admin = two_tenants["acme"]["admin"], two_tenants["globex"]["admin"]
    mine, _ = api_token_create(actor=Actor.of(acme_admin), user=acme_admin, name="mine")
    api_token_create(actor=Actor.of(globex_admin), user=globex_admin, name="theirs")
    operator = make_user("operator", operator=True)
    assert list(tenants_selectors.api_token_list(scope=scope_for(acme_admin))) == [mine]
    assert list(tenants_selectors.api_token_list(scope=scope_for(acme_admin), own=False)) == [mine]
    assert list(tenants_selectors.api_token_list(scope=scope_for(operator))) == []
    assert tenants_selectors.api_token_list(scope=scope_for(operator), own=False).count() == 2
