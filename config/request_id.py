"""A request id for every request: taken from a well-formed ``X-Request-ID`` or made here,
echoed in the response, and recorded with every audit event the request causes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

_current: ContextVar[str] = ContextVar("sluice_request_id", default="")
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def current_request_id() -> str:
    return _current.get()


def _request_id(request: HttpRequest) -> str:
    offered = request.headers.get("X-Request-ID", "")
    return offered if _WELL_FORMED.match(offered) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Sync and async: under ASGI a sync-only first middleware would make Django run the
    whole chain through a thread hop and back (sync_to_async, then async_to_sync) on every
    request; in async mode the request stays on the event loop."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        request_id = _request_id(request)
        token = _current.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response["X-Request-ID"] = request_id  # type: ignore[index]
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        request_id = _request_id(request)
        token = _current.set(request_id)
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        finally:
            _current.reset(token)
        response["X-Request-ID"] = request_id
        return response
