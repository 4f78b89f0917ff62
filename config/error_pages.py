"""Django's error handlers (``handler400/403/404/500`` in ``config.urls``): what answers when
no view does -- a path no URL names, a refusal raised as ``Http404`` or ``PermissionDenied``,
a crash.  Never a bare server page:

* under the JSON prefixes (the REST API, OAuth, EST) the API's one error body
  (``config.errors``), with its stable code;
* everywhere else (the console, onboarding) the console's own error page, with a clear
  message and a link back.
"""

from __future__ import annotations

import sys

from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import Resolver404
from django.views import defaults

from config.errors import DatabaseUnavailable, SluiceError, database_unavailable, error_response
from config.request_id import current_request_id

JSON_PREFIXES = ("/api/", "/oauth/", "/.well-known/", "/registry/")


def _speaks_json(request: HttpRequest) -> bool:
    return request.path.startswith(JSON_PREFIXES)


def _refusal(message: str, *, code: str, status: int) -> SluiceError:
    error = SluiceError(message, code=code)
    error.status = status
    return error


def _console_page(request: HttpRequest, *, status: int, title: str, message: str) -> HttpResponse:
    """The console's error page: its header, the message, and the way back."""
    context = {
        **admin.site.each_context(request),
        "title": title,
        "message": message,
        "status": status,
        "request_id": current_request_id(),
        # Onboarding's own pages lead back to its start; a refusal of it, to the console.
        "back_url": "/onboarding/" if request.path.startswith("/onboarding/") and status != 403 else "/admin/",
    }
    response = TemplateResponse(request, "console/error.html", context, status=status)
    # Rendered here: Django's handlers return the response as it is, no middleware renders it.
    return response.render()


def _said(exception: Exception | None) -> str:
    """The message a view raised with, when it is one of ours (a sentence, not the URL
    resolver's internal report)."""
    if exception is None or isinstance(exception, Resolver404) or not exception.args:
        return ""
    said = exception.args[0]
    return said if isinstance(said, str) else ""


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = _said(exception) if isinstance(exception, Http404) else ""
    if _speaks_json(request):
        hint = " The API's collections are listed at /api/v1/." if request.path.startswith("/api/") else ""
        message = message or f"No resource at '{request.path}'.{hint}"
        return error_response(_refusal(message, code="not_found", status=404))
    return _console_page(
        request, status=404, title="Page not found", message=message or f"There is no page at {request.path}."
    )


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = _said(exception) or "You do not have permission to open this page."
    if _speaks_json(request):
        return error_response(_refusal(message, code="permission_denied", status=403))
    return _console_page(request, status=403, title="Not allowed", message=message)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = "The request could not be understood."
    if _speaks_json(request):
        return error_response(_refusal(message, code="bad_request", status=400))
    return _console_page(request, status=400, title="Bad request", message=message)


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls this handler inside its ``except`` block: the exception is at hand.
    if database_unavailable(sys.exc_info()[1]):
        return database_down(request)
    request_id = current_request_id()
    message = "Something went wrong on the server; it has been logged" + (
        f" under request id {request_id}." if request_id else "."
    )
    if _speaks_json(request):
        return error_response(_refusal(message, code="server_error", status=500))
    try:
        return _console_page(request, status=500, title="Server error", message=message)
    except Exception:  # noqa: BLE001 - the console's frame needs what may have failed (the database)
        return defaults.server_error(request)


def database_down(request: HttpRequest) -> HttpResponse:
    """A 503 with Retry-After, never a 500, when the database does not answer: the API's
    error body under the JSON prefixes, a plain page elsewhere (the console's own frame needs
    the database: the user, the session)."""
    error = DatabaseUnavailable()
    if _speaks_json(request):
        return error_response(error)
    response = HttpResponse(
        f"<!doctype html><title>Database unavailable</title><h1>Database unavailable</h1><p>{error.message}</p>",
        status=error.status,
        content_type="text/html; charset=utf-8",
    )
    response["Retry-After"] = str(error.retry_after)
    return response
