"""Consumers over the REST API: create, read, change, delete; their certificates and OAuth
clients; what a consumer's credentials reach (the scoped registry) and what they do not
(the REST API, ingest).  Kafka's side is tests/integration/test_kafka_consumers.py."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from django.conf import settings
from rest_framework.test import APIClient

from certs import ca
from certs.models import Certificate
from certs.services import tenant_ca_create
from devices.models import Consumer, Stream
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.oauth.models import OAuthClient
from tests.tenants.oauth.support import access_token, bearer, decode_with_published_jwks, make_oauth_client

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("test")
BASE = "/api/v1/tenants/acme/consumers/"


@pytest.fixture
def pki(tenant: Tenant, other_tenant: Tenant) -> None:
    tenant_ca_create(actor=ACTOR, tenant=tenant)
    tenant_ca_create(actor=ACTOR, tenant=other_tenant)


def _csr() -> str:
    key = ca.generate_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(ca.name(CN="anything")).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_create_reads_every_stream_by_default_and_names_its_prefixes(admin_client: APIClient, tenant: Tenant) -> None:
    created = admin_client.post(BASE, {"slug": "analytics", "name": "Analytics"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    stream = Stream.objects.get(tenant=tenant)
    assert body["all_streams"] is True
    assert body["streams"] == [stream.pk]
    assert body["topics"] == ["iot.acme.eu.temperature"]
    assert body["kafka_principal_prefix"] == "User:acme.consumers.analytics."
    assert body["group_prefix"] == "acme.analytics."
    assert body["status"] == "active"
    assert AuditEvent.objects.filter(action="consumer.create", tenant=tenant).exists()
    # a stream added later is read too
    Stream.objects.create(tenant=tenant, region="us", type="vibration")
    assert admin_client.get(f"{BASE}analytics/").json()["topics"] == [
        "iot.acme.eu.temperature",
        "iot.acme.us.vibration",
    ]


def test_selected_streams_and_the_dlq(admin_client: APIClient, tenant: Tenant) -> None:
    other = Stream.objects.create(tenant=tenant, region="us", type="vibration")
    created = admin_client.post(BASE, {"slug": "vib", "streams": [other.pk], "dead_letters": True}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["all_streams"] is False
    assert created.json()["topics"] == ["iot.acme.us.vibration", "iot.acme.dlq"]
    # widening to all streams forgets the selection; naming streams narrows again
    wide = admin_client.patch(f"{BASE}vib/", {"all_streams": True}, format="json")
    assert wide.status_code == 200, wide.content
    assert wide.json()["topics"] == ["iot.acme.eu.temperature", "iot.acme.us.vibration", "iot.acme.dlq"]
    narrow = admin_client.patch(f"{BASE}vib/", {"streams": [other.pk], "dead_letters": False}, format="json")
    assert narrow.json()["topics"] == ["iot.acme.us.vibration"]


def test_bad_inputs_get_precise_errors(admin_client: APIClient, tenant: Tenant, other_tenant: Tenant) -> None:
    admin_client.post(BASE, {"slug": "analytics"}, format="json")
    cases = [
        ({"slug": "analytics"}, 409, "/slug", "unique"),
        ({"slug": "Not A Slug"}, 400, "/slug", None),
        ({"slug": "x.y"}, 400, "/slug", None),
        ({"slug": "bb", "streams": [Stream.objects.get(tenant=other_tenant).pk]}, 404, "/streams/0", "does_not_exist"),
        ({"slug": "cc", "streams": [987654]}, 404, "/streams/0", "does_not_exist"),
        ({"slug": "dd", "all_streams": True, "streams": [Stream.objects.get(tenant=tenant).pk]}, 400, "/streams",
         "all_streams_granted"),
        ({"slug": "ee", "streams": "1"}, 400, "/streams", None),
        ({"slug": "ff", "status": "paused"}, 400, "/status", None),
        ({"slug": "gg", "extra": 1}, 400, "/extra", None),
    ]  # fmt: skip
    for body, status, pointer, code in cases:
        answer = admin_client.post(BASE, body, format="json")
        assert answer.status_code == status, (body, answer.content)
        fields = answer.json()["error"]["fields"]
        assert pointer in [f["pointer"] for f in fields], (body, fields)
        if code:
            assert code in [f["code"] for f in fields], (body, fields)
    assert admin_client.patch(f"{BASE}analytics/", {"slug": "renamed"}, format="json").status_code == 400
    assert list(Consumer.objects.values_list("slug", flat=True)) == ["analytics"]


def test_viewers_read_admins_write_and_other_tenants_are_absent(
    admin_client: APIClient, viewer_client: APIClient, other_tenant: Tenant
) -> None:
    admin_client.post(BASE, {"slug": "analytics"}, format="json")
    assert viewer_client.get(f"{BASE}analytics/").status_code == 200
    assert viewer_client.post(BASE, {"slug": "v"}, format="json").status_code == 403
    assert viewer_client.patch(f"{BASE}analytics/", {"status": "disabled"}, format="json").status_code == 403
    assert viewer_client.delete(f"{BASE}analytics/").status_code == 403
    assert admin_client.get("/api/v1/tenants/globex/consumers/").status_code == 404


def test_certificates_generated_and_from_a_csr(admin_client: APIClient, tenant: Tenant, pki: None) -> None:
    admin_client.post(BASE, {"slug": "analytics"}, format="json")
    generated = admin_client.post(f"{BASE}analytics/certificates/", {"generate": True, "passphrase": "correct horse"},
                                  format="json")  # fmt: skip
    assert generated.status_code == 201, generated.content
    assert generated["Cache-Control"] == "no-store"
    body = generated.json()
    assert body["consumer"] == "analytics"
    assert body["device"] == ""
    assert body["kafka_principal"].startswith("User:acme.consumers.analytics.crt_")
    credential_id = body["kafka_principal"].rsplit(".", 1)[1]
    # the subject the broker's mapping rule turns into that principal
    assert body["subject"] == f"UID={credential_id},CN=analytics,O=acme"
    assert body["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert body["pkcs12_base64"]
    from_csr = admin_client.post(f"{BASE}analytics/certificates/", {"csr": _csr()}, format="json")
    assert from_csr.status_code == 201, from_csr.content
    assert "private_key_pem" not in from_csr.json()
    listed = admin_client.get(f"{BASE}analytics/certificates/").json()
    assert listed["count"] == 2
    assert Certificate.objects.filter(consumer__slug="analytics").count() == 2


def test_a_disabled_consumer_gets_no_certificate_and_no_client(admin_client: APIClient, pki: None) -> None:
    admin_client.post(BASE, {"slug": "analytics", "status": "disabled"}, format="json")
    refused = admin_client.post(f"{BASE}analytics/certificates/", {"csr": _csr()}, format="json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "consumer_disabled"
    client = admin_client.post("/api/v1/tenants/acme/oauth-clients/", {"name": "c", "kind": "consumer",
                               "consumer": "analytics", "scopes": ["kafka:consume"]}, format="json")  # fmt: skip
    assert client.status_code == 409, client.content
    assert client.json()["error"]["fields"][0]["code"] == "consumer_disabled"


def test_consumer_clients_hold_consumer_scopes_only_and_name_their_principal(
    admin_client: APIClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    admin_client.post(BASE, {"slug": "analytics"}, format="json")
    url = "/api/v1/tenants/acme/oauth-clients/"
    body = {"name": "reader", "kind": "consumer", "consumer": "analytics", "scopes": ["kafka:consume", "registry:read"]}
    created = admin_client.post(url, body, format="json")
    assert created.status_code == 201, created.content
    client = created.json()
    assert client["consumer"] == "analytics"
    assert client["kafka_principal"] == f"acme.consumers.analytics.{client['client_id']}"
    # the token carries the principal the broker maps, and the audiences of its scopes
    token = access_token(client["client_id"], client["client_secret"])
    _header, claims = decode_with_published_jwks(token)
    assert claims["kafka_principal"] == f"acme.consumers.analytics.{client['client_id']}"
    assert sorted(claims["aud"]) == ["kafka", "sluice-registry"]
    # bad inputs
    Consumer.objects.create(tenant=other_tenant, slug="theirs")
    for wrong, status in (
        ({**body, "scopes": ["provision:read"]}, 400),
        ({**body, "scopes": ["kafka:produce"]}, 400),
        ({**body, "consumer": "theirs"}, 404),  # another tenant's consumer reads as a missing one
        ({**body, "consumer": None}, 400),
        ({**body, "group": "sensors"}, 400),
        ({"name": "s", "kind": "service", "scopes": ["provision:read"], "consumer": "analytics"}, 400),
    ):
        answer = admin_client.post(url, wrong, format="json")
        assert answer.status_code == status, (wrong, answer.content)
    assert OAuthClient.objects.filter(kind="consumer").count() == 1


def test_a_consumers_token_and_certificate_reach_the_registry_not_the_api(
    admin_client: APIClient, tenant: Tenant, pki: None
) -> None:
    admin_client.post(BASE, {"slug": "analytics"}, format="json")
    consumer = Consumer.objects.get(slug="analytics")
    client, secret = make_oauth_client(tenant, "consumer", consumer=consumer)
    token = bearer(access_token(client.client_id, secret))
    # the REST API refuses it (its audience is Kafka's and the registry's)
    assert token.get("/api/v1/tenants/acme/").status_code == 401
    assert token.get("/registry/acme/subjects", secure=True).status_code in (200, 503)
    assert token.get("/registry/globex/subjects", secure=True).status_code == 404
    # a token without registry:read is refused there
    narrow = bearer(access_token(client.client_id, secret, scope="kafka:consume"))
    assert narrow.get("/registry/acme/subjects", secure=True).status_code == 401
    # the consumer's certificate, as nginx forwards it
    issued = admin_client.post(f"{BASE}analytics/certificates/", {"csr": _csr()}, format="json").json()
    by_cert = APIClient()
    by_cert.credentials(HTTP_X_SLUICE_PROXY_SECRET=settings.SLUICE_PROXY_SECRET, HTTP_X_SLUICE_CLIENT_VERIFY="SUCCESS",
                        HTTP_X_SLUICE_CLIENT_CERT=quote(issued["certificate_pem"]))  # fmt: skip
    assert by_cert.get("/registry/acme/subjects", secure=True).status_code in (200, 503)
    assert by_cert.get("/registry/globex/subjects", secure=True).status_code == 404
    assert by_cert.get("/api/v1/tenants/acme/").status_code in (401, 403)
    # a revoked certificate is refused at once (the row decides before nginx's CRL reload)
    second = admin_client.post(f"{BASE}analytics/certificates/", {"csr": _csr()}, format="json").json()
    revoked = APIClient()
    revoked.credentials(HTTP_X_SLUICE_PROXY_SECRET=settings.SLUICE_PROXY_SECRET, HTTP_X_SLUICE_CLIENT_VERIFY="SUCCESS",
                        HTTP_X_SLUICE_CLIENT_CERT=quote(second["certificate_pem"]))  # fmt: skip
    assert admin_client.post(f"/api/v1/tenants/acme/certificates/{second['serial']}/revoke", {},
                             format="json").status_code == 200  # fmt: skip
    refused_cert = revoked.get("/registry/acme/subjects", secure=True)
    assert (refused_cert.status_code, refused_cert.json()["error"]["code"]) == (403, "certificate_revoked")
    # disabling the consumer ends both at once
    admin_client.patch(f"{BASE}analytics/", {"status": "disabled"}, format="json")
    assert by_cert.get("/registry/acme/subjects", secure=True).json()["error"]["code"] == "consumer_disabled"
    refused = token.get("/registry/acme/subjects", secure=True)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "consumer_disabled"


def test_delete_revokes_its_certificates_and_removes_its_clients(
    admin_client: APIClient, tenant: Tenant, pki: None
) -> None:
    admin_client.post(BASE, {"slug": "analytics"}, format="json")
    consumer = Consumer.objects.get(slug="analytics")
    admin_client.post(f"{BASE}analytics/certificates/", {"csr": _csr()}, format="json")
    make_oauth_client(tenant, "consumer", consumer=consumer)
    assert admin_client.delete(f"{BASE}analytics/").status_code == 204
    certificate = Certificate.objects.get(kafka_principal__startswith="User:acme.consumers.analytics.")
    assert certificate.status == "revoked"
    assert certificate.revocation_reason == "cessation_of_operation"
    assert not OAuthClient.objects.filter(kind="consumer").exists()
    assert AuditEvent.objects.filter(action="oauth_client.revoke", tenant=tenant).exists()
    assert admin_client.get(f"{BASE}analytics/").status_code == 404


def test_naming_no_stream_narrows_to_none_and_list_items_are_typed(admin_client: APIClient, tenant: Tenant) -> None:
    admin_client.post(BASE, {"slug": "analytics", "dead_letters": True}, format="json")
    # "streams": [] on an all-streams consumer means what it says: no stream (the DLQ stays)
    narrowed = admin_client.patch(f"{BASE}analytics/", {"streams": []}, format="json")
    assert narrowed.status_code == 200, narrowed.content
    assert (narrowed.json()["all_streams"], narrowed.json()["topics"]) == (False, ["iot.acme.dlq"])
    created = admin_client.post(BASE, {"slug": "nothing", "streams": []}, format="json").json()
    assert (created["all_streams"], created["topics"]) == (False, [])
    # stream ids are JSON integers, as the document says (JSON Schema 2020-12's: 1.0 is one),
    # not strings, fractions or booleans coerced
    stream = Stream.objects.get(tenant=tenant).pk
    for wrong in ([str(stream)], [stream + 0.5], [True]):
        refused = admin_client.post(BASE, {"slug": "typed", "streams": wrong}, format="json")
        assert refused.status_code == 400, (wrong, refused.content)
        assert refused.json()["error"]["fields"][0]["pointer"] == "/streams"


def test_the_registry_judges_its_own_tokens_and_says_why(tenant: Tenant, pki: None) -> None:
    import datetime as dt

    from tenants.oauth import tokens

    consumer = Consumer.objects.create(tenant=tenant, slug="analytics")
    client, _secret = make_oauth_client(tenant, "consumer", consumer=consumer)
    expired, _ = tokens.mint_access_token(settings.SLUICE_RUNTIME, client_id=client.client_id, tenant="acme",
                                          scopes=["registry:read"], audiences=[tokens.AUD_REGISTRY],
                                          now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))  # fmt: skip
    refused = bearer(expired).get("/registry/acme/subjects", secure=True)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_expired"
    assert refused["WWW-Authenticate"].startswith('Bearer realm="sluice-registry", error="invalid_token"')


def test_a_consumers_certificate_is_not_renewed_over_est(admin_client: APIClient, pki: None) -> None:
    import base64

    admin_client.post(BASE, {"slug": "analytics"}, format="json")
    issued = admin_client.post(f"{BASE}analytics/certificates/", {"csr": _csr()}, format="json").json()
    csr = x509.load_pem_x509_csr(_csr().encode()).public_bytes(serialization.Encoding.DER)
    answer = APIClient().post(
        "/.well-known/est/acme/simplereenroll", data=base64.encodebytes(csr), content_type="application/pkcs10",
        headers={"X-Sluice-Client-Verify": "SUCCESS", "X-Sluice-Client-Cert": quote(issued["certificate_pem"]),
                 "X-Sluice-Proxy-Secret": settings.SLUICE_PROXY_SECRET},
        secure=True,
    )  # fmt: skip
    assert (answer.status_code, answer.json()["error"]["code"]) == (403, "not_a_device_certificate")
