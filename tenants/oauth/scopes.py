"""The OAuth2 scopes Sluice issues, which kind of client may hold each, and which resource
server (token audience) each scope is for.  Pure data, no ORM.

* ``ingest:write``   -- device and gateway clients: POST telemetry to ``/ingest/``.
* ``kafka:produce``  -- device and gateway clients: the broker's SASL/OAUTHBEARER listener.
* ``kafka:consume``  -- consumer clients: read the consumer's granted streams on the broker's
  SASL/OAUTHBEARER listener (``ingest.acls``).
* ``registry:read``  -- consumer clients: the tenant's schemas at ``/registry/<tenant>/``.
* ``provision:read`` -- service clients: read their own tenant through the REST API
  (the API treats them as a tenant viewer).
* ``provision:write`` -- service clients: change their own tenant through the REST API
  (a tenant admin; it implies ``provision:read``).
"""

from __future__ import annotations

from collections.abc import Iterable

from tenants.oauth.tokens import AUD_API, AUD_INGEST, AUD_KAFKA, AUD_REGISTRY

INGEST_WRITE = "ingest:write"
KAFKA_PRODUCE = "kafka:produce"
KAFKA_CONSUME = "kafka:consume"
REGISTRY_READ = "registry:read"
PROVISION_READ = "provision:read"
PROVISION_WRITE = "provision:write"

ALL = (INGEST_WRITE, KAFKA_PRODUCE, KAFKA_CONSUME, REGISTRY_READ, PROVISION_READ, PROVISION_WRITE)

DEVICE_SCOPES = frozenset({INGEST_WRITE, KAFKA_PRODUCE})
SERVICE_SCOPES = frozenset({PROVISION_READ, PROVISION_WRITE})
CONSUMER_SCOPES = frozenset({KAFKA_CONSUME, REGISTRY_READ})

# Which client kind (tenants.oauth.models.OAuthClient.Kind) may hold which scope.  A device
# credential must never reach the provisioning API, and an automation credential never
# produces telemetry under a device group's Kafka principal.
ALLOWED_FOR_KIND: dict[str, frozenset[str]] = {
    "device": DEVICE_SCOPES,
    "gateway": DEVICE_SCOPES,
    "service": SERVICE_SCOPES,
    "consumer": CONSUMER_SCOPES,
}

AUDIENCE_OF: dict[str, str] = {
    INGEST_WRITE: AUD_INGEST,
    KAFKA_PRODUCE: AUD_KAFKA,
    KAFKA_CONSUME: AUD_KAFKA,
    REGISTRY_READ: AUD_REGISTRY,
    PROVISION_READ: AUD_API,
    PROVISION_WRITE: AUD_API,
}


def audiences_for(scopes: Iterable[str]) -> list[str]:
    """The ``aud`` values of a token with ``scopes`` (RFC 9068 §3: a token names the resource
    servers it is for, so a token meant for ingest is refused by the API, and vice versa)."""
    return sorted({AUDIENCE_OF[scope] for scope in scopes})


def parse(scope: str | None) -> list[str]:
    """RFC 6749 §3.3: a space-delimited, order-free list; duplicates collapse."""
    return sorted(set((scope or "").split()))
