"""Celery tasks of Sluice's token signing keys: load, call, report."""

from __future__ import annotations

import logging
from dataclasses import asdict

from celery import shared_task
from django.conf import settings

from config.errors import DEPENDENCY_RETRY
from tenants.oauth.keys import rotate_signing_keys

log = logging.getLogger("sluice.oauth")


@shared_task(name="oauth.signing_keys_rotate", **DEPENDENCY_RETRY)
def signing_keys_rotate_task() -> dict[str, list[str]]:
    """Publish a successor key when the newest is due and retire keys no token can still
    need (``keys.rotate_signing_keys``: idempotent, so running it often is harmless).

    Keys are platform-level, not a tenant's, so there is no tenant audit row; the key ids
    are logged (never the keys).  The broker learns a new key from the republished JWKS at
    its next ``sasl.oauthbearer.jwks.endpoint.refresh.ms``, before the key signs anything."""
    rotation = rotate_signing_keys(settings.SLUICE_RUNTIME)
    if rotation.created or rotation.retired:
        log.info("token signing keys: published %s, retired %s", rotation.created, rotation.retired)
    return asdict(rotation)
