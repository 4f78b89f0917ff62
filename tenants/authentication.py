"""Bearer credentials of the REST API (RFC 6750 §2.1), told apart by their shape:

* ``Bearer slc_<prefix>_<secret>``: an API token for scripts, acting as its user.  The
  secret is compared by its SHA-256, looked up by its unique hash, so no timing difference
  reveals a prefix match.  Expired and revoked tokens are refused.
* ``Bearer <header>.<payload>.<signature>``: a Sluice access token (a JWT, RFC 7519 §3)
  for audience ``sluice-api``, held by a tenant's service OAuth client
  (``tenants.oauth.resource``).  An API token never contains a dot, so the two cannot be
  confused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from django.utils import timezone
from rest_framework import authentication, exceptions

from tenants.hashing import hash_token
from tenants.models import ApiToken

TOKEN_PREFIX = "slc_"  # noqa: S105 - a public marker, not a secret
# Three base64url parts (RFC 7515 §7.1, JWS compact serialization).
JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
REALM = "sluice-api"
T = TypeVar("T")


def as_drf_refusal(request: Any, check: Callable[[], T], *, bearer: bool = True) -> T:
    """``check()``, with Sluice's refusals raised as DRF's: a 401 of a bearer token keeps its
    code for the challenge header (RFC 6750 §3: error="invalid_token"), a 403 stays a 403."""
    # Imported here: DRF imports this module while config.errors is still loading
    # (config.errors -> rest_framework.views -> the authentication classes).
    from config.errors import PermissionDenied, Unauthenticated

    try:
        return check()
    except Unauthenticated as exc:
        if bearer:
            request._sluice_bearer_error = exc.code
        raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from None
    except PermissionDenied as exc:
        raise exceptions.PermissionDenied(exc.message, code=exc.code) from None


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """API tokens and service-client access tokens (the one bearer entry point of the API)."""

    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).decode(errors="replace")
        if not header.startswith(f"{self.keyword} "):
            return None
        credential = header[len(self.keyword) + 1 :].strip()
        if credential.startswith(TOKEN_PREFIX):
            return self._api_token(credential)
        if JWT_SHAPE.match(credential):
            return self._access_token(request, credential)
        return None

    def _api_token(self, secret: str) -> tuple[Any, ApiToken]:
        token = ApiToken.objects.select_related("user").filter(secret_hash=hash_token(secret)).first()
        now = timezone.now()
        if token is None or token.revoked_at is not None or (token.expires_at and token.expires_at <= now):
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def _access_token(self, request: Any, token: str) -> tuple[Any, Any]:
        from tenants.oauth.resource import authenticate_service_token

        principal = as_drf_refusal(request, lambda: authenticate_service_token(token))
        return principal, principal.claims

    realm = REALM

    def authenticate_header(self, request: Any) -> str:
        error = getattr(request, "_sluice_bearer_error", None)
        if error is None:
            return f'{self.keyword} realm="{self.realm}"'
        return f'{self.keyword} realm="{self.realm}", error="invalid_token", error_description="{error}"'


class RegistryBearerAuthentication(ApiTokenAuthentication):
    """The tenant-scoped registry's bearer credentials: a consumer client's access token for
    audience ``sluice-registry`` (``registry:read``), or whatever the REST API accepts.  A
    token that names the registry's audience is judged by the registry's rules alone, so an
    expired one says so (not that it lacks the API's audience)."""

    realm = "sluice-registry"

    def _access_token(self, request: Any, token: str) -> tuple[Any, Any]:
        from tenants.oauth import tokens
        from tenants.oauth.resource import consumer_token_principal, verify_registry_token

        if tokens.AUD_REGISTRY not in tokens.unverified_audiences(token):
            return super()._access_token(request, token)  # not a registry token: the API's rules
        claims = as_drf_refusal(request, lambda: verify_registry_token(token))
        return as_drf_refusal(request, lambda: consumer_token_principal(claims)), claims
