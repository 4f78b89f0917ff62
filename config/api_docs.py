"""``/api/schema/`` and ``/api/docs/``: the API's OpenAPI document, and Swagger UI over it
from Sluice's own static files (``SPECTACULAR_SETTINGS["SWAGGER_UI_DIST"] = "SIDECAR"``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response


class JsonErrors:
    """A refusal (a POST or DELETE: 405) is the API's JSON error, not the view's own renderer
    at work on an error body (bare text from the HTML page, YAML from the document)."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response) and response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


class ApiSchemaView(JsonErrors, SpectacularAPIView):
    pass


class ApiDocsView(JsonErrors, SpectacularSwaggerView):
    pass
