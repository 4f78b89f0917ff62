"""The pure X.509 layer, checked by OpenSSL as an independent verifier."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import ca, crl_files
from certs.platform_pki import PlatformPki, ensure_platform_pki, load_root
from certs.principals import KAFKA_PRINCIPAL_MAPPING_RULES, device_subject, platform_subject
from config.env import load_runtime


def openssl_verify(
    tmp_path: Path, root: x509.Certificate, leaf_chain: bytes, purpose: str
) -> subprocess.CompletedProcess:
    (tmp_path / "root.pem").write_bytes(ca.certificate_pem(root))
    (tmp_path / "leaf.pem").write_bytes(leaf_chain)
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(tmp_path / "root.pem"),
         str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


@pytest.fixture
def root() -> ca.Issuer:
    key = ca.generate_key()
    return ca.Issuer(ca.create_root_ca(subject=platform_subject("Test Root"), key=key, valid_days=30), key)


def test_root_ca_is_a_self_signed_ca(root: ca.Issuer) -> None:
    constraints = root.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = root.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical
    assert constraints.value.ca
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert isinstance(root.certificate.public_key(), ec.EllipticCurvePublicKey)
    assert root.certificate.public_key().curve.name == "secp256r1"


@pytest.mark.parametrize(
    ("usage", "purpose", "eku"),
    [
        (ca.Usage.CLIENT, "sslclient", ExtendedKeyUsageOID.CLIENT_AUTH),
        (ca.Usage.SERVER, "sslserver", ExtendedKeyUsageOID.SERVER_AUTH),
    ],
)
def test_leaf_verifies_with_openssl_for_its_purpose(
    tmp_path: Path, root: ca.Issuer, usage: ca.Usage, purpose: str, eku: x509.ObjectIdentifier
) -> None:
    # given a leaf issued by the root
    key = ca.generate_key()
    leaf = ca.issue_leaf(
        issuer=root, subject=platform_subject("svc"), public_key=key.public_key(), usage=usage, valid_days=5,
        dns_names=["localhost"], ip_addresses=["127.0.0.1"],
    )  # fmt: skip
    # then OpenSSL accepts it in strict mode for that purpose
    result = openssl_verify(tmp_path, root.certificate, ca.certificate_pem(leaf), purpose)
    assert result.returncode == 0, result.stderr
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([eku])
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == root.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def test_client_certificate_is_refused_for_server_use(tmp_path: Path, root: ca.Issuer) -> None:
    key = ca.generate_key()
    leaf = ca.issue_leaf(
        issuer=root, subject=platform_subject("dev"), public_key=key.public_key(), usage=ca.Usage.CLIENT, valid_days=5
    )
    assert openssl_verify(tmp_path, root.certificate, ca.certificate_pem(leaf), "sslserver").returncode != 0


def test_issuing_ca_has_path_length_zero(tmp_path: Path, root: ca.Issuer) -> None:
    key = ca.generate_key()
    issuing = ca.create_issuing_ca(
        issuer=root, subject=ca.name(O="acme", CN="acme issuing CA"), public_key=key.public_key(), valid_days=10,
        crl_urls=["https://localhost:8443/crl/acme.crl"],
    )  # fmt: skip
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    device_key = ca.generate_key(ca.KeyType.RSA_2048)
    leaf = ca.issue_leaf(
        issuer=ca.Issuer(issuing, key), subject=device_subject(tenant="acme", group="g", device="d"),
        public_key=device_key.public_key(), usage=ca.Usage.CLIENT, valid_days=5,
    )  # fmt: skip
    # the leaf's lifetime never outlasts its issuer, and RSA leaves may encipher keys
    assert leaf.not_valid_after_utc <= issuing.not_valid_after_utc
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    chain = ca.certificate_pem(leaf) + ca.certificate_pem(issuing)
    (tmp_path / "untrusted.pem").write_bytes(ca.certificate_pem(issuing))
    (tmp_path / "root.pem").write_bytes(ca.certificate_pem(root.certificate))
    (tmp_path / "leaf.pem").write_bytes(chain)
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(tmp_path / "root.pem"),
         "-untrusted", str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_private_keys_are_pkcs8_and_encryptable() -> None:
    key = ca.generate_key(ca.KeyType.RSA_2048)
    assert ca.private_key_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")
    encrypted = ca.private_key_pem(key, b"kek")
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        ca.load_private_key(encrypted)
    assert isinstance(ca.load_private_key(encrypted, b"kek"), rsa.RSAPrivateKey)


def test_platform_pki_is_created_once_with_an_encrypted_root_key(tmp_path: Path) -> None:
    # given an empty state directory
    runtime = load_runtime({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_KEK": "kek-for-test"})
    # when the platform PKI is ensured twice
    pki = ensure_platform_pki(runtime)
    broker_before = pki.cert("broker").read_bytes()
    ensure_platform_pki(runtime)
    # then nothing was reissued, the root key is encrypted with the KEK, and service keys are private
    assert pki.cert("broker").read_bytes() == broker_before
    assert pki.root_key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert load_root(runtime).certificate.subject == platform_subject("Sluice Root CA")
    for service in ("broker", "admin", "web"):
        assert pki.key(service).stat().st_mode & 0o077 == 0
        assert pki.keystore(service).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    broker = ca.load_certificate(pki.cert("broker").read_bytes())
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert (
        openssl_verify(
            tmp_path, load_root(runtime).certificate, pki.cert("broker").read_bytes(), "sslserver"
        ).returncode
        == 0
    )


def test_a_changed_hostname_reissues_the_web_certificate(tmp_path: Path) -> None:
    env = {"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_KEK": "k"}
    pki = ensure_platform_pki(load_runtime(env))
    before = pki.cert("web").read_bytes()
    ensure_platform_pki(load_runtime({**env, "SLUICE_HOSTNAMES": "iot.example.test"}))
    after = ca.load_certificate(PlatformPki(tmp_path / "pki").cert("web").read_bytes())
    assert pki.cert("web").read_bytes() != before
    names = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert "iot.example.test" in names


def test_principal_rules_keep_platform_and_device_subjects_apart() -> None:
    # RFC 2253 strings as Kafka sees them
    assert platform_subject("broker").rfc4514_string() == "CN=broker,O=Sluice Platform"
    assert device_subject(tenant="acme", group="g1", device="d1").rfc4514_string() == "CN=d1,OU=g1,O=acme"
    assert KAFKA_PRINCIPAL_MAPPING_RULES.endswith("DEFAULT")


def _kafka_principal(rfc2253: str) -> str:
    """Kafka's SslPrincipalMapper over KAFKA_PRINCIPAL_MAPPING_RULES, for these simple rules:
    the first RULE whose pattern matches rewrites the name ($n groups), else DEFAULT."""
    for rule in re.findall(r"RULE:(\^.*?\$)/(.*?)/", KAFKA_PRINCIPAL_MAPPING_RULES):
        pattern, replacement = rule
        found = re.match(pattern, rfc2253)
        if found:
            return "User:" + found.expand(re.sub(r"\$(\d)", r"\\\1", replacement))
    return f"User:{rfc2253}"


def test_a_certificate_with_a_credential_id_is_its_own_principal() -> None:
    # given the subject Sluice issues now: the credential id as UID, last in the sequence
    subject = device_subject(tenant="acme", group="sensors", device="Sensor_01.eu", credential_id="crt_0a1b2c")
    # then RFC 2253 puts UID first, and the first device rule maps it to tenant.group.id
    assert subject.rfc4514_string() == "UID=crt_0a1b2c,CN=Sensor_01.eu,OU=sensors,O=acme"
    assert _kafka_principal(subject.rfc4514_string()) == "User:acme.sensors.crt_0a1b2c"
    # while a certificate issued before credential ids keeps the group principal (no ACL names it)
    assert _kafka_principal("CN=d1,OU=sensors,O=acme") == "User:acme.sensors"
    assert _kafka_principal("CN=broker,O=Sluice Platform") == "User:broker"
    # and an id that could break the principal's shape is refused at issuance
    with pytest.raises(ValueError, match="credential id"):
        device_subject(tenant="acme", group="sensors", device="d1", credential_id="x.y")


def test_a_second_start_keeps_the_root_crl_and_nginx_bundle_until_the_crl_is_due(tmp_path: Path) -> None:
    # given a platform PKI ensured once (a start)
    runtime = load_runtime({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_KEK": "kek-for-test"})
    ensure_platform_pki(runtime)
    bundle = crl_files.bundle_path(runtime)
    root_crl = runtime.crl_dir / f"{crl_files.ROOT_CRL_NAME}.crl"
    before = (bundle.read_bytes(), bundle.stat().st_mtime_ns, root_crl.read_bytes())
    # when it is ensured again (another start, or a restarted broker)
    ensure_platform_pki(runtime)
    # then neither the root CRL nor nginx's bundle changed: nginx has nothing to reload, and
    # no device's keep-alive connection is dropped
    assert (bundle.read_bytes(), bundle.stat().st_mtime_ns, root_crl.read_bytes()) == before
    assert not crl_files.root_crl_due(runtime)
    # and once its nextUpdate is near, it is due (the rotation task, or the next start, re-signs it)
    soon = dt.datetime.now(dt.UTC) + crl_files.ROOT_CRL_VALIDITY - crl_files.ROOT_CRL_REFRESH_BEFORE
    assert crl_files.root_crl_due(runtime, now=soon + dt.timedelta(hours=1))
    # and without the bundle it is due at once
    bundle.unlink()
    assert crl_files.root_crl_due(runtime)
    ensure_platform_pki(runtime)
    assert bundle.exists()
