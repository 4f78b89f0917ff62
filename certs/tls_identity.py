"""Who is on the other end of the TLS connection, as nginx saw it.

nginx terminates TLS, verifies any client certificate against the trust bundle and the
CRLs, and forwards its verdict and the certificate as headers, together with a secret only
it knows.  A request without the right secret is treated as carrying no certificate, so a
local process talking to the app's socket directly cannot claim one."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import authentication

from certs import ca
from certs.models import Certificate
from config.errors import PermissionDenied, Unauthenticated
from tenants import policy
from tenants.authentication import as_drf_refusal
from tenants.oauth.resource import ConsumerPrincipal

# nginx's $ssl_client_verify reasons (OpenSSL's X509_verify_cert_error_string) -> what
# tenants.policy answers for them: (code, error class, message).
_TLS = policy.WORDING[policy.Use.TLS_CLIENT]
VERIFY_REASONS = {
    "certificate has expired": _TLS["certificate_expired"],
    "certificate revoked": _TLS["certificate_revoked"],
    "certificate is not yet valid": _TLS["certificate_not_yet_valid"],
}


def _from_nginx(request: HttpRequest) -> bool:
    offered = request.headers.get("X-Sluice-Proxy-Secret", "")
    return bool(offered) and hmac.compare_digest(offered, settings.SLUICE_PROXY_SECRET)


def client_certificate_presented(request: HttpRequest) -> bool:
    """Whether the client presented a certificate at all (verified or not), as nginx saw it."""
    return _from_nginx(request) and request.headers.get("X-Sluice-Client-Verify", "NONE") != "NONE"


def client_certificate(request: HttpRequest) -> x509.Certificate:
    """The verified client certificate, or a precise 401/403."""
    verdict = request.headers.get("X-Sluice-Client-Verify", "NONE") if _from_nginx(request) else "NONE"
    if verdict == "NONE":
        raise Unauthenticated("This endpoint needs a client certificate.", code="client_certificate_required")
    if verdict != "SUCCESS":
        reason = verdict.removeprefix("FAILED:")
        code, error, message = VERIFY_REASONS.get(
            reason, ("certificate_invalid", Unauthenticated, f"The client certificate was not accepted: {reason}.")
        )
        raise error(message, code=code)
    try:
        return ca.load_certificate(unquote(request.headers.get("X-Sluice-Client-Cert", "")).encode())
    except ValueError:
        raise Unauthenticated("The client certificate could not be read.", code="certificate_invalid") from None


def client_certificate_fingerprint(request: HttpRequest) -> str:
    """The SHA-256 fingerprint of the verified client certificate, or a precise 401/403."""
    return ca.fingerprint_sha256(client_certificate(request))


def client_certificate_record(request: HttpRequest) -> Certificate:
    """The Certificate row of the verified client certificate (by SHA-256 fingerprint)."""
    record = (
        Certificate.objects.select_related("device__group", "device__tenant", "tenant", "ca")
        .filter(fingerprint_sha256=client_certificate_fingerprint(request))
        .first()
    )
    if record is None:
        raise PermissionDenied("This certificate was not issued by Sluice.", code="unknown_certificate")
    # nginx refuses a revoked certificate once its CRL is loaded; the row is the authority in
    # the moments between a revocation's commit and nginx's reload.
    refusal = policy.certificate_refusal(policy.Use.TLS_CLIENT, status=record.status, not_after=record.not_after,
                                         overlap_until=record.overlap_until, now=timezone.now())  # fmt: skip
    if refusal is not None:
        raise refusal.exception()
    return record


def consumer_certificate_principal(request: HttpRequest) -> ConsumerPrincipal:
    """The consumer whose verified client certificate this is, if it may read now (the
    certificate usable, the consumer enabled, the tenant active); a device's certificate is
    refused (403 ``not_a_consumer_certificate``): devices write, they do not read."""
    record = client_certificate_record(request)
    consumer = record.consumer
    if consumer is None:
        raise PermissionDenied("Only a consumer's certificate reads schemas here.", code="not_a_consumer_certificate")
    refusal = policy.certificate_refusal(policy.Use.KAFKA_CERTIFICATE, status=record.status,
                                         not_after=record.not_after, overlap_until=record.overlap_until,
                                         now=timezone.now()) or policy.holder_refusal(
        policy.Use.KAFKA_CERTIFICATE, tenant_status=record.tenant.status, device_status=None, credential_policy=None,
        consumer_status=consumer.status, tenant=record.tenant.slug)  # fmt: skip
    if refusal is not None:
        raise refusal.exception()
    return ConsumerPrincipal(tenant_id=record.tenant_id, label=f"cert:{record.serial}")


class ConsumerCertificateAuthentication(authentication.BaseAuthentication):
    """A consumer's client certificate, as nginx verified it (DRF's side of
    ``consumer_certificate_principal``); no certificate, no opinion."""

    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        if not client_certificate_presented(request._request):
            return None
        principal = as_drf_refusal(request, lambda: consumer_certificate_principal(request._request), bearer=False)
        return principal, None

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="sluice-registry"'
