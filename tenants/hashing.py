"""How a secret Sluice issued (an API token, an OAuth client secret) is stored: only its hash.
A module of its own so that both ``tenants.models`` and ``tenants.oauth.models`` use it
without importing each other."""

from __future__ import annotations

import hashlib


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
