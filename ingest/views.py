"""``POST /ingest/v1/records``: devices send telemetry, authenticated by their mTLS client
certificate (nginx verifies it and forwards it; ``certs.tls_identity`` reads it).

A device API: no session, no CSRF (nothing here acts on a browser's cookies).  The view
only reads the request, calls the services and renders; every refusal is a ``SluiceError``
rendered by ``config.errors.error_response``.  Success is **200**, not 202: by the time it is
sent Kafka has acknowledged every record with ``acks=all``, so the work is done, not queued.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from certs.tls_identity import client_certificate_record
from config.errors import InvalidInput, SluiceError, error_response
from config.request_id import current_request_id
from ingest import metrics, records
from ingest.services import ingest_authorize, records_ingest


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
@require_POST
def ingest_records(request: HttpRequest) -> HttpResponse:
    try:
        device = ingest_authorize(certificate=client_certificate_record(request))
        accepted = records_ingest(
            device=device,
            content_type=request.headers.get("Content-Type", ""),
            body=_bounded_body(request),
            request_id=current_request_id(),
        )
    except SluiceError as error:
        metrics.count(error.code)
        return error_response(error)
    metrics.count("accepted", len(accepted.offsets))
    return JsonResponse(accepted.as_json(), status=200)
