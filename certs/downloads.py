"""The PKI's public download: the platform root CA's certificate, at ``/pki/root-ca.crt``.

Every client needs it to verify Sluice's HTTPS (``curl --cacert root-ca.crt``), and the
onboarding page links to it.  nginx serves the same file over plain HTTP beside the CRLs
(``Runtime.root_ca_url``), for a client that cannot verify HTTPS before it has it."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from certs.platform_pki import PlatformPki

ROOT_CA_FILENAME = "root-ca.crt"
# RFC 8555 §9.1: one or more PEM certificates.  The same type nginx sends for this file.
PEM_CERTIFICATES = "application/pem-certificate-chain"


@require_safe
def root_ca(request: HttpRequest) -> HttpResponse:
    pem = PlatformPki(settings.SLUICE_RUNTIME.pki_dir).root_cert.read_bytes()
    response = HttpResponse(pem, content_type=PEM_CERTIFICATES)
    response["Content-Disposition"] = f'attachment; filename="{ROOT_CA_FILENAME}"'
    response["Cache-Control"] = "public, max-age=300"
    return response
