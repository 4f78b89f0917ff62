"""Consumers in the console (Django's test client against the real admin views): a tenant
admin creates, changes and deletes one through the services, picks only its own tenant's
streams, issues it a client certificate and an OAuth client (each secret shown once); a
viewer only looks, and another tenant's consumer answers like a missing one."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.test import Client

from certs.models import Certificate
from certs.services import consumer_certificate_issue, tenant_ca_create
from devices.models import Consumer, Stream
from devices.services import consumer_create
from tenants.audit import Actor
from tenants.hashing import hash_token
from tenants.models import AuditEvent, Membership, Tenant
from tenants.oauth.models import OAuthClient
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("test")
LIST = "/admin/devices/consumer/"
ADD = f"{LIST}add/"
PASSPHRASE = "a long passphrase"


def signed_in(username: str, tenant: Tenant, role: str = Membership.Role.ADMIN) -> Client:
    user = make_user(username, tenant=tenant, role=role)
    user.is_staff = True  # as user_create_tenant_admin makes them: the console lets them in
    user.save()
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def console(tenant: Tenant) -> Client:
    """acme's tenant admin, signed in to the console."""
    return signed_in("consumer-admin", tenant)


@pytest.fixture
def viewer(tenant: Tenant) -> Client:
    return signed_in("consumer-viewer", tenant, Membership.Role.VIEWER)


@pytest.fixture
def with_ca(tenant: Tenant) -> Tenant:
    tenant_ca_create(actor=ACTOR, tenant=tenant)
    return tenant


def _form(tenant: Tenant, **values: Any) -> dict[str, Any]:
    return {"tenant": tenant.pk, "slug": "analytics", "name": "Analytics backend", "status": "active",
            "all_streams": "on", "dead_letters": "", **values}  # fmt: skip


def _errors(response: Any) -> Any:
    return response.context["adminform"].form.errors if response.context else response


def _change(consumer: Consumer) -> str:
    return f"{LIST}{consumer.pk}/change/"


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "analytics")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_a_tenant_admin_creates_changes_and_deletes_a_consumer(console: Client, tenant: Tenant) -> None:
    # given acme's stream and a second one
    temperature = Stream.objects.get(tenant=tenant)
    vibration = Stream.objects.create(tenant=tenant, region="eu", type="vibration", partitions=1)

    # when the add form names the consumer, reading every stream and the dead letters
    added = console.post(ADD, _form(tenant, dead_letters="on"), secure=True)

    # then the service created it (and audited it as this user)
    assert added.status_code == 302, _errors(added)
    consumer = Consumer.objects.get(tenant=tenant, slug="analytics")
    assert (consumer.all_streams, consumer.dead_letters, list(consumer.streams.all())) == (True, True, [])
    event = AuditEvent.objects.get(action="consumer.create", object_repr="acme/analytics")
    assert event.actor_label == "consumer-admin"

    # and its page shows where it stands on Kafka and what it reads
    page = console.get(_change(consumer), secure=True).content.decode()
    assert '<code id="principal-prefix">User:acme.consumers.analytics.</code>' in page
    assert '<code id="group-prefix">acme.analytics.</code>' in page
    for topic in ("iot.acme.eu.temperature", "iot.acme.eu.vibration", "iot.acme.dlq"):
        assert f"<code>{topic}</code>" in page
    assert 'id="no-credentials"' in page

    # when the change form ticks both "all streams" and a stream
    both = console.post(_change(consumer), _form(tenant, streams=[vibration.pk]), secure=True)

    # then the service's rule comes back on the streams field, and nothing changed
    assert both.status_code == 200
    assert _errors(both)["streams"] == ["Choose all_streams or a list of streams, not both."]
    consumer.refresh_from_db()
    assert consumer.all_streams

    # when it narrows the consumer to the vibration stream, without the dead letters
    narrowed = console.post(_change(consumer), _form(tenant, all_streams="", streams=[vibration.pk]), secure=True)

    # then the consumer reads that stream only
    assert narrowed.status_code == 302, _errors(narrowed)
    consumer.refresh_from_db()
    assert (consumer.all_streams, consumer.dead_letters) == (False, False)
    assert list(consumer.streams.all()) == [vibration]
    assert AuditEvent.objects.filter(action="consumer.update", object_repr="acme/analytics").count() == 1

    # and the list says what it reads, and that it has no usable credential yet
    listed = console.get(LIST, secure=True).content.decode()
    assert "iot.acme.eu.vibration" in listed
    assert "iot.acme.eu.temperature" not in listed
    assert '<td class="field-credential_count">0</td>' in listed

    # when it is deleted through the confirmation page
    confirm = console.get(f"{LIST}{consumer.pk}/delete/", secure=True)
    assert confirm.status_code == 200
    assert "OAuth client(s) revoked and removed" in confirm.content.decode()
    deleted = console.post(f"{LIST}{consumer.pk}/delete/", {"post": "yes"}, secure=True)

    # then the service deleted it
    assert deleted.status_code == 302
    assert not Consumer.objects.filter(pk=consumer.pk).exists()
    assert AuditEvent.objects.filter(action="consumer.delete", object_repr="acme/analytics").exists()
    assert temperature.pk  # untouched


