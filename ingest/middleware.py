"""A short road through Django's middleware for device ingest (``POST /ingest/v1/records``).

Under ASGI, every ``MiddlewareMixin`` middleware runs its ``process_request`` and
``process_response`` on a worker thread (``sync_to_async``), one hop there and back each:
a dozen thread hops per request, which cost more CPU than a small ingest request's own
work.  The ingest view is a device API and needs none of the browser middleware (sessions,
CSRF -- the view is ``csrf_exempt`` --, authentication, messages), so for its one path this
middleware calls the view directly, on the event loop, and applies inline (no hops) the
middleware that only shape the response and are listed in ``settings.MIDDLEWARE``
(``INLINE``: security headers, ``CommonMiddleware``, ``X-Frame-Options``), in their order.
Every other path, and the synchronous handler (Django's test ``Client``), takes the full
chain.  Listed right after ``RequestIdMiddleware``, so ingest keeps its request id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.module_loading import import_string

from ingest.views import ingest_records

# Middleware whose hooks are pure functions of the request and response (no database, no
# session, no I/O), safe to call on the event loop.
INLINE = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)


def _unused_get_response(_request: HttpRequest) -> HttpResponse:
    raise AssertionError("inline middleware are only asked for their hooks")


class IngestRouteMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self._path: str | None = None
        self._inline = [import_string(path)(_unused_get_response) for path in settings.MIDDLEWARE if path in INLINE]

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if self._path is None:
            self._path = reverse("ingest-records")
        if request.path != self._path:
            return await self.get_response(request)
        response = None
        applied = []
        for middleware in self._inline:
            applied.append(middleware)
            if hasattr(middleware, "process_request"):
                response = middleware.process_request(request)
                if response is not None:
                    break
        if response is None:
            response = await ingest_records(request)
        for middleware in reversed(applied):
            if hasattr(middleware, "process_response"):
                response = middleware.process_response(request, response)
        return response
