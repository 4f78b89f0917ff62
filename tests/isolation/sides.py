"""Two tenants built alike, and A's credentials of every kind.

Tenant A (``acme``) and tenant B (``globex``) each get a stream, a device group and a device
of their own name, a tenant CA and a device certificate, a service and a device OAuth client,
a consumer with a certificate and an OAuth client, a tenant admin with an API token, and
audit events.  ``Side.value`` fills a route's path
parameter with one of those objects; ``MISSING`` fills it with one that does not exist."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.forms.models import model_to_dict
from rest_framework.test import APIClient

from certs import ca
from certs.models import Certificate, CertificateAuthority, Job
from certs.services import certificate_issue_from_csr, consumer_certificate_issue, tenant_ca_create
from devices.models import Consumer, Device, DeviceGroup, Stream
from devices.services import consumer_create
from tenants.audit import Actor
from tenants.models import ApiToken, AuditEvent, Membership, Tenant
from tenants.oauth.models import OAuthClient
from tenants.services import api_token_create, tenant_update
from tests.conftest import make_tenant, make_user
from tests.tenants.oauth.support import access_token, make_oauth_client

ACTOR = Actor.system("test")

# One value per kind of parameter that names nothing; each is a string no real value
# contains, so a twin answer can be turned into B's answer by replacing it.
MISSING_ID = "987654321"
MISSING = {
    "tenant": "no-such-tenant", "stream": MISSING_ID, "version": "424242", "group": "no-such-group",
    "device": "no-such-device", "serial": "0badc0ffee0badc0ffee", "client": "no-such-client",
    "subject": "iot.no-such-tenant.eu.nothing-value", "schema_id": MISSING_ID, "consumer": "no-such-consumer",
    "job": MISSING_ID,
}  # fmt: skip


@dataclass
class Side:
    tenant: Tenant
    user: Any
    stream: Stream
    group: DeviceGroup
    device: Device
    authority: CertificateAuthority
    certificate: Certificate
    service_client: OAuthClient
    service_secret: str
    device_client: OAuthClient
    device_secret: str
    api_token: ApiToken
    api_secret: str
    staff_group: Group
    consumer: Consumer
    consumer_certificate: Certificate
    consumer_client: OAuthClient
    consumer_secret: str
    job: Job

    def value(self, key: str) -> str:
        """The path value of this side's object ``key`` (see ``routes.EXPECTATIONS``)."""
        by_key: dict[str, object] = {
            "tenant": self.tenant.slug, "stream": self.stream.pk, "version": 1, "group": self.group.slug,
            "device": self.device.device_id, "serial": self.certificate.serial, "client": self.service_client.client_id,
            "device_type": ContentType.objects.get_for_model(Device).pk,
            # the registry's: B's stream's subject, and an id (B's schema, were one registered)
            "subject": f"{self.stream.topic}-value", "schema_id": 1, "consumer": self.consumer.slug,
            "job": self.job.pk,
        }  # fmt: skip
        if key in by_key:
            return str(by_key[key])
        return str(self.rows()[key].pk)  # a console model's label: the row's primary key

    def rows(self) -> dict[str, Any]:
        """This side's row of every model in the console."""
        return {
            "auth.group": self.staff_group, "auth.user": self.user, "tenants.tenant": self.tenant,
            "tenants.membership": Membership.objects.get(tenant=self.tenant, user=self.user),
            "tenants.apitoken": self.api_token,
            "tenants.auditevent": AuditEvent.objects.filter(tenant=self.tenant).earliest("pk"),
            "tenants.oauthclient": self.service_client, "devices.stream": self.stream,
            "devices.devicegroup": self.group, "devices.device": self.device, "devices.consumer": self.consumer,
            "certs.certificateauthority": self.authority, "certs.certificate": self.certificate,
        }  # fmt: skip

    def markers(self) -> list[str]:
        """Strings that appear only where this side's rows are shown."""
        return [self.tenant.slug, self.user.username, self.group.slug, self.device.device_id,
                self.certificate.serial, self.authority.serial, self.service_client.client_id,
                self.device_client.client_id, self.api_token.prefix, self.staff_group.name, self.consumer.slug,
                self.consumer_certificate.serial, self.consumer_client.client_id]  # fmt: skip

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of this side's, field by field: equal before and after means untouched."""
        tenant = self.tenant
        sets = {
            "tenant": Tenant.objects.filter(pk=tenant.pk), "memberships": Membership.objects.filter(tenant=tenant),
            "streams": Stream.objects.filter(tenant=tenant), "groups": DeviceGroup.objects.filter(tenant=tenant),
            "devices": Device.objects.filter(tenant=tenant),
            "authorities": CertificateAuthority.objects.filter(tenant=tenant),
            "certificates": Certificate.objects.filter(tenant=tenant),
            "oauth_clients": OAuthClient.objects.filter(tenant=tenant),
            "consumers": Consumer.objects.filter(tenant=tenant),
            "audit": AuditEvent.objects.filter(tenant_slug=tenant.slug),
            "tokens": ApiToken.objects.filter(user=self.user), "user": type(self.user).objects.filter(pk=self.user.pk),
            "staff_group": Group.objects.filter(pk=self.staff_group.pk),
            "jobs": Job.objects.filter(tenant=tenant),
        }  # fmt: skip
        return {name: [model_to_dict(row) for row in rows.order_by("pk")] for name, rows in sets.items()}


