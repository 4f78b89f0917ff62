"""Content negotiation of the REST API, in a module of its own: DRF imports it while it
defines ``APIView``, so it must not import the views."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request


class IgnoreAcceptNegotiation(DefaultContentNegotiation):
    """The API speaks JSON: an ``Accept`` (or ``?format=``) it cannot satisfy gets JSON anyway
    instead of a 406 (RFC 9110 §12.5.1 lets a server disregard it), so no operation answers
    406.  Views with several renderers (the OpenAPI document: YAML or JSON) still choose."""

    # DRF passes the view's renderers as a list (indexed below); the stubs say any Iterable.
    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:  # type: ignore[override]
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except exceptions.NotAcceptable:
            return (renderers[0], renderers[0].media_type)
