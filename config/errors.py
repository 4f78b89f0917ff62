"""The domain's one exception hierarchy and its one mapping to HTTP.

Every API error body has the same shape::

    {"error": {"code": "invalid", "message": "...",
               "fields": [{"pointer": "/rows/3/device_id", "code": "invalid_device_id", "message": "..."}]}}

``code`` values are stable; messages are for people.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from confluent_kafka import KafkaException
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

log = logging.getLogger("sluice.api")


class SluiceError(Exception):
    """Base of every expected failure; ``code`` is stable, ``status`` is the HTTP status."""

    code = "error"
    status: int = status.HTTP_400_BAD_REQUEST
    # Seconds a client should wait before trying again (sent as Retry-After, RFC 9110
    # §10.2.3); set on errors that say "not now" rather than "not like this".
    retry_after: int | None = None
    # Who the refused request was attributed to, for its log line (config.logs): the
    # tenant, group and device slugs, where the refusing code knew them.
    subject: tuple[str, str, str] | None = None
    # The tenant (slug) a refusal was for, when it is known (ingest's metrics label it).
    tenant: str = ""

    def __init__(
        self,
        message: str,
        *,
        fields: list[dict[str, str]] | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidInput(SluiceError):
    code = "invalid"


class NotFound(SluiceError):
    code = "not_found"
    status = status.HTTP_404_NOT_FOUND


class Conflict(SluiceError):
    code = "conflict"
    status = status.HTTP_409_CONFLICT


class Gone(SluiceError):
    """It was here and will not be again (a key already collected, or expired)."""

    code = "gone"
    status = status.HTTP_410_GONE


class PermissionDenied(SluiceError):
    code = "permission_denied"
    status = status.HTTP_403_FORBIDDEN


class QuotaExceeded(SluiceError):
    code = "quota_exceeded"
    status = status.HTTP_409_CONFLICT


class Unauthenticated(SluiceError):
    code = "unauthenticated"
    status = status.HTTP_401_UNAUTHORIZED


class RegistryUnavailable(SluiceError):
    """The schema registry could not be reached or failed; nothing is wrong with the request."""

    code = "registry_unavailable"
    status = status.HTTP_503_SERVICE_UNAVAILABLE
    retry_after = 5


class PayloadTooLarge(SluiceError):
    code = "payload_too_large"
    status = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(SluiceError):
    code = "unsupported_media_type"
    status = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE


class SchemaValidationFailed(SluiceError):
    """Well-formed input that the registered schema refuses; ``fields`` names each failure."""

    code = "schema_validation_failed"
    status = status.HTTP_422_UNPROCESSABLE_ENTITY


class MethodNotAllowed(SluiceError):
    code = "method_not_allowed"
    status = status.HTTP_405_METHOD_NOT_ALLOWED


class RateLimited(SluiceError):
    code = "rate_limited"
    status = status.HTTP_429_TOO_MANY_REQUESTS
    retry_after = 1
    # Whose limit was reached: "device" (its group's rate) or "tenant" (the tenant's budget).
    scope = "device"


class ServiceUnavailable(SluiceError):
    """A dependency (Kafka, the rate limiter's Redis) failed; the request itself may be fine."""

    code = "service_unavailable"
    status = status.HTTP_503_SERVICE_UNAVAILABLE
    retry_after = 5


class DatabaseUnavailable(SluiceError):
    """The database did not answer (stopped, unreachable, out of connections); the request
    itself may be fine, and nothing was changed."""

    code = "database_unavailable"
    status = status.HTTP_503_SERVICE_UNAVAILABLE
    retry_after = 5

    def __init__(self, message: str = "The database is unavailable; nothing was changed. Retry shortly.") -> None:
        super().__init__(message)


def database_unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the database is out of reach (rather than a bug in a query, or a
    constraint): the driver's OperationalError (connection refused or lost, server shutting
    down, SQLite's "database is locked") or InterfaceError (a connection already closed)."""
    return isinstance(exc, OperationalError | InterfaceError)


# Every Celery task's retry policy while a dependency is away (Kafka, Redis, the registry,
# the database): the work is idempotent (it makes the world match what the database says),
# so it is retried with exponential backoff and jitter (2, 4, 8 ... s, at most 120 s between
# tries, about 15 minutes in all) rather than lost, and succeeds within one backoff step of
# the dependency's return.  Any other exception is a bug and is not retried.
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    KafkaException, redis.RedisError, RegistryUnavailable, ServiceUnavailable, OperationalError, InterfaceError,
)  # fmt: skip
DEPENDENCY_RETRY: dict[str, Any] = {
    "autoretry_for": DEPENDENCY_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 10,
}


def field_errors(detail: Any, pointer: str = "") -> list[dict[str, str]]:
    """Flatten DRF/Django error details into JSON-pointer field errors (RFC 6901)."""
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for key, value in detail.items():
            sub = pointer if key in ("non_field_errors", "__all__") else f"{pointer}/{_escape(str(key))}"
            out += field_errors(value, sub)
        return out
    if isinstance(detail, list):
        if all(isinstance(item, (str, exceptions.ErrorDetail)) for item in detail):
            return [_one(item, pointer) for item in detail]
        out = []
        for index, item in enumerate(detail):
            out += field_errors(item, f"{pointer}/{index}")
        return out
    return [_one(detail, pointer)]


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _one(item: Any, pointer: str) -> dict[str, str]:
    return {"pointer": pointer or "/", "code": str(getattr(item, "code", "invalid")), "message": str(item)}


