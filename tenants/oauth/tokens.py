"""Sluice's access tokens: JWTs (RFC 9068 profile) signed ES256 with the current key of
``tenants.oauth.keys``, and the one place that verifies them.

Claims: ``iss`` (this Sluice), ``sub`` (the OAuth client id), ``aud`` (the resource servers
the token is for: ``sluice-ingest``, ``sluice-api``, ``kafka``), ``iat``/``nbf``/``exp``,
``jti``, ``client_id``, ``scope`` (space-separated, RFC 8693 §4.2), ``tenant`` (slug), and
for device and gateway clients ``kafka_principal`` (``<tenant>.<group>.<client_id>``: the
broker's OAUTHBEARER listener reads it with ``sasl.oauthbearer.sub.claim.name``, so a token
holder gets exactly its client's ACL, which exists while the client may produce on Kafka)
and ``device`` (device clients).

Verification checks the signature against the published keys (by ``kid``; ``alg`` must be
ES256, so "none" and HMAC confusion are refused), ``typ`` ``at+jwt``, the issuer, the
audience, and the time claims; it does not look at the database.  Whether the client,
device or tenant is still allowed is checked by the caller on every request.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from dataclasses import dataclass

from joserfc import errors, jwt

from config.env import Runtime
from config.errors import Unauthenticated
from tenants.oauth import keys

AUD_INGEST = "sluice-ingest"
AUD_API = "sluice-api"
AUD_KAFKA = "kafka"
AUD_REGISTRY = "sluice-registry"
TOKEN_TYPE = "at+jwt"  # noqa: S105 — the JWT "typ" of access tokens (RFC 9068 §2.1), not a secret
DEFAULT_LIFETIME = dt.timedelta(minutes=15)
MAX_LIFETIME = dt.timedelta(hours=1)
LEEWAY_SECONDS = 30


def issuer(runtime: Runtime) -> str:
    return runtime.oauth_issuer


@dataclass(frozen=True)
class AccessClaims:
    """A verified access token's claims."""

    client_id: str
    tenant: str
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    expires_at: dt.datetime
    jti: str
    kafka_principal: str | None = None
    device: str | None = None


def mint_access_token(
    runtime: Runtime,
    *,
    client_id: str,
    tenant: str,
    scopes: list[str],
    audiences: list[str],
    kafka_principal: str | None = None,
    device: str | None = None,
    lifetime: dt.timedelta = DEFAULT_LIFETIME,
    now: dt.datetime | None = None,
) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds."""
    if lifetime > MAX_LIFETIME:
        raise ValueError(f"token lifetime {lifetime} exceeds {MAX_LIFETIME}")
    now = now or dt.datetime.now(dt.UTC)
    issued = int(now.timestamp())
    seconds = int(lifetime.total_seconds())
    claims: dict[str, object] = {
        "iss": issuer(runtime),
        "sub": client_id,
        "client_id": client_id,
        "aud": audiences,
        "iat": issued,
        "nbf": issued,
        "exp": issued + seconds,
        "jti": secrets.token_hex(16),
        "tenant": tenant,
    }
    if scopes:  # the broker refuses an empty "scope" claim; no scopes means no claim
        claims["scope"] = " ".join(sorted(set(scopes)))
    if kafka_principal is not None:
        claims["kafka_principal"] = kafka_principal
    if device is not None:
        claims["device"] = device
    signing = keys.current_signing_key(runtime, now)
    header = {"alg": keys.ALGORITHM, "kid": signing.kid, "typ": TOKEN_TYPE}
    return jwt.encode(header, claims, signing.key, algorithms=[keys.ALGORITHM]), seconds


def _invalid(message: str, code: str = "invalid_token") -> Unauthenticated:
    return Unauthenticated(message, code=code)


def unverified_audiences(token: str) -> frozenset[str]:
    """The ``aud`` a token *claims*, read without verifying anything: only to choose which
    resource server's rules judge it (which then verify it in full).  Empty if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return frozenset()
    aud = claims.get("aud") if isinstance(claims, dict) else None
    if isinstance(aud, str):
        return frozenset({aud})
    return frozenset(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else frozenset()


def verify_access_token(runtime: Runtime, token: str, *, audience: str) -> AccessClaims:
    """The claims of a valid token meant for ``audience``, or a 401 with a stable code."""
    keyset = keys.public_keyset(keys.signing_keys(runtime))
    try:
        decoded = jwt.decode(token, keyset, algorithms=[keys.ALGORITHM])
    except (errors.BadSignatureError, errors.InvalidKeyIdError, errors.MissingKeyError):
        raise _invalid("The access token's signature does not verify with any current Sluice key.") from None
    except (errors.JoseError, ValueError, TypeError):
        raise _invalid("The access token is not a well-formed signed JWT.") from None
    if decoded.header.get("typ") != TOKEN_TYPE:
        raise _invalid("The token is not an access token (typ must be at+jwt).")
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer(runtime)},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        tenant={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except errors.ExpiredTokenError:
        raise _invalid("The access token has expired; request a new one.", "token_expired") from None
    except errors.InvalidClaimError as exc:
        claim = getattr(exc, "claim", "")
        if claim == "aud":
            raise _invalid(f"The access token is not meant for this service (audience '{audience}').",
                           "wrong_audience") from None  # fmt: skip
        raise _invalid(f"The access token's '{claim}' claim is not valid.") from None
    except errors.JoseError as exc:
        raise _invalid(f"The access token was refused: {exc.description}.") from None
    claims = decoded.claims
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    return AccessClaims(
        client_id=str(claims["sub"]),
        tenant=str(claims["tenant"]),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        audiences=tuple(str(a) for a in audiences),
        expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
        jti=str(claims.get("jti", "")),
        kafka_principal=claims.get("kafka_principal"),
        device=claims.get("device"),
    )