def _csr() -> bytes:
    key = ca.generate_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(ca.name(CN="x")).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def build_side(slug: str, prefix: str) -> Side:
    tenant = make_tenant(slug)
    stream = Stream.objects.get(tenant=tenant)
    group = DeviceGroup.objects.create(tenant=tenant, slug=f"{prefix}-group", region="eu", device_type="temperature",
                                       stream=stream, schema_subject=f"{stream.topic}-value",
                                       credential_policy=DeviceGroup.CredentialPolicy.BOTH)  # fmt: skip
    device = Device.objects.create(tenant=tenant, group=group, device_id=f"{prefix}-dev")
    tenant_update(actor=ACTOR, tenant=tenant, name=f"{slug.title()} Corp")  # an audit event of the tenant's
    authority = tenant_ca_create(actor=ACTOR, tenant=tenant)
    certificate = certificate_issue_from_csr(actor=ACTOR, device=device, csr_pem=_csr()).certificate
    user = make_user(f"{slug}-admin", tenant=tenant)
    user.is_staff = True  # as tenant_admin_create makes them: the console lets them in
    user.save()
    api_token, api_secret = api_token_create(actor=ACTOR, user=user, name=f"{prefix} script")
    service_client, service_secret = make_oauth_client(tenant)
    device_client, device_secret = make_oauth_client(tenant, "device", ["ingest:write"], device=device)
    staff_group = Group.objects.create(name=f"{prefix}-staff-group")
    consumer = consumer_create(actor=ACTOR, tenant=tenant, slug=f"{prefix}-reader")
    consumer_certificate = consumer_certificate_issue(actor=ACTOR, consumer=consumer, csr_pem=_csr()).certificate
    consumer_client, consumer_secret = make_oauth_client(tenant, "consumer", consumer=consumer)
    job = Job.objects.create(tenant=tenant, kind=Job.Kind.DEVICE_IMPORT, total=1, done=1,
                             status=Job.Status.SUCCEEDED, result={"created": 1})  # fmt: skip
    return Side(tenant, user, stream, group, device, authority, certificate, service_client, service_secret,
                device_client, device_secret, api_token, api_secret, staff_group, consumer, consumer_certificate,
                consumer_client, consumer_secret, job)  # fmt: skip


# -- A's credentials ------------------------------------------------------------------------

SESSION, API_TOKEN, SERVICE_TOKEN, DEVICE_TOKEN, DEVICE_CERTIFICATE = (
    "session", "API token", "service access token", "device access token", "device certificate",
)  # fmt: skip
CONSUMER_TOKEN, CONSUMER_CERTIFICATE = "consumer access token", "consumer certificate"
# Credentials the REST API refuses outright, whatever the URL (401/403 before any lookup).
REFUSED_BY_API = {DEVICE_TOKEN, DEVICE_CERTIFICATE, CONSUMER_TOKEN, CONSUMER_CERTIFICATE}
# ... and the scoped registry (a consumer's credentials read there).
REFUSED_BY_REGISTRY = {DEVICE_TOKEN, DEVICE_CERTIFICATE}


def client_as(side: Side, principal: str) -> APIClient:
    """A client holding ``side``'s credential of kind ``principal``."""
    client = APIClient()
    if principal == SESSION:
        client.force_login(side.user)  # a real session (the console and the API both read it)
    elif principal == API_TOKEN:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {side.api_secret}")
    elif principal == SERVICE_TOKEN:  # provision:read and provision:write, from the token endpoint
        token = access_token(side.service_client.client_id, side.service_secret)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    elif principal == DEVICE_TOKEN:
        token = access_token(side.device_client.client_id, side.device_secret)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    elif principal == CONSUMER_TOKEN:  # kafka:consume and registry:read, from the token endpoint
        token = access_token(side.consumer_client.client_id, side.consumer_secret)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    elif principal in (DEVICE_CERTIFICATE, CONSUMER_CERTIFICATE):  # as nginx forwards a verified certificate
        pem = (side.certificate if principal == DEVICE_CERTIFICATE else side.consumer_certificate).certificate_pem
        client.credentials(HTTP_X_SLUICE_PROXY_SECRET=settings.SLUICE_PROXY_SECRET,
                           HTTP_X_SLUICE_CLIENT_VERIFY="SUCCESS", HTTP_X_SLUICE_CLIENT_CERT=quote(pem))  # fmt: skip
    else:
        raise AssertionError(principal)
    return client
