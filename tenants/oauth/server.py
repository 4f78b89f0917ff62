"""The token endpoint: authlib's OAuth2 server framework, client-credentials grant only
(RFC 6749 §4.4), issuing Sluice's JWT access tokens (``tenants.oauth.tokens``).

``OAuthClientAdapter`` is the one place where authlib meets the ORM: it loads a client,
checks its secret, says which scopes it may get and whether it may get a token now, and
records its use.  The grant and the server below never query the database themselves.

Refusals (RFC 6749 §5.2), all JSON with ``Cache-Control: no-store``:

* ``invalid_request`` (400) -- no ``grant_type``, a repeated parameter, parameters in the
  URL, or client credentials sent two ways at once (§2.3, §3.2);
* ``unsupported_grant_type`` (400) -- anything but ``client_credentials``;
* ``invalid_client`` (401, ``WWW-Authenticate: Basic``) -- unknown client, wrong secret,
  revoked client: one answer for all, so the endpoint does not tell which client ids exist;
* ``invalid_grant`` (400) -- an authenticated client that may not hold a token now: its
  tenant is suspended, its device disabled, or its group allows mTLS only;
* ``invalid_scope`` (400) -- a requested scope unknown or not allowed for the client.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from authlib.consts import default_json_headers
from authlib.integrations.django_oauth2.requests import DjangoOAuth2Request
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, grants
from authlib.oauth2.rfc6749.errors import (
    InsecureTransportError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from tenants import policy
from tenants.oauth import scopes as oauth_scopes
from tenants.oauth import tokens
from tenants.oauth.models import OAuthClient

GRANT_TYPE = "client_credentials"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# Issuance is too frequent to audit; ``last_used_at`` is written at most this often per client.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class OAuthClientAdapter(ClientMixin):
    """One ``OAuthClient`` row as authlib's ``ClientMixin`` (RFC 6749 §2): a confidential
    client that authenticates at the token endpoint only, with client_secret_basic or
    client_secret_post, and uses only the client-credentials grant."""

    def __init__(self, row: OAuthClient) -> None:
        self.row = row

    @classmethod
    def load(cls, client_id: str) -> OAuthClientAdapter | None:
        """The active client ``client_id`` with everything its checks and claims need.  A
        revoked client is "not found": its credentials no longer exist (RFC 6749 §5.2)."""
        row = (
            OAuthClient.objects.select_related("tenant", "device__group__tenant", "group__tenant")
            .filter(client_id=client_id, status=OAuthClient.Status.ACTIVE)
            .first()
        )
        return cls(row) if row is not None else None

    # -- authlib's ClientMixin --------------------------------------------------------

    def get_client_id(self) -> str:
        return self.row.client_id

    # types-Authlib says str; there is no authorization endpoint, so no redirect and no caller.
    def get_default_redirect_uri(self) -> None:  # type: ignore[override]
        return None  # no authorization endpoint, so no redirects

    # authlib passes the request's scope string (types-Authlib also allows a collection).
    def get_allowed_scope(self, scope: str) -> str:  # type: ignore[override]
        return " ".join(s for s in oauth_scopes.parse(scope) if s in self.allowed_scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.row.check_secret(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE

    # -- Sluice ----------------------------------------------------------------------

    @property
    def allowed_scopes(self) -> frozenset[str]:
        # Intersected with the kind's scopes again, so a row edited by hand cannot widen them.
        return frozenset(self.row.scopes) & oauth_scopes.ALLOWED_FOR_KIND[self.row.kind]

    def refusal(self) -> policy.Refusal | None:
        return policy.oauth_client_refusal(policy.Use.TOKEN_ISSUANCE, **self.row.policy_facts())

    def mint(self, scopes: list[str]) -> tuple[str, int]:
        """A signed access token for ``scopes`` (a subset of ``allowed_scopes``)."""
        row = self.row
        return tokens.mint_access_token(
            settings.SLUICE_RUNTIME,
            client_id=row.client_id,
            tenant=row.tenant.slug,
            scopes=scopes,
            audiences=oauth_scopes.audiences_for(scopes),
            kafka_principal=row.kafka_principal,
            device=row.device.device_id if row.device is not None else None,
            lifetime=tokens.DEFAULT_LIFETIME,
        )

    def record_use(self) -> None:
        """Bump ``last_used_at``, at most once a ``LAST_USED_RESOLUTION``: one conditional
        UPDATE, so a client asking for many tokens does not write on every request."""
        now = timezone.now()
        OAuthClient.objects.filter(pk=self.row.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)


class ClientAuthenticationFailed(InvalidClientError):
    """``invalid_client`` as a 401 with a Basic challenge (RFC 6749 §5.2; RFC 7617 §2 needs
    the realm), whichever way the client tried to authenticate."""

    status_code = 401

    def get_headers(self) -> list[tuple[str, str]]:
        return [*default_json_headers, ("WWW-Authenticate", 'Basic realm="sluice", charset="UTF-8"')]


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    @property
    def adapter(self) -> OAuthClientAdapter:
        # SluiceAuthorizationServer.authenticate_client put an adapter there.
        return self.request.client  # type: ignore[return-value]

    def validate_token_request(self) -> None:
        # Authenticates the client, checks the grant type and that every requested scope
        # is one Sluice knows (server.scopes_supported).
        super().validate_token_request()
        refusal = self.adapter.refusal()
        if refusal is not None:
            raise InvalidGrantError(description=refusal.message)
        self.request.scope = " ".join(self.granted_scopes())

    def granted_scopes(self) -> list[str]:
        """RFC 6749 §3.3: no ``scope`` means every scope the client holds; a ``scope`` may
        narrow that, and asking for more than the client holds is refused, not trimmed."""
        allowed = self.adapter.allowed_scopes
        # A token request always has a payload (authlib builds it from the form body).
        requested = oauth_scopes.parse(self.request.payload.scope)  # type: ignore[union-attr]
        if not requested:
            if not allowed:
                raise InvalidScopeError(description="The client holds no scope it may use.")
            return sorted(allowed)
        refused = [scope for scope in requested if scope not in allowed]
        if refused:
            raise InvalidScopeError(description=f"The client may not request {' '.join(refused)}.")
        return requested

    # The body is the token dict, as in authlib's own grants; types-Authlib says a str.
    def create_token_response(self) -> tuple[int, dict[str, Any], Collection[tuple[str, str]]]:  # type: ignore[override]
        # RFC 6749 §4.4.3: no refresh token for this grant.
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _generate_token(
    grant_type: str,
    client: OAuthClientAdapter,
    user: Any = None,
    scope: str | None = None,
    expires_in: int | None = None,
    include_refresh_token: bool = False,
) -> dict[str, Any]:
    granted = oauth_scopes.parse(scope)
    access_token, lifetime = client.mint(granted)
    # RFC 6749 §5.1; "scope" is sent always, as it may differ from the request's.
    return {"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime, "scope": " ".join(granted)}


class SluiceAuthorizationServer(AuthorizationServer):
    """authlib's server bound to Django and to ``OAuthClientAdapter``; stores no tokens."""

    def __init__(self) -> None:
        super().__init__(scopes_supported=list(oauth_scopes.ALL))
        self.register_grant(ClientCredentialsGrant)
        # authlib takes any callable of this signature; types-Authlib names one class only.
        self.register_token_generator(GRANT_TYPE, _generate_token)  # type: ignore[arg-type]

    # None for an unknown client, which authlib expects (types-Authlib says never None).
    def query_client(self, client_id: str) -> OAuthClientAdapter | None:  # type: ignore[override]
        return OAuthClientAdapter.load(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        # Access tokens are self-contained JWTs and are not stored; issuing one only counts
        # as a use of the client.
        request.client.record_use()

    def authenticate_client(self, request: Any, methods: Collection[str],
                            endpoint: str = "token") -> OAuthClientAdapter:  # fmt: skip
        try:
            # The client comes from query_client above: an adapter.
            return super().authenticate_client(request, methods, endpoint)  # type: ignore[return-value]
        except (InvalidClientError, UnicodeDecodeError, ValueError):
            # authlib answers an unknown client_id with 400 but a wrong secret with 401;
            # one answer for every failure reveals nothing about which client ids exist.
            raise ClientAuthenticationFailed(
                description="Client authentication failed: unknown client, wrong secret or revoked client."
            ) from None

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: HttpRequest) -> DjangoOAuth2Request:
        return DjangoOAuth2Request(request)

    # The framework's hook: authlib passes (name, value) pairs and wants this framework's response.
    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> HttpResponse:  # type: ignore[override]
        response = JsonResponse(body, status=status) if isinstance(body, dict) else HttpResponse(body, status=status)
        for name, value in headers:
            response[name] = value
        # RFC 6749 §5.1: responses carrying tokens (and their errors) are never cached.
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        return response

    # Returns what handle_response makes, a Django response (types-Authlib says the raw triple).
    def create_token_response(self, request: HttpRequest | None = None) -> HttpResponse:  # type: ignore[override]
        assert request is not None
        try:
            _check_request_shape(request)
            # RFC 6749 §3.2 requires TLS (authlib would raise this outside its own error
            # handling); behind nginx, X-Forwarded-Proto makes the request https
            # (settings.SECURE_PROXY_SSL_HEADER).
            InsecureTransportError.check(request.build_absolute_uri())
        except OAuth2Error as error:
            return self.handle_response(*error())
        return super().create_token_response(request)  # type: ignore[return-value]  # see above


