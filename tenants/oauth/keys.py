"""The keys that sign Sluice's access tokens, and the JWKS that publishes them.

Pure files-and-crypto (no Django), so the launcher can make sure a key and the JWKS exist
before nginx serves the JWKS and before the broker's OAUTHBEARER listener fetches it
(Kafka's ``RefreshingHttpsJwks`` fails the listener if the JWKS cannot be read at start).

* ``<state>/oauth/<created>_<kid>.pem``: one ES256 (P-256) private key per file, PKCS#8
  encrypted with the key-encryption key, mode 0600.  ``kid`` is the key's RFC 7638 thumbprint.
* ``<state>/oauth-public/jwks.json``: the public keys of every key still in use (RFC 7517),
  served by nginx and by the app at ``/oauth/jwks.json``.

Rotation publishes a new key ``ACTIVATION_DELAY`` before it signs anything, so every
verifier (the broker refreshes its copy, and re-fetches on an unknown ``kid``) knows it in
time, and keeps the old key published until every token it signed has expired.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, KeySet, KeySetSerialization

from certs import ca
from config.env import Runtime

ALGORITHM = "ES256"
ROTATE_AFTER = dt.timedelta(days=30)
ACTIVATION_DELAY = dt.timedelta(minutes=10)
# The longest access-token lifetime Sluice issues (tokens.MAX_LIFETIME), plus clock skew.
RETAIN_AFTER_SUCCESSOR = dt.timedelta(hours=2)
STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created: dt.datetime
    key: ECKey  # private

    @property
    def active_from(self) -> dt.datetime:
        return self.created + ACTIVATION_DELAY


def key_dir(runtime: Runtime) -> Path:
    return runtime.state_dir / "oauth"


def jwks_path(runtime: Runtime) -> Path:
    return runtime.state_dir / "oauth-public" / "jwks.json"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load(runtime: Runtime, path: Path) -> SigningKey:
    stamp, kid = path.stem.split("_", 1)
    private = ca.load_private_key(path.read_bytes(), runtime.key_encryption_key)
    key = ECKey.import_key(ca.private_key_pem(private), parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
    created = dt.datetime.strptime(stamp, STAMP).replace(tzinfo=dt.UTC)
    return SigningKey(kid=kid, created=created, key=key)


def signing_keys(runtime: Runtime) -> list[SigningKey]:
    """Every key on disk, oldest first."""
    directory = key_dir(runtime)
    if not directory.is_dir():
        return []
    return sorted((_load(runtime, p) for p in directory.glob("*_*.pem")), key=lambda k: k.created)


def _create(runtime: Runtime, now: dt.datetime, *, backdate: bool) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    kid = ECKey.import_key(ca.private_key_pem(private)).thumbprint()
    # The very first key signs at once (nobody can hold an older token); later ones wait.
    created = now - ACTIVATION_DELAY if backdate else now
    directory = key_dir(runtime)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{created.strftime(STAMP)}_{kid}.pem"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(ca.private_key_pem(private, runtime.key_encryption_key))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return _load(runtime, path)


def ensure_signing_keys(runtime: Runtime) -> list[SigningKey]:
    """At least one key exists and the JWKS names every key; idempotent."""
    keys = signing_keys(runtime)
    if not keys:
        keys = [_create(runtime, _now(), backdate=True)]
    publish_jwks(runtime, keys)
    return keys


def current_signing_key(runtime: Runtime, now: dt.datetime | None = None) -> SigningKey:
    """The newest key whose activation time has passed."""
    now = now or _now()
    keys = signing_keys(runtime) or ensure_signing_keys(runtime)
    active = [k for k in keys if k.active_from <= now]
    return active[-1] if active else keys[0]


def public_keyset(keys: list[SigningKey]) -> KeySet:
    return KeySet([k.key for k in keys])


def jwks_document(keys: list[SigningKey]) -> KeySetSerialization:
    return public_keyset(keys).as_dict(private=False)


def publish_jwks(runtime: Runtime, keys: list[SigningKey] | None = None) -> Path:
    keys = signing_keys(runtime) if keys is None else keys
    path = jwks_path(runtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(jwks_document(keys), indent=1))
    # Public keys, public by design: nginx's workers serve them (the PUBLIC list in
    # platform/sluicectl/private_state.py); the launcher opens their directory.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


@dataclass
class KeyRotation:
    created: list[str]
    retired: list[str]


def rotate_signing_keys(runtime: Runtime, now: dt.datetime | None = None) -> KeyRotation:
    """Publish a successor once the newest key is ``ROTATE_AFTER`` old; delete keys whose
    successor has been signing for longer than any token lives.  Idempotent."""
    now = now or _now()
    report = KeyRotation(created=[], retired=[])
    keys = ensure_signing_keys(runtime)
    if now - keys[-1].created >= ROTATE_AFTER:
        keys.append(_create(runtime, now, backdate=False))
        report.created.append(keys[-1].kid)
    signing = current_signing_key(runtime, now)
    for older, newer in itertools.pairwise(keys):
        if older.created < signing.created and newer.active_from + RETAIN_AFTER_SUCCESSOR <= now:
            for path in key_dir(runtime).glob(f"*_{older.kid}.pem"):
                path.unlink()
            report.retired.append(older.kid)
    publish_jwks(runtime)
    return report
