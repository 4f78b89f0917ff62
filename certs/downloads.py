"""The PKI's public download: the platform root CA's certificate, at ``/pki/root-ca.crt``;
and the files of a certificate just issued with a generated key, offered inside the one page
that shows them (``Download``).

Every client needs it to verify Sluice's HTTPS (``curl --cacert root-ca.crt``), and the
onboarding page links to it.  nginx serves the same file over plain HTTP beside the CRLs
(``Runtime.root_ca_url``), for a client that cannot verify HTTPS before it has it."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from certs.platform_pki import PlatformPki

if TYPE_CHECKING:
    from certs.services import Issued

ROOT_CA_FILENAME = "root-ca.crt"
# RFC 8555 §9.1: one or more PEM certificates.  The same type nginx sends for this file.
PEM_CERTIFICATES = "application/pem-certificate-chain"
# The key as PKCS#8 PEM (RFC 7468 §10); application/pkcs8 would be its DER form.
PEM_KEY = "application/x-pem-file"
PKCS12 = "application/x-pkcs12"


@dataclass(frozen=True)
class Download:
    """A file a page offers inside itself, as a ``data:`` URL with a file name
    (``<a download>``): a generated private key is in that one response only, never stored
    or served again, so there is nothing a second request could fetch."""

    element_id: str
    label: str
    filename: str
    media_type: str
    content: bytes

    @property
    def href(self) -> str:
        return f"data:{self.media_type};base64,{base64.b64encode(self.content).decode()}"


def issued_downloads(name: str, issued: Issued) -> list[Download]:
    """``<name>.crt`` (the chain), and with a generated key ``<name>.key`` and ``<name>.p12``."""
    files = [
        Download("download-chain", "Certificate chain", f"{name}.crt", PEM_CERTIFICATES, issued.chain_pem.encode())
    ]
    if issued.key_pem:
        files.append(Download("download-key", "Private key", f"{name}.key", PEM_KEY, issued.key_pem.encode()))
    if issued.pkcs12:
        files.append(Download("download-pkcs12", "PKCS#12 bundle", f"{name}.p12", PKCS12, issued.pkcs12))
    return files


@require_safe
def root_ca(request: HttpRequest) -> HttpResponse:
    pem = PlatformPki(settings.SLUICE_RUNTIME.pki_dir).root_cert.read_bytes()
    response = HttpResponse(pem, content_type=PEM_CERTIFICATES)
    response["Content-Disposition"] = f'attachment; filename="{ROOT_CA_FILENAME}"'
    response["Cache-Control"] = "public, max-age=300"
    return response
