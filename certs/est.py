"""EST (RFC 7030) for devices: ``/.well-known/est/<tenant>/cacerts`` and
``/.well-known/est/<tenant>/simplereenroll``.  The tenant slug is the EST label (§3.2.2).
Requests and responses use EST's encodings: base64 DER PKCS#10 in, base64 DER PKCS#7
certs-only out.  Errors use Sluice's JSON error body with a stable code."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from certs import ca, services
from certs.models import CertificateAuthority
from certs.tls_identity import client_certificate_record
from config.errors import InvalidInput, NotFound, SluiceError, error_response
from tenants.models import Tenant

MAX_CSR_BYTES = 16 * 1024


def _pkcs7_response(pems: list[str]) -> HttpResponse:
    certificates = [ca.load_certificate(p.encode()) for p in pems]
    body = base64.encodebytes(pkcs7.serialize_certificates(certificates, Encoding.DER))
    response = HttpResponse(body, content_type="application/pkcs7-mime; smime-type=certs-only")
    response["Content-Transfer-Encoding"] = "base64"
    return response


def _csr_bytes(request: HttpRequest) -> bytes:
    raw = request.body
    if len(raw) > MAX_CSR_BYTES:
        raise InvalidInput(f"The CSR is larger than {MAX_CSR_BYTES} bytes.", code="malformed_csr")
    if b"-----BEGIN" in raw:
        return raw
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("EST expects a base64-encoded DER PKCS#10 request.", code="malformed_csr") from None


@require_GET
def cacerts(request: HttpRequest, tenant: str) -> HttpResponse:
    """The tenant's issuing CA certificates (current and, during rotation, the previous)."""
    authorities = CertificateAuthority.objects.filter(tenant__slug=tenant).exclude(
        status=CertificateAuthority.Status.RETIRED
    )
    if not authorities.exists():
        return error_response(NotFound(f"No EST label '{tenant}'."))
    return _pkcs7_response([a.certificate_pem for a in authorities])


@csrf_exempt
@require_POST
def simplereenroll(request: HttpRequest, tenant: str) -> HttpResponse:
    try:
        presented = client_certificate_record(request)
        if presented.tenant.slug != tenant or not Tenant.objects.filter(slug=tenant).exists():
            # Never confirm that another tenant exists.
            raise NotFound(f"No EST label '{tenant}'.")
        issued = services.certificate_renew(presented=presented, csr_pem=_csr_bytes(request))
    except SluiceError as error:
        return error_response(error)
    return _pkcs7_response([issued.certificate.certificate_pem])


@csrf_exempt
@require_POST
def serverkeygen(request: HttpRequest, tenant: str) -> HttpResponse:
    """Collect the successor (certificate and its server-generated key) that rotation issued
    for the presented certificate: RFC 7030 §4.4.2 multipart/mixed, application/pkcs8 and
    application/pkcs7-mime parts, base64.  The key is handed out once."""
    try:
        presented = client_certificate_record(request)
        if presented.tenant.slug != tenant:
            raise NotFound(f"No EST label '{tenant}'.")
        successor, key_pem = services.certificate_collect_successor(presented=presented)
    except SluiceError as error:
        return error_response(error)
    from cryptography.hazmat.primitives.serialization import Encoding as Enc
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    key_der = ca.load_private_key(key_pem.encode()).private_bytes(Enc.DER, PrivateFormat.PKCS8, NoEncryption())
    certs_der = pkcs7.serialize_certificates([ca.load_certificate(successor.certificate_pem.encode())], Encoding.DER)
    boundary = "sluice-est-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/pkcs8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{base64.encodebytes(key_der).decode()}\r\n"
        f"--{boundary}\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{base64.encodebytes(certs_der).decode()}\r\n--{boundary}--\r\n"
    )
    response = HttpResponse(body, content_type=f"multipart/mixed; boundary={boundary}")
    response["Cache-Control"] = "no-store"
    return response