def test_the_console_offers_and_takes_only_the_tenants_own_streams(
    console: Client, tenant: Tenant, other_tenant: Tenant
) -> None:
    # given globex's stream and consumer
    theirs = Stream.objects.get(tenant=other_tenant)
    foreign = consumer_create(actor=ACTOR, tenant=other_tenant, slug="spy")

    # then the add form offers acme's streams and tenant only
    page = console.get(ADD, secure=True).content.decode()
    assert "iot.acme.eu.temperature" in page
    assert "globex" not in page

    # when a form names globex's stream or tenant anyway
    planted = console.post(ADD, _form(tenant, all_streams="", streams=[theirs.pk]), secure=True)
    moved = console.post(ADD, _form(other_tenant, slug="planted"), secure=True)

    # then both are refused, and nothing was created
    assert (planted.status_code, moved.status_code) == (200, 200)
    assert "Select a valid choice" in str(_errors(planted)["streams"])
    assert "Select a valid choice" in str(_errors(moved)["tenant"])
    assert not Consumer.objects.filter(tenant=tenant).exists()
    assert list(Consumer.objects.filter(tenant=other_tenant)) == [foreign]

    # and globex's consumer is not listed, and its pages answer as a missing one's
    assert "spy" not in console.get(LIST, secure=True).content.decode()
    missing = 987654321
    for page_of in ("change/", "delete/", "history/"):
        got = console.get(f"{LIST}{foreign.pk}/{page_of}", secure=True)
        twin = console.get(f"{LIST}{missing}/{page_of}", secure=True)
        assert got.status_code == twin.status_code == 302, page_of
    for own in ("certificates/issue/", "oauth-clients/add/"):
        assert console.get(f"{LIST}{foreign.pk}/{own}", secure=True).status_code == 404
        assert (
            console.post(
                f"{LIST}{foreign.pk}/{own}",
                {"passphrase": PASSPHRASE, "name": "x", "scopes": ["kafka:consume"]},
                secure=True,
            ).status_code
            == 404
        )
    assert not Certificate.objects.filter(consumer=foreign).exists()
    assert not OAuthClient.objects.filter(consumer=foreign).exists()
    # and a post to its change page changes nothing
    console.post(_change(foreign), _form(other_tenant, slug="spy", status="disabled"), secure=True)
    foreign.refresh_from_db()
    assert foreign.status == "active"


def test_a_viewer_sees_a_consumer_but_cannot_change_it(viewer: Client, tenant: Tenant, with_ca: Tenant) -> None:
    consumer = consumer_create(actor=ACTOR, tenant=tenant, slug="analytics")

    # the list and the page show it, read-only, without the credential buttons
    assert "analytics" in viewer.get(LIST, secure=True).content.decode()
    page = viewer.get(_change(consumer), secure=True)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert 'id="issue-certificate"' not in page.content.decode()
    assert "User:acme.consumers.analytics." in page.content.decode()

    # and every write is refused
    assert viewer.get(ADD, secure=True).status_code == 403
    assert viewer.post(ADD, _form(tenant, slug="other"), secure=True).status_code == 403
    assert viewer.post(_change(consumer), _form(tenant, status="disabled"), secure=True).status_code == 403
    assert viewer.post(f"{LIST}{consumer.pk}/delete/", {"post": "yes"}, secure=True).status_code == 403
    assert viewer.post(f"{LIST}{consumer.pk}/certificates/issue/", {"passphrase": PASSPHRASE},
                       secure=True).status_code == 403  # fmt: skip
    assert viewer.post(f"{LIST}{consumer.pk}/oauth-clients/add/", {"name": "x", "scopes": ["kafka:consume"]},
                       secure=True).status_code == 403  # fmt: skip
    consumer.refresh_from_db()
    assert consumer.status == "active"
    assert not Consumer.objects.filter(slug="other").exists()
    assert not Certificate.objects.filter(consumer=consumer).exists()
    assert not OAuthClient.objects.filter(consumer=consumer).exists()


