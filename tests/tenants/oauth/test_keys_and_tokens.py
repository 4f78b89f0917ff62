"""Signing keys, the JWKS and access tokens, on a state directory of the test's own."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey

from config.env import Runtime, load_runtime
from config.errors import Unauthenticated
from tenants.oauth import keys, tokens

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return load_runtime({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_KEK": "token-test-kek"})


def mint(runtime: Runtime, **overrides: object) -> str:
    values: dict[str, object] = {"client_id": "c-1", "tenant": "acme", "scopes": ["ingest:write"],
                                 "audiences": [tokens.AUD_INGEST, tokens.AUD_KAFKA],
                                 "kafka_principal": "acme.sensors", "device": "d-1"}  # fmt: skip
    values.update(overrides)
    return tokens.mint_access_token(runtime, **values)[0]  # type: ignore[arg-type]


def refusal(runtime: Runtime, token: str, audience: str = tokens.AUD_INGEST) -> str:
    with pytest.raises(Unauthenticated) as refused:
        tokens.verify_access_token(runtime, token, audience=audience)
    return refused.value.code


def test_first_key_is_created_encrypted_and_published(runtime: Runtime) -> None:
    # when keys are ensured twice
    first = keys.ensure_signing_keys(runtime)
    again = keys.ensure_signing_keys(runtime)
    # then one key exists, encrypted at rest and private to its owner, and the JWKS names it
    assert [k.kid for k in first] == [k.kid for k in again]
    (path,) = keys.key_dir(runtime).glob("*.pem")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert path.stat().st_mode & 0o777 == 0o600
    published = json.loads(keys.jwks_path(runtime).read_text())
    assert [k["kid"] for k in published["keys"]] == [first[0].kid]
    assert all("d" not in k for k in published["keys"])  # public halves only


def test_a_token_carries_the_claims_and_verifies_with_the_published_jwks(runtime: Runtime) -> None:
    token = mint(runtime)
    # then anyone holding only the JWKS verifies it, and the header says what it is
    keyset = KeySet.import_key_set(json.loads(keys.jwks_path(runtime).read_text()))
    decoded = jwt.decode(token, keyset, algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.claims["kafka_principal"] == "acme.sensors"
    claims = tokens.verify_access_token(runtime, token, audience=tokens.AUD_KAFKA)
    assert (claims.client_id, claims.tenant, claims.device) == ("c-1", "acme", "d-1")
    assert claims.scopes == frozenset({"ingest:write"})


def test_bad_tokens_are_refused_with_stable_codes(runtime: Runtime, tmp_path: Path) -> None:
    good = mint(runtime)
    header, payload, _signature = good.split(".")
    other = load_runtime({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path / "other"), "SLUICE_KEK": "x"})
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    hmac_key = OctKey.import_key("secret-secret-secret-secret-32b!")
    hs256 = jwt.encode({"alg": "HS256", "typ": "at+jwt"}, {"sub": "x"}, hmac_key)
    assert refusal(runtime, good, audience=tokens.AUD_API) == "wrong_audience"
    assert refusal(runtime, mint(runtime, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))) == "token_expired"
    assert refusal(runtime, mint(other)) == "invalid_token"  # signed by a key Sluice never published
    assert refusal(runtime, f"{unsigned_header}.{payload}.") == "invalid_token"
    assert refusal(runtime, hs256) == "invalid_token"
    assert refusal(runtime, f"{header}.{payload}.{_signature[:-4]}AAAA") == "invalid_token"
    assert refusal(runtime, "not a jwt") == "invalid_token"
    with pytest.raises(ValueError, match="exceeds"):
        mint(runtime, lifetime=dt.timedelta(hours=2))


def test_rotation_publishes_ahead_then_signs_then_retires(runtime: Runtime) -> None:
    # given the first key
    (first,) = keys.ensure_signing_keys(runtime)
    # when 31 days pass, then a successor is published but does not sign yet
    later = first.created + dt.timedelta(days=31)
    rotated = keys.rotate_signing_keys(runtime, later)
    assert len(rotated.created) == 1
    successor = rotated.created[0]
    published = {k["kid"] for k in json.loads(keys.jwks_path(runtime).read_text())["keys"]}
    assert published == {first.kid, successor}
    assert keys.current_signing_key(runtime, later).kid == first.kid
    # when its activation delay has passed, then it signs, and the old key still verifies
    active = later + keys.ACTIVATION_DELAY
    assert keys.current_signing_key(runtime, active).kid == successor
    assert keys.rotate_signing_keys(runtime, active).retired == []
    # when every token the old key signed has expired, then the old key is gone
    gone = keys.rotate_signing_keys(runtime, active + keys.RETAIN_AFTER_SUCCESSOR)
    assert gone.retired == [first.kid]
    assert [k.kid for k in keys.signing_keys(runtime)] == [successor]


def test_a_new_key_is_never_a_surprise_for_verifiers(runtime: Runtime) -> None:
    # the kid is the RFC 7638 thumbprint of the public key
    (first,) = keys.ensure_signing_keys(runtime)
    public = ECKey.import_key(first.key.as_dict(private=False))
    assert public.thumbprint() == first.kid
