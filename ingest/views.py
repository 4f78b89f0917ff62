"""``POST /ingest/v1/records``: devices send telemetry, authenticated by their mTLS client
certificate (nginx verifies it and forwards it; ``certs.tls_identity`` reads it) or by an
OAuth2 access token (``Authorization: Bearer``, RFC 6750), never both.

A device API: no session, no CSRF (nothing here acts on a browser's cookies).  The view
only reads the request, calls the services and renders; every refusal is a ``SluiceError``
rendered by ``config.errors.error_response``.  Success is **200**, not 202: by the time it is
sent Kafka has acknowledged every record with ``acks=all``, so the work is done, not queued.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from certs.tls_identity import client_certificate_presented, client_certificate_record
from config.errors import InvalidInput, MethodNotAllowed, SluiceError, error_response
from config.request_id import current_request_id
from ingest import metrics, records
from ingest.services import ingest_authenticate, records_ingest, www_authenticate


def _bounded_body(request: HttpRequest) -> bytes:
    """The body, refusing by its declared length before reading it, and reading at most one
    byte more than the limit (so a body without a length cannot fill memory either)."""
    declared = request.headers.get("Content-Length", "")
    if declared:
        try:
            records.check_size(int(declared))
        except ValueError:
            raise InvalidInput("Content-Length is not a number.", code="invalid_content_length") from None
    body = request.read(records.MAX_BODY_BYTES + 1)
    records.check_size(len(body))
    return body


@csrf_exempt
def ingest_records(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = error_response(MethodNotAllowed("Send records with POST.", code="method_not_allowed"))
        response["Allow"] = "POST"
        return response
    try:
        device = ingest_authenticate(
            authorization=request.headers.get("Authorization", ""),
            certificate_presented=client_certificate_presented(request),
            certificate=lambda: client_certificate_record(request),
        )
        accepted = records_ingest(
            device=device,
            content_type=request.headers.get("Content-Type", ""),
            body=_bounded_body(request),
            request_id=current_request_id(),
        )
    except SluiceError as error:
        metrics.count(error.code)
        response = error_response(error)
        challenge = www_authenticate(error)
        if challenge is not None:
            response["WWW-Authenticate"] = challenge
        return response
    metrics.count("accepted", len(accepted.offsets))
    return JsonResponse(accepted.as_json(), status=200)