def test_a_client_certificate_is_issued_with_its_key_shown_once(
    console: Client, tenant: Tenant, with_ca: Tenant
) -> None:
    consumer = consumer_create(actor=ACTOR, tenant=tenant, slug="analytics")
    issue = f"{LIST}{consumer.pk}/certificates/issue/"

    # the consumer's page leads to the issue form
    page = console.get(_change(consumer), secure=True).content.decode()
    assert f'href="{issue}"' in page
    assert console.get(issue, secure=True).status_code == 200

    # when neither a passphrase nor a CSR is given, or a passphrase too short
    neither = console.post(issue, {}, secure=True)
    short = console.post(issue, {"passphrase": "short"}, secure=True)

    # then the form says so, and nothing is issued
    assert "one of them" in neither.content.decode()
    assert "at least 8 characters" in short.content.decode()
    assert not Certificate.objects.filter(consumer=consumer).exists()

    # when it is issued with a generated key
    issued = console.post(issue, {"passphrase": PASSPHRASE}, secure=True)

    # then the chain, the key and the PKCS#12 bundle are in this answer, never cached
    body = issued.content.decode()
    assert issued.status_code == 200
    assert "no-store" in issued["Cache-Control"]
    assert "BEGIN PRIVATE KEY" in body
    assert "BEGIN CERTIFICATE" in body
    for element in ("download-chain", "download-key", "download-pkcs12"):
        assert f'id="{element}"' in body
    assert 'download="analytics.p12"' in body
    certificate = Certificate.objects.get(consumer=consumer)
    assert certificate.kafka_principal.startswith("User:acme.consumers.analytics.")
    assert f'<code id="issued-principal">{certificate.kafka_principal}</code>' in body
    assert "PRIVATE KEY" not in certificate.certificate_pem

    # and the consumer's page lists the certificate, never the key again
    page = console.get(_change(consumer), secure=True).content.decode()
    assert certificate.kafka_principal in page
    assert "PRIVATE KEY" not in page
    assert '<td class="field-credential_count">1</td>' in console.get(LIST, secure=True).content.decode()

    # when the backend sends its own CSR instead
    from_csr = console.post(issue, {"csr": _csr()}, secure=True)

    # then a second certificate is issued for that key, with no key on the page
    assert from_csr.status_code == 200
    assert "BEGIN CERTIFICATE" in from_csr.content.decode()
    assert "PRIVATE KEY" not in from_csr.content.decode()
    assert Certificate.objects.filter(consumer=consumer).count() == 2

    # when the CSR is not one
    wrong = console.post(issue, {"csr": "not a CSR"}, secure=True)
    assert wrong.status_code == 200
    assert wrong.context["form"].errors["csr"]


def test_a_disabled_consumer_gets_no_certificate(console: Client, tenant: Tenant, with_ca: Tenant) -> None:
    consumer = consumer_create(actor=ACTOR, tenant=tenant, slug="analytics", status="disabled")
    refused = console.post(f"{LIST}{consumer.pk}/certificates/issue/", {"passphrase": PASSPHRASE}, secure=True)
    assert refused.status_code == 200
    assert "Consumer &#x27;analytics&#x27; is disabled; enable it first." in refused.content.decode()
    assert not Certificate.objects.filter(consumer=consumer).exists()


def test_an_oauth_client_is_created_with_its_secret_shown_once(console: Client, tenant: Tenant) -> None:
    consumer = consumer_create(actor=ACTOR, tenant=tenant, slug="analytics")
    add = f"{LIST}{consumer.pk}/oauth-clients/add/"

    # the form offers the consumer scopes only, both ticked
    form = console.get(add, secure=True)
    assert form.status_code == 200
    assert [value for value, _ in form.context["form"].fields["scopes"].choices] == ["kafka:consume", "registry:read"]
    assert 'value="provision:write"' not in form.content.decode()

    # when a scope a consumer may not hold is posted
    wrong = console.post(add, {"name": "analytics (prod)", "scopes": ["provision:write"]}, secure=True)
    assert wrong.status_code == 200
    assert wrong.context["form"].errors["scopes"]
    assert not OAuthClient.objects.filter(consumer=consumer).exists()

    # when the client is created
    created = console.post(add, {"name": "analytics (prod)", "scopes": ["kafka:consume", "registry:read"]},
                           secure=True)  # fmt: skip

    # then its secret is in this answer only, never cached, and only its hash is stored
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    client = OAuthClient.objects.get(consumer=consumer)
    assert (client.kind, client.tenant, client.scopes) == ("consumer", tenant, ["kafka:consume", "registry:read"])
    body = created.content.decode()
    secret = re.search(r'<code id="client-secret"[^>]*>([^<]+)</code>', body)
    assert secret is not None
    assert client.secret_hash == hash_token(secret.group(1))
    assert f'<code id="client-principal">User:acme.consumers.analytics.{client.client_id}</code>' in body

    # and the consumer's page lists it, without the secret
    page = console.get(_change(consumer), secure=True).content.decode()
    assert client.client_id in page
    assert secret.group(1) not in page
    assert '<td class="field-credential_count">1</td>' in console.get(LIST, secure=True).content.decode()


def test_deleting_a_consumer_revokes_its_credentials(console: Client, tenant: Tenant, with_ca: Tenant) -> None:
    consumer = consumer_create(actor=ACTOR, tenant=tenant, slug="analytics")
    certificate = consumer_certificate_issue(actor=ACTOR, consumer=consumer, passphrase=PASSPHRASE).certificate
    console.post(f"{LIST}{consumer.pk}/oauth-clients/add/", {"name": "x", "scopes": ["kafka:consume"]}, secure=True)
    assert OAuthClient.objects.filter(consumer=consumer).count() == 1

    deleted = console.post(f"{LIST}{consumer.pk}/delete/", {"post": "yes"}, secure=True)

    assert deleted.status_code == 302
    certificate.refresh_from_db()
    assert certificate.status == "revoked"
    assert not OAuthClient.objects.filter(tenant=tenant, kind="consumer").exists()
