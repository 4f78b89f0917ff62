"""The platform's own certificates: the root CA and the service certificates issued at first
start (Kafka broker, platform admin client, HTTPS web server).

Pure files-and-crypto, no Django: the launcher calls ``ensure_platform_pki`` before it starts
Kafka and nginx.  The root CA key is stored encrypted with the key-encryption key; service
keys are PKCS#8 (Kafka's PEM key store accepts nothing else), mode 0600.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certs import ca
from certs.crl_files import ROOT_CRL_NAME, publish_root_crl
from certs.principals import BROKER, PLATFORM_ADMIN, platform_subject
from config.env import Runtime

ROOT_VALID_DAYS = 3650
SERVICE_VALID_DAYS = 397
# Service certificates are reissued at start when less than this remains.
SERVICE_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class PlatformPki:
    """Paths of the platform's PEM files under ``<state>/pki``."""

    directory: Path

    @property
    def root_cert(self) -> Path:
        return self.directory / "root-ca.crt"

    @property
    def root_key(self) -> Path:
        return self.directory / "root-ca.key"

    @property
    def trust_bundle(self) -> Path:
        """CA certificates Kafka's truststore and nginx's client verification trust."""
        return self.directory / "trust-bundle.pem"

    def cert(self, service: str) -> Path:
        return self.directory / f"{service}.crt"

    def key(self, service: str) -> Path:
        return self.directory / f"{service}.key"

    def keystore(self, service: str) -> Path:
        """Key and certificate chain in one PEM file (Kafka ``ssl.keystore.type=PEM``)."""
        return self.directory / f"{service}.keystore.pem"


def broker_service(node: int) -> str:
    """The PKI file name of broker ``node``'s certificate (broker 1 keeps the single-broker name)."""
    return "broker" if node == 1 else f"broker-{node}"


def public_root_cert(runtime: Runtime) -> Path:
    """The copy of the root CA's certificate nginx serves at ``runtime.root_ca_url``."""
    return runtime.public_pki_dir / "root-ca.crt"


def root_fingerprint(certificate_pem: bytes) -> str:
    """``AB:CD:...``: the SHA-256 fingerprint as ``openssl x509 -noout -fingerprint -sha256``
    prints it, to compare a root CA fetched over plain HTTP with the one Sluice shows."""
    digest = ca.fingerprint_sha256(ca.load_certificate(certificate_pem)).upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def load_root(runtime: Runtime) -> ca.Issuer:
    pki = PlatformPki(runtime.pki_dir)
    return ca.Issuer(
        certificate=ca.load_certificate(pki.root_cert.read_bytes()),
        key=ca.load_private_key(pki.root_key.read_bytes(), runtime.key_encryption_key),
    )


def ensure_root(runtime: Runtime) -> ca.Issuer:
    """The platform root CA, created on first use (the launcher creates it at first start)."""
    pki = PlatformPki(runtime.pki_dir)
    pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _ensure_root(runtime, pki)


def _ensure_root(runtime: Runtime, pki: PlatformPki) -> ca.Issuer:
    if pki.root_cert.exists() and pki.root_key.exists():
        return load_root(runtime)
    key = ca.generate_key()
    cert = ca.create_root_ca(subject=platform_subject("Sluice Root CA"), key=key, valid_days=ROOT_VALID_DAYS)
    _write(pki.root_key, ca.private_key_pem(key, runtime.key_encryption_key), 0o600)
    _write(pki.root_cert, ca.certificate_pem(cert))
    return ca.Issuer(certificate=cert, key=key)


def _san_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def _crl_urls_of(cert: x509.Certificate) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for point in points for name in (point.full_name or [])]


def _ensure_service(
    pki: PlatformPki,
    root: ca.Issuer,
    *,
    service: str,
    common_name: str,
    usage: ca.Usage,
    crl_url: str,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> None:
    cert_path = pki.cert(service)
    if cert_path.exists() and pki.key(service).exists():
        current = ca.load_certificate(cert_path.read_bytes())
        fresh = ca.remaining_lifetime(current) > SERVICE_RENEW_BEFORE
        same_issuer = current.issuer == root.certificate.subject and (
            current.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            == root.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        )
        if (
            fresh
            and same_issuer
            and _san_of(current) == set(dns_names) | set(ip_addresses)
            and _crl_urls_of(current) == [crl_url]
        ):
            return
    key = ca.generate_key()
    cert = ca.issue_leaf(
        issuer=root,
        subject=platform_subject(common_name),
        public_key=key.public_key(),
        usage=usage,
        valid_days=SERVICE_VALID_DAYS,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        crl_urls=[crl_url],
    )
    key_pem = ca.private_key_pem(key)
    chain = ca.certificate_pem(cert) + ca.certificate_pem(root.certificate)
    _write(pki.key(service), key_pem, 0o600)
    _write(pki.cert(service), chain)
    _write(pki.keystore(service), key_pem + chain, 0o600)


def ensure_platform_pki(runtime: Runtime) -> PlatformPki:
    """Create what is missing, renew what is close to expiry; idempotent."""
    pki = PlatformPki(runtime.pki_dir)
    pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = _ensure_root(runtime, pki)
    loopback = ("127.0.0.1", "::1")
    # Every certificate below the root names the root's CRL: with revocation checking on
    # (the broker's JVM), a certificate without revocation information fails validation.
    root_crl = runtime.crl_url(ROOT_CRL_NAME)
    for node in runtime.kafka_nodes:
        # Each broker has its own key and certificate (revoking one broker's certificate
        # shuts out that broker alone), all with the one principal User:broker: the
        # inter-broker and controller listeners need it among the super users, and one name
        # keeps that list (and an operator's) the same for 1, 3 or 5 brokers.
        _ensure_service(
            pki,
            root,
            service=broker_service(node),
            common_name=BROKER,
            crl_url=root_crl,
            # A broker is both: it serves clients and is a TLS client of the other brokers
            # and of the controllers.
            usage=ca.Usage.SERVER_AND_CLIENT,
            dns_names=tuple(dict.fromkeys(("localhost", runtime.kafka_advertised_host))),
            ip_addresses=loopback,
        )
    _ensure_service(pki, root, service="admin", common_name=PLATFORM_ADMIN, usage=ca.Usage.CLIENT, crl_url=root_crl)
    _ensure_service(
        pki,
        root,
        service="web",
        common_name="web",
        crl_url=root_crl,
        usage=ca.Usage.SERVER,
        dns_names=tuple(dict.fromkeys(("localhost", *runtime.public_hostnames))),
        ip_addresses=loopback,
    )
    _write(pki.trust_bundle, ca.certificate_pem(root.certificate))
    runtime.public_pki_dir.mkdir(parents=True, exist_ok=True)
    _write(public_root_cert(runtime), ca.certificate_pem(root.certificate))
    publish_root_crl(runtime, root)
    return pki
