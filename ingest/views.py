"""``POST /ingest/v1/records``: devices send telemetry, authenticated by their mTLS client
certificate (nginx verifies it and forwards it; ``certs.tls_identity`` reads it) or by an
OAuth2 access token (``Authorization: Bearer``, RFC 6750), never both.

A device API: no session, no CSRF (nothing here acts on a browser's cookies).  The view
only reads the request, calls the services and renders; every refusal is a ``SluiceError``
rendered by ``config.errors.error_response``.  Success is **200**, not 202: by the time it is
sent Kafka has acknowledged every record with ``acks=all``, so the work is done, not queued.

The view is async: the blocking part of a request (database, Redis, parsing, validation)
runs in one call off the event loop (``ingest.blocking``), and the wait for Kafka's
acknowledgement is an ``await``, so a web worker serves other requests meanwhile (and their
records share librdkafka's batches) instead of holding a thread for the round trip.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from certs.tls_identity import client_certificate_fingerprint, client_certificate_presented
from config.errors import InvalidInput, MethodNotAllowed, SluiceError, error_response
from config.request_id import current_request_id
from ingest import blocking, metrics, records
from ingest.services import (
    Prepared,
    ingest_authenticate,
    records_accepted,
    records_prepare,
    records_produce,
    www_authenticate,
)


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


def _prepare(request: HttpRequest, request_id: str) -> Prepared:
    """Everything before Kafka, in the order the refusals are promised: who (401/403), then
    the body's size (413), type (415), shape (400), the rate limits (429) and the schema."""
    writer = ingest_authenticate(
        authorization=request.headers.get("Authorization", ""),
        certificate_presented=client_certificate_presented(request),
        certificate=lambda: client_certificate_fingerprint(request),
    )
    return records_prepare(
        writer=writer,
        content_type=request.headers.get("Content-Type", ""),
        body=_bounded_body(request),
        request_id=request_id,
    )


@csrf_exempt
async def ingest_records(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = error_response(MethodNotAllowed("Send records with POST.", code="method_not_allowed"))
        response["Allow"] = "POST"
        return response
    run = blocking.runner(request)
    try:
        prepared = await run(_prepare, request, current_request_id())
        accepted = await records_produce(prepared)
    except SluiceError as error:
        await run(metrics.count, error.code)
        response = error_response(error)
        challenge = www_authenticate(error)
        if challenge is not None:
            response["WWW-Authenticate"] = challenge
        return response
    await run(records_accepted, writer=prepared.writer, accepted=accepted)
    return JsonResponse(accepted.as_json(), status=200)
