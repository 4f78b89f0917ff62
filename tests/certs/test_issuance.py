"""Tenant CAs, device certificate issuance, revocation and CRLs, through the API, checked
by OpenSSL as an independent verifier."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from rest_framework.test import APIClient

from certs import ca
from certs.models import Certificate, CertificateAuthority
from certs.platform_pki import ensure_root
from devices.models import Device
from tenants.models import AuditEvent, Tenant
from tests.conftest import client_for, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(operator_client: APIClient) -> Tenant:
    """A tenant made through the API (so it gets its issuing CA), with one device."""
    operator_client.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme"}, format="json")
    tenant = Tenant.objects.get(slug="acme")
    stream = operator_client.post("/api/v1/tenants/acme/streams/", {"region": "eu", "type": "temp"}, format="json")
    operator_client.post("/api/v1/tenants/acme/groups/", {"slug": "sensors", "region": "eu", "device_type": "temp",
                         "stream": stream.json()["id"]}, format="json")  # fmt: skip
    operator_client.post("/api/v1/tenants/acme/devices/", {"device_id": "dev-1", "group": "sensors"}, format="json")
    return tenant


def csr_for(key: Any, subject: str = "evil") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(ca.name(O="someone-else", CN=subject))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def openssl_verify(tmp_path: Path, leaf_pem: str, tenant: Tenant, *, crl: bool) -> subprocess.CompletedProcess:
    from django.conf import settings

    authority = CertificateAuthority.objects.get(tenant=tenant)
    root = ensure_root(settings.SLUICE_RUNTIME)
    (tmp_path / "root.pem").write_bytes(ca.certificate_pem(root.certificate))
    (tmp_path / "tenant-ca.pem").write_text(authority.certificate_pem)
    (tmp_path / "leaf.pem").write_text(leaf_pem)
    args = ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(tmp_path / "root.pem"),
            "-untrusted", str(tmp_path / "tenant-ca.pem")]  # fmt: skip
    if crl:
        authority.refresh_from_db()
        crl_obj = x509.load_der_x509_crl(bytes(authority.crl_der))
        (tmp_path / "tenant.crl").write_bytes(crl_obj.public_bytes(serialization.Encoding.PEM))
        args += ["-crl_check", "-CRLfile", str(tmp_path / "tenant.crl")]
    return subprocess.run([*args, str(tmp_path / "leaf.pem")], capture_output=True, text=True, check=False)


def test_a_new_tenant_gets_an_encrypted_issuing_ca(acme: Tenant) -> None:
    authority = CertificateAuthority.objects.get(tenant=acme)
    cert = ca.load_certificate(authority.certificate_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert authority.encrypted_key_pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert authority.crl_number == 1
    assert AuditEvent.objects.filter(action="ca.create", tenant_slug="acme").exists()


def test_csr_is_signed_with_the_platforms_subject(tmp_path: Path, operator_client: APIClient, acme: Tenant) -> None:
    # given a device key that never leaves the device, and a CSR asking for another subject
    key = ca.generate_key()
    # when the tenant admin submits the CSR
    response = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/", {"csr": csr_for(key)},
                                    format="json")  # fmt: skip
    assert response.status_code == 201, response.json()
    body = response.json()
    # then the certificate names tenant, group and device, whatever the CSR said
    cert = ca.load_certificate(body["certificate_pem"].encode())
    record = Certificate.objects.get(serial=body["serial"])
    credential_id = record.kafka_principal.rsplit(".", 1)[1]
    assert cert.subject.rfc4514_string() == f"UID={credential_id},CN=dev-1,OU=sensors,O=acme"
    # and its own Kafka principal: tenant, group and a credential id of its own
    assert record.kafka_principal == f"User:acme.sensors.{credential_id}"
    assert credential_id.startswith("crt_")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:sluice:device:acme:sensors:dev-1"]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert "private_key_pem" not in body
    # and OpenSSL verifies the chain up to the platform root, with the tenant's CRL
    result = openssl_verify(tmp_path, body["certificate_pem"], acme, crl=True)
    assert result.returncode == 0, result.stderr


def test_generated_key_is_returned_once_and_never_stored(operator_client: APIClient, acme: Tenant) -> None:
    response = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/",
                                    {"generate": True, "passphrase": "correct horse"}, format="json")  # fmt: skip
    assert response.status_code == 201, response.json()
    body = response.json()
    assert response["Cache-Control"] == "no-store"
    key = serialization.load_pem_private_key(body["private_key_pem"].encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    bundle_key, bundle_cert, extra = pkcs12.load_key_and_certificates(
        base64.b64decode(body["pkcs12_base64"]), b"correct horse"
    )
    assert bundle_cert is not None
    assert bundle_cert.serial_number == int(body["serial"], 16)
    assert len(extra) == 1
    assert bundle_key is not None
    stored = Certificate.objects.get(serial=body["serial"])
    assert all("PRIVATE KEY" not in str(getattr(stored, f.attname)) for f in Certificate._meta.concrete_fields)
    listed = operator_client.get("/api/v1/tenants/acme/devices/dev-1/certificates/").json()["results"]
    assert "private_key_pem" not in listed[0]
    weak = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/",
                                {"generate": True, "passphrase": "short"}, format="json")  # fmt: skip
    assert weak.status_code == 400
    assert weak.json()["error"]["fields"][0]["pointer"] == "/passphrase"


def test_revocation_reaches_the_crl(tmp_path: Path, operator_client: APIClient, acme: Tenant) -> None:
    issued = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/",
                                  {"csr": csr_for(ca.generate_key())}, format="json").json()  # fmt: skip
    # when the certificate is revoked
    response = operator_client.post(f"/api/v1/tenants/acme/certificates/{issued['serial']}/revoke",
                                    {"reason": "key_compromise"}, format="json")  # fmt: skip
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "revoked"
    # then the new CRL lists it and OpenSSL refuses the chain
    authority = CertificateAuthority.objects.get(tenant=acme)
    assert authority.crl_number == 2
    crl = x509.load_der_x509_crl(bytes(authority.crl_der))
    entry = crl.get_revoked_certificate_by_serial_number(int(issued["serial"], 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    result = openssl_verify(tmp_path, issued["certificate_pem"], acme, crl=True)
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr
    # and revoking again, or with a made-up reason, is a clear error
    again = operator_client.post(f"/api/v1/tenants/acme/certificates/{issued['serial']}/revoke", {}, format="json")
    assert again.status_code == 409
    other = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/",
                                 {"csr": csr_for(ca.generate_key())}, format="json").json()  # fmt: skip
    bad_reason = operator_client.post(f"/api/v1/tenants/acme/certificates/{other['serial']}/revoke",
                                      {"reason": "bored"}, format="json")  # fmt: skip
    assert bad_reason.status_code == 400
    assert AuditEvent.objects.filter(action="certificate.revoke").count() == 1


def _bad_signature_csr() -> str:
    der = bytearray(x509.load_pem_x509_csr(csr_for(ca.generate_key(ca.KeyType.RSA_2048)).encode()).public_bytes(
        serialization.Encoding.DER))  # fmt: skip
    der[-5] ^= 0xFF  # flip bits inside the signature value
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


BAD_CSRS: dict[str, tuple[Callable[[], str], str]] = {
    "garbage": (lambda: "hello", "malformed_csr"),
    "truncated PEM": (lambda: csr_for(ca.generate_key())[:120], "malformed_csr"),
    "bad signature": (_bad_signature_csr, "bad_csr_signature"),
    "RSA-1024": (lambda: csr_for(rsa.generate_private_key(65537, 1024)), "weak_key"),  # noqa: S505 - on purpose
    "P-521": (lambda: csr_for(ec.generate_private_key(ec.SECP521R1())), "unsupported_key"),
    "secp256k1": (lambda: csr_for(ec.generate_private_key(ec.SECP256K1())), "unsupported_key"),
}


@pytest.mark.parametrize("case", list(BAD_CSRS))
def test_bad_csrs_are_refused_with_a_stable_code(operator_client: APIClient, acme: Tenant, case: str) -> None:
    make_csr, code = BAD_CSRS[case]
    response = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/", {"csr": make_csr()},
                                    format="json")  # fmt: skip
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["fields"][0] == {
        "pointer": "/csr", "code": code, "message": response.json()["error"]["message"]
    }  # fmt: skip
    assert not Certificate.objects.exists()


def test_issue_needs_exactly_one_of_csr_or_generate(operator_client: APIClient, acme: Tenant) -> None:
    for body in ({}, {"csr": "x", "generate": True, "passphrase": "long enough"}, {"generate": True}):
        response = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/", body, format="json")
        assert response.status_code == 400, body


def test_other_tenants_devices_and_certificates_do_not_exist(operator_client: APIClient, acme: Tenant) -> None:
    issued = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/",
                                  {"csr": csr_for(ca.generate_key())}, format="json").json()  # fmt: skip
    operator_client.post("/api/v1/tenants/", {"slug": "globex", "name": "Globex"}, format="json")
    globex_admin = client_for(make_user("globex-admin", tenant=Tenant.objects.get(slug="globex")))
    for response in (
        globex_admin.post("/api/v1/tenants/acme/devices/dev-1/certificates/", {"csr": csr_for(ca.generate_key())},
                          format="json"),
        globex_admin.get("/api/v1/tenants/acme/devices/dev-1/certificates/"),
        globex_admin.post(f"/api/v1/tenants/acme/certificates/{issued['serial']}/revoke", {}, format="json"),
        globex_admin.get(f"/api/v1/tenants/globex/certificates/{issued['serial']}/"),
        globex_admin.post(f"/api/v1/tenants/globex/certificates/{issued['serial']}/revoke", {}, format="json"),
        globex_admin.post("/api/v1/tenants/globex/devices/dev-1/certificates/", {"csr": csr_for(ca.generate_key())},
                          format="json"),
    ):  # fmt: skip
        assert response.status_code == 404
    assert Certificate.objects.get(serial=issued["serial"]).status == "active"
    viewer = client_for(make_user("acme-viewer", tenant=acme, role="viewer"))
    assert viewer.post("/api/v1/tenants/acme/devices/dev-1/certificates/", {"csr": csr_for(ca.generate_key())},
                       format="json").status_code == 403  # fmt: skip


def test_oauth_only_groups_and_disabled_devices_get_no_certificate(operator_client: APIClient, acme: Tenant) -> None:
    Device.objects.filter(device_id="dev-1").update(status="disabled")
    disabled = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/",
                                    {"csr": csr_for(ca.generate_key())}, format="json")  # fmt: skip
    assert (disabled.status_code, disabled.json()["error"]["code"]) == (409, "device_disabled")  # the state refuses
    Device.objects.filter(device_id="dev-1").update(status="active")
    operator_client.patch("/api/v1/tenants/acme/groups/sensors/", {"credential_policy": "oauth2"}, format="json")
    oauth = operator_client.post("/api/v1/tenants/acme/devices/dev-1/certificates/",
                                 {"csr": csr_for(ca.generate_key())}, format="json")  # fmt: skip
    assert oauth.status_code == 409
    assert oauth.json()["error"]["fields"][0]["code"] == "credential_policy"


def test_bulk_issuance_for_imported_devices(operator_client: APIClient, acme: Tenant) -> None:
    # given a bulk-imported fleet
    rows = [{"device_id": f"fleet-{i:03d}", "group": "sensors"} for i in range(50)]
    assert (
        operator_client.post("/api/v1/tenants/acme/devices/bulk", {"devices": rows}, format="json").status_code == 201
    )
    # when certificates are issued for all of them, half from CSRs, half server-generated
    items = [{"device_id": f"fleet-{i:03d}", **({"csr": csr_for(ca.generate_key())} if i % 2 else {})}
             for i in range(50)]  # fmt: skip
    response = operator_client.post("/api/v1/tenants/acme/certificates/bulk", {"items": items}, format="json")
    # then every device has one, keys only for the generated ones
    assert response.status_code == 201, response.json()
    issued = response.json()["issued"]
    assert len(issued) == 50
    assert sum("private_key_pem" in i for i in issued) == 25
    assert Certificate.objects.filter(tenant=acme, device_ref__startswith="fleet-").count() == 50


def test_bulk_issuance_is_all_or_nothing(operator_client: APIClient, acme: Tenant) -> None:
    items = [
        {"device_id": "dev-1"},
        {"device_id": "ghost"},
        {"device_id": "dev-1"},
        {"device_id": "dev-1", "csr": "junk"},
    ]
    response = operator_client.post("/api/v1/tenants/acme/certificates/bulk", {"items": items}, format="json")
    assert response.status_code == 409  # well formed; what exists (and repeats) refuses it
    found = {(f["pointer"], f["code"]) for f in response.json()["error"]["fields"]}
    assert found == {("/items/1/device_id", "does_not_exist"), ("/items/2/device_id", "duplicate"),
                     ("/items/3/device_id", "duplicate")}  # fmt: skip
    assert not Certificate.objects.exists()


@pytest.mark.parametrize(
    ("change", "reason"),
    [("disable", "certificate_hold"), ("move", "affiliation_changed"), ("delete", "cessation_of_operation")],
)
def test_a_device_that_is_disabled_moved_or_deleted_loses_its_certificates(
    operator_client: APIClient, acme: Tenant, change: str, reason: str
) -> None:
    # given a device with two usable certificates (Kafka authorizes its group, not the device)
    base = "/api/v1/tenants/acme"
    serials = [operator_client.post(f"{base}/devices/dev-1/certificates/", {"csr": csr_for(ca.generate_key())},
                                    format="json").json()["serial"] for _ in range(2)]  # fmt: skip
    stream = operator_client.get(f"{base}/streams/").json()["results"][0]["id"]
    operator_client.post(f"{base}/groups/", {"slug": "others", "region": "eu", "device_type": "temp",
                         "stream": stream}, format="json")  # fmt: skip
    # when the device is disabled, moved to another group, or deleted
    if change == "disable":
        response = operator_client.patch(f"{base}/devices/dev-1/", {"status": "disabled"}, format="json")
    elif change == "move":
        response = operator_client.patch(f"{base}/devices/dev-1/", {"group": "others"}, format="json")
    else:
        response = operator_client.delete(f"{base}/devices/dev-1/")
    assert response.status_code in (200, 204), response.content
    # then both certificates are revoked with the reason, in one new CRL, and audited
    revoked = Certificate.objects.filter(serial__in=serials)
    assert {(c.status, c.revocation_reason) for c in revoked} == {("revoked", reason)}
    authority = CertificateAuthority.objects.get(tenant=acme)
    assert authority.crl_number == 2
    crl = x509.load_der_x509_crl(bytes(authority.crl_der))
    assert {format(r.serial_number, "x") for r in crl} == set(serials)
    assert AuditEvent.objects.filter(action="certificate.revoke").count() == 2


def test_a_label_change_revokes_nothing(operator_client: APIClient, acme: Tenant) -> None:
    base = "/api/v1/tenants/acme"
    serial = operator_client.post(f"{base}/devices/dev-1/certificates/", {"csr": csr_for(ca.generate_key())},
                                  format="json").json()["serial"]  # fmt: skip
    assert operator_client.patch(f"{base}/devices/dev-1/", {"labels": {"site": "a"}}, format="json").status_code == 200
    assert Certificate.objects.get(serial=serial).status == "active"
