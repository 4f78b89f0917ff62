"""Talking to Sluice over HTTPS: the ingest endpoint (``POST /ingest/v1/records``, NDJSON, with
an ``Idempotency-Key``), the OAuth2 token endpoint (``POST /oauth/token``, client-credentials
grant, RFC 6749 section 4.4) and EST renewal (RFC 7030 ``simplereenroll`` and ``cacerts``).

The standard library's ``http.client`` and ``ssl`` only: a gateway needs no HTTP library."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import logging
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

log = logging.getLogger("sluice_agent")
INGEST_PATH = "/ingest/v1/records"
TOKEN_PATH = "/oauth/token"  # noqa: S105 (a path, not a secret)
TIMEOUT = 30.0


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers (lower-cased names) and the body parsed as JSON, if it is."""

    status: int
    headers: dict[str, str]
    body: Any

    @property
    def code(self) -> str:
        """Sluice's error code (``{"error": {"code": ...}}``), or ``""``."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code", "")) if isinstance(error, dict) else ""

    @property
    def message(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("message", "")) if isinstance(error, dict) else str(self.body)[:300]

    def retry_after(self, default: float) -> float:
        try:
            return max(0.0, float(self.headers.get("retry-after", "")))
        except ValueError:
            return default


@dataclass
class Credentials:
    """Who the agent is: a device certificate (mTLS; ``cert`` holds the chain: the certificate
    and its tenant CA) or an OAuth2 client of a device (its access token as ``Bearer``)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    client_id: str | None = None
    client_secret: str | None = None
    _token: str | None = field(default=None, repr=False)
    _token_until: float = 0.0

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context

    @property
    def uses_token(self) -> bool:
        return self.client_id is not None

    def forget_token(self) -> None:
        self._token, self._token_until = None, 0.0


class Sender(Protocol):
    """What the forwarder sends batches through: ``Sluice`` (HTTPS) or ``mqtt.MqttSluice``."""

    @property
    def credentials(self) -> Credentials: ...

    def send(self, body: bytes, key: str) -> Answer: ...

    def renew_certificate(self) -> x509.Certificate: ...

    def close(self) -> None: ...


class Sluice:
    """One HTTPS connection to Sluice, opened again after any failure."""

    def __init__(self, url: str, credentials: Credentials) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ValueError(f"--url must be https://host[:port] (got {url!r})")
        self.host, self.port = parsed.hostname, parsed.port or 443
        self.base = parsed.path.rstrip("/")
        self.credentials = credentials
        self._context = credentials.context()
        self._connection: http.client.HTTPSConnection | None = None

    def reload(self) -> None:
        """Use the certificate files again (after a renewal)."""
        self._context = self.credentials.context()
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        """One request; an OSError (refused, reset, timed out) or an HTTP protocol error propagates
        after the connection is closed."""
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(self.host, self.port, context=self._context,
                                                           timeout=TIMEOUT)  # fmt: skip
        try:
            self._connection.request(method, self.base + path, body=body, headers=headers)
            response = self._connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        try:
            parsed: Any = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return Answer(response.status, answer_headers, parsed)

    # -- ingest -------------------------------------------------------------------------

    def send(self, body: bytes, key: str) -> Answer:
        headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": f'"{key}"'}
        if self.credentials.uses_token:
            headers["Authorization"] = f"Bearer {self.token()}"
        return self.request("POST", INGEST_PATH, body, headers)

    # -- OAuth2 -------------------------------------------------------------------------

    def token(self) -> str:
        """A valid access token, fetched again a minute before the last one expires."""
        credentials = self.credentials
        if credentials._token is not None and time.time() < credentials._token_until:
            return credentials._token
        basic = base64.b64encode(f"{credentials.client_id}:{credentials.client_secret}".encode()).decode()
        answer = self.request("POST", TOKEN_PATH, b"grant_type=client_credentials",
                              {"Authorization": f"Basic {basic}",
                               "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        if answer.status != 200 or not isinstance(answer.body, dict) or "access_token" not in answer.body:
            raise TokenRefused(answer)
        credentials._token = str(answer.body["access_token"])
        credentials._token_until = time.time() + max(30, int(answer.body.get("expires_in", 300)) - 60)
        return credentials._token

    # -- EST ----------------------------------------------------------------------------

    def renew_certificate(self) -> x509.Certificate:
        """Re-enroll over EST with the current certificate and key (the same key: the key file is
        never rewritten), then replace the certificate file atomically with the new certificate
        and its tenant CA (``cacerts``), the chain nginx needs to see."""
        cert_path, key_path = self.credentials.cert, self.credentials.key
        assert cert_path is not None
        current = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key((key_path or cert_path).read_bytes(), password=None)
        tenant = tenant_of(current)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice-agent")]))
            .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        )
        body = base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))
        est = f"/.well-known/est/{urllib.parse.quote(tenant)}"
        headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}
        answer = self.request("POST", f"{est}/simplereenroll", body, headers)
        if answer.status != 200 or not isinstance(answer.body, str):
            raise RenewalRefused(answer)
        (renewed,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer.body))
        cacerts = self.request("GET", f"{est}/cacerts", None, {})
        if cacerts.status != 200 or not isinstance(cacerts.body, str):
            raise RenewalRefused(cacerts)
        chain = [renewed, *pkcs7.load_der_pkcs7_certificates(base64.b64decode(cacerts.body))]
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        replace_file(cert_path, pem)
        self.reload()
        return renewed


def tenant_of(certificate: x509.Certificate) -> str:
    """A device certificate names its tenant in O (``UID=...,CN=<device>,OU=<group>,O=<tenant>``)."""
    names = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not names:
        raise ValueError("the certificate names no tenant (O=): not a Sluice device certificate")
    return str(names[0].value)


def expires_at(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].not_valid_after_utc


def lifetime(path: Path) -> dt.timedelta:
    certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return certificate.not_valid_after_utc - certificate.not_valid_before_utc


def replace_file(path: Path, content: bytes) -> None:
    """Write ``content`` beside ``path``, flush it to disk, then rename it over ``path``: a crash
    leaves the old file or the new one, never half of one."""
    temporary = path.with_name(path.name + ".new")
    with temporary.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class TokenRefused(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(f"the token endpoint answered {answer.status} {answer.code or ''}: {answer.message}")
        self.answer = answer


class RenewalRefused(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(f"EST answered {answer.status} {answer.code or ''}: {answer.message}")
        self.answer = answer
