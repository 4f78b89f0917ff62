"""The authorization server's HTTP endpoints: the token endpoint (RFC 6749 §3.2), the JWKS
(RFC 7517) and the server's metadata (RFC 8414).  Plain Django views: they take no session
and no cookie, so CSRF does not apply, and they only delegate."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from tenants.oauth import keys, tokens
from tenants.oauth import scopes as oauth_scopes
from tenants.oauth.server import AUTH_METHODS, GRANT_TYPE, authorization_server

# Verifiers (the broker, ingest) re-fetch on an unknown kid, and a new key is published
# keys.ACTIVATION_DELAY (10 min) before it signs, so 5 minutes of caching is safe.
JWKS_MAX_AGE = 300


@csrf_exempt
@require_POST
def token(request: HttpRequest) -> HttpResponse:
    """``POST /oauth/token``: the client-credentials grant (RFC 6749 §4.4)."""
    return authorization_server().create_token_response(request)


@require_GET
def jwks(request: HttpRequest) -> JsonResponse:
    """``GET /oauth/jwks.json``: the public halves of every key still in use."""
    response = JsonResponse(keys.jwks_document(keys.signing_keys(settings.SLUICE_RUNTIME)))
    response["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response


def metadata_document() -> dict[str, object]:
    runtime = settings.SLUICE_RUNTIME
    return {
        "issuer": tokens.issuer(runtime),
        "token_endpoint": f"{runtime.web_url}/oauth/token",
        "jwks_uri": f"{runtime.web_url}/oauth/jwks.json",
        "grant_types_supported": [GRANT_TYPE],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "scopes_supported": list(oauth_scopes.ALL),
        # RFC 8414 §2 makes this member REQUIRED; there is no authorization endpoint, so
        # no response type is supported.
        "response_types_supported": [],
    }


@require_GET
def metadata(request: HttpRequest) -> JsonResponse:
    """``GET /.well-known/oauth-authorization-server`` (and ``.../oauth``, the form RFC 8414
    §3.1 derives from the issuer's path): where the token endpoint and keys are."""
    response = JsonResponse(metadata_document())
    response["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response