def from_django(error: DjangoValidationError, pointer: str = "") -> InvalidInput:
    detail: dict[str, list[exceptions.ErrorDetail]] | list[exceptions.ErrorDetail]
    if hasattr(error, "error_dict"):
        detail = {k: [exceptions.ErrorDetail(m, code=e.code or "invalid") for e in v for m in e.messages]
                  for k, v in error.error_dict.items()}  # fmt: skip
    else:
        detail = [exceptions.ErrorDetail(m, code=error.code or "invalid") for m in error.messages]
    fields = field_errors(detail, pointer)
    return InvalidInput(fields[0]["message"] if len(fields) == 1 else "Some fields are invalid.", fields=fields)


def validate_model(obj: Any, *, exclude: list[str] | None = None) -> None:
    """``full_clean`` with Django's ValidationError turned into InvalidInput: the one way
    services validate a model before they write it."""
    try:
        obj.full_clean(exclude=exclude)
    except DjangoValidationError as exc:
        raise from_django(exc) from None


def error_body(code: str, message: str, fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


# Field error codes that say "the request is well formed, the state refuses it": a refusal
# made only of these is not a 400 (the request matches the published schema) but the status
# of what the state is.  404: the body names something that does not exist in the caller's
# tenant (like a missing object in a URL); 409: it collides with what exists; 403: it names
# something outside the tenant's namespace.
STATE_FIELD_CODES: dict[str, tuple[int, str]] = {
    "does_not_exist": (status.HTTP_404_NOT_FOUND, "not_found"),
    "unknown_user": (status.HTTP_404_NOT_FOUND, "not_found"),
    "unique": (status.HTTP_409_CONFLICT, "already_exists"),
    "unique_together": (status.HTTP_409_CONFLICT, "already_exists"),
    "one_stream_per_topic": (status.HTTP_409_CONFLICT, "already_exists"),
    "partitions_decrease": (status.HTTP_409_CONFLICT, "conflict"),
    "immutable": (status.HTTP_409_CONFLICT, "conflict"),
    "confirmation_mismatch": (status.HTTP_409_CONFLICT, "conflict"),
    "credential_policy": (status.HTTP_409_CONFLICT, "conflict"),
    "not_eligible": (status.HTTP_409_CONFLICT, "conflict"),
    "device_disabled": (status.HTTP_409_CONFLICT, "conflict"),
    "consumer_disabled": (status.HTTP_409_CONFLICT, "conflict"),
    "group_mismatch": (status.HTTP_409_CONFLICT, "conflict"),
    "duplicate": (status.HTTP_409_CONFLICT, "conflict"),
    "contradicts_stream": (status.HTTP_409_CONFLICT, "conflict"),
    "foreign_subject": (status.HTTP_403_FORBIDDEN, "permission_denied"),
}


def _state_refusal(exc: InvalidInput) -> SluiceError | None:
    """The InvalidInput as the state refusal it is, when every field error is one."""
    outcomes = [STATE_FIELD_CODES.get(item.get("code", "")) for item in exc.fields]
    if not outcomes or None in outcomes:
        return None
    status_code, code = max(o for o in outcomes if o is not None)  # a 409 outranks a 404 and a 403
    refusal = SluiceError(exc.message, fields=exc.fields, code=code)
    refusal.status = status_code
    return refusal


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        exc = from_django(exc)
    if isinstance(exc, exceptions.ValidationError):
        fields = field_errors(exc.detail)
        exc = InvalidInput(fields[0]["message"] if len(fields) == 1 else "Some fields are invalid.", fields=fields)
    if type(exc) is InvalidInput:
        exc = _state_refusal(exc) or exc
    if isinstance(exc, IntegrityError):
        # A uniqueness or reference race the service's own checks could not see (two
        # requests at once).  The transaction rolled back: a 409 says "retry", not a 500.
        exc = Conflict("This change collided with a concurrent one and was not applied; retry it.",
                       code="concurrent_change")  # fmt: skip
    if database_unavailable(exc):
        exc = DatabaseUnavailable()
    if isinstance(exc, SluiceError):
        _log_refusal(exc, context)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status, headers=headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        codes = exc.get_codes()
        response.data = error_body(codes if isinstance(codes, str) else "error", detail)
    return response


def _log_refusal(error: SluiceError, context: dict[str, Any]) -> None:
    """One line per refused API call: its code and status, the tenant named in its URL, the
    view; never the request's body or the error's fields (they may quote what was sent)."""
    kwargs = context.get("kwargs") or {}
    view = context.get("view")
    line = {"outcome": "refused", "code": error.code, "status": error.status, "tenant": kwargs.get("tenant", ""),
            "view": type(view).__name__ if view is not None else ""}  # fmt: skip
    log.info("api: refused %s (%s)", error.code, error.status, extra=line)


def error_response(error: SluiceError) -> JsonResponse:
    """The same error body for plain Django views (EST, ingest) as for the DRF API."""
    response = JsonResponse(error_body(error.code, error.message, error.fields), status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response
