"""Bearer API tokens for scripts (``Authorization: Bearer slc_<prefix>_<secret>``).

The secret is compared by its SHA-256, looked up by its unique hash, so no timing
difference reveals a prefix match.  Expired and revoked tokens are refused."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions

from tenants.models import ApiToken, hash_token

TOKEN_PREFIX = "slc_"  # noqa: S105 - a public marker, not a secret


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode(errors="replace")
        if not header.startswith(f"{self.keyword} {TOKEN_PREFIX}"):
            return None
        secret = header[len(self.keyword) + 1 :].strip()
        token = ApiToken.objects.select_related("user").filter(secret_hash=hash_token(secret)).first()
        now = timezone.now()
        if token is None or token.revoked_at is not None or (token.expires_at and token.expires_at <= now):
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword
