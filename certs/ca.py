"""Pure X.509 operations for Sluice's PKI: keys, CAs and leaf certificates.

No ORM and no settings here, so the code that decides what a certificate says can be read
and tested on its own.  Profiles follow RFC 5280: CA certificates carry
basicConstraints(cA, pathLen) and keyUsage keyCertSign/cRLSign; leaf certificates carry
digitalSignature (+ keyEncipherment for RSA), an extendedKeyUsage, and SKI/AKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# Backdating absorbs small clock skew between Sluice and the peers that verify.
CLOCK_SKEW = dt.timedelta(minutes=5)


class KeyType(StrEnum):
    """Key algorithms Sluice issues for.  P-256 by default; RSA where a device needs it."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


class Usage(StrEnum):
    """What a leaf certificate is for (its extendedKeyUsage)."""

    CLIENT = "client"
    SERVER = "server"
    SERVER_AND_CLIENT = "server+client"


def generate_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = int(key_type.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def name(**attributes: str) -> x509.Name:
    """Build a Name from most significant to least significant attribute, e.g.
    ``name(O="sluice", OU="platform", CN="broker")``; RFC 2253 renders it reversed
    (``CN=broker,OU=platform,O=sluice``), which is the string Kafka's principal rules see."""
    oids = {
        "DC": NameOID.DOMAIN_COMPONENT,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": NameOID.COMMON_NAME,
        "C": NameOID.COUNTRY_NAME,
        # RFC 4519 userid (0.9.2342.19200300.100.1.1); RFC 2253 names it UID, as does Java's
        # X500Principal, so Kafka's principal rules see "UID=<value>".
        "UID": NameOID.USER_ID,
    }
    return x509.Name([x509.NameAttribute(oids[key], value) for key, value in attributes.items()])


@dataclass(frozen=True)
class Issuer:
    """A CA certificate with its private key, able to sign."""

    certificate: x509.Certificate
    key: PrivateKey


def create_root_ca(*, subject: x509.Name, key: PrivateKey, valid_days: int) -> x509.Certificate:
    """A self-signed root; pathLen unset so it can sign issuing CAs."""
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, _signature_hash(key))
    )


def create_issuing_ca(
    *,
    issuer: Issuer,
    subject: x509.Name,
    public_key: PublicKey,
    valid_days: int,
    crl_urls: Sequence[str] = (),
) -> x509.Certificate:
    """An intermediate CA with pathLen 0: it may sign leaf certificates only."""
    builder = _base_builder(issuer, subject, public_key, valid_days)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(_ca_key_usage(), critical=True)
    builder = _add_crl_distribution_points(builder, crl_urls)
    return builder.sign(issuer.key, _signature_hash(issuer.key))


def issue_leaf(
    *,
    issuer: Issuer,
    subject: x509.Name,
    public_key: PublicKey,
    usage: Usage,
    valid_days: int,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    uris: Iterable[str] = (),
    crl_urls: Sequence[str] = (),
) -> x509.Certificate:
    """A leaf certificate with the platform's own subject and extensions."""
    builder = _base_builder(issuer, subject, public_key, valid_days)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            # RSA key exchange (TLS 1.2 RSA kx) needs keyEncipherment; EC keys must not assert it.
            key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            content_commitment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    ekus = {
        Usage.CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH],
        Usage.SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
        Usage.SERVER_AND_CLIENT: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    }[usage]
    builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    general_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    general_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    general_names += [x509.UniformResourceIdentifier(u) for u in uris]
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    builder = _add_crl_distribution_points(builder, crl_urls)
    return builder.sign(issuer.key, _signature_hash(issuer.key))


def _base_builder(
    issuer: Issuer, subject: x509.Name, public_key: PublicKey, valid_days: int
) -> x509.CertificateBuilder:
    now = _now()
    not_after = min(now + dt.timedelta(days=valid_days), issuer.certificate.not_valid_after_utc)
    issuer_ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
            critical=False,
        )
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _add_crl_distribution_points(builder: x509.CertificateBuilder, crl_urls: Sequence[str]) -> x509.CertificateBuilder:
    if not crl_urls:
        return builder
    points = [
        x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        for url in crl_urls
    ]
    return builder.add_extension(x509.CRLDistributionPoints(points), critical=False)


# -- serialisation ------------------------------------------------------------------------


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM ("BEGIN PRIVATE KEY"), the only form Kafka's PEM key stores accept;
    encrypted with ``passphrase`` when given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key(pem: bytes, passphrase: bytes | None = None) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def load_certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def remaining_lifetime(certificate: x509.Certificate) -> dt.timedelta:
    return certificate.not_valid_after_utc - _now()


# -- certificate signing requests -------------------------------------------------------

ALLOWED_CURVES = {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192


class CsrProblem(ValueError):
    """A CSR Sluice will not sign; ``code`` is stable for API clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER; anything else is ``malformed_csr``."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise CsrProblem("malformed_csr", "Not a PEM or DER certificate signing request (PKCS#10).") from None


def key_type_of(public_key: object) -> KeyType:
    """The KeyType of a public key Sluice accepts, else ``weak_key`` / ``unsupported_key``."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ALLOWED_CURVES:
            raise CsrProblem("unsupported_key", f"Curve {public_key.curve.name} is not supported; use P-256 or P-384.")
        return ALLOWED_CURVES[public_key.curve.name]
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CsrProblem("weak_key", f"RSA-{public_key.key_size} is too weak; use at least RSA-{MIN_RSA_BITS}.")
        if public_key.key_size > MAX_RSA_BITS:
            raise CsrProblem("unsupported_key", f"RSA-{public_key.key_size} is larger than {MAX_RSA_BITS} bits.")
        return KeyType(f"rsa-{public_key.key_size}") if public_key.key_size in (2048, 3072, 4096) else KeyType.RSA_2048
    raise CsrProblem("unsupported_key", f"{type(public_key).__name__} keys are not supported; use ECDSA or RSA.")


def check_csr(csr: x509.CertificateSigningRequest) -> KeyType:
    """Proof of possession (the CSR's self-signature) and an acceptable key.  The CSR's
    subject and extensions are ignored: Sluice sets its own."""
    if not csr.is_signature_valid:
        raise CsrProblem("bad_csr_signature", "The CSR's signature does not verify with its own public key.")
    return key_type_of(csr.public_key())


# -- revocation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Revoked:
    serial: int
    revoked_at: dt.datetime
    reason: x509.ReasonFlags | None = None


def build_crl(
    *, issuer: Issuer, revoked: Sequence[Revoked], number: int, valid_for: dt.timedelta
) -> x509.CertificateRevocationList:
    """A CRL (RFC 5280 §5) with a CRL number and the issuer's AKI."""
    now = _now()
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + valid_for)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for item in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(item.serial).revocation_date(item.revoked_at)
        if item.reason is not None and item.reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(item.reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer.key, _signature_hash(issuer.key))


def pkcs12_bundle(*, name: str, key: PrivateKey, certificate: x509.Certificate, chain: Sequence[x509.Certificate],
                  passphrase: bytes) -> bytes:  # fmt: skip
    from cryptography.hazmat.primitives.serialization import pkcs12

    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, certificate, list(chain), serialization.BestAvailableEncryption(passphrase)
    )


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()