def _check_request_shape(request: HttpRequest) -> None:
    if request.GET:
        # RFC 6749 §2.3.1 and §3.2: credentials and parameters go in the form body, never
        # in the URL (where logs and proxies keep them).
        raise InvalidRequestError(description="Send the parameters in the form body, not in the URL.")
    repeated = sorted(key for key in request.POST if len(request.POST.getlist(key)) > 1)
    if repeated:
        raise InvalidRequestError(description=f"Repeated parameter: {', '.join(repeated)} (RFC 6749 section 3.2).")
    if not request.POST.get("grant_type"):
        raise InvalidRequestError(
            description="Missing grant_type; send application/x-www-form-urlencoded with grant_type=client_credentials."
        )
    basic = request.headers.get("Authorization", "").lower().startswith("basic ")
    if basic and "client_secret" in request.POST:
        # RFC 6749 §2.3: a client MUST NOT use more than one authentication method.
        raise InvalidRequestError(description="Authenticate with HTTP Basic or with form parameters, not both.")


_server: SluiceAuthorizationServer | None = None


def authorization_server() -> SluiceAuthorizationServer:
    """The process's server (it holds only its registrations, so one is enough)."""
    global _server
    if _server is None:
        _server = SluiceAuthorizationServer()
    return _server


__all__ = ["OAuthClientAdapter", "SluiceAuthorizationServer", "authorization_server"]
