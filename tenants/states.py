"""The values of the statuses and credential policies the credential policy decides on,
defined once: the models' choices (``Tenant.Status``, ``Device.Status``,
``DeviceGroup.CredentialPolicy``, ``Certificate.Status``, ``OAuthClient.Status``) and
``tenants.policy`` use them.  No imports, so every models module can import it."""

from __future__ import annotations

ACTIVE = "active"  # tenants, devices, certificates and OAuth clients alike
SUSPENDED = "suspended"  # a tenant
DISABLED = "disabled"  # a device
SUPERSEDED = "superseded"  # a certificate renewed; valid until its overlap ends
REVOKED = "revoked"  # a certificate or an OAuth client

MTLS = "mtls"  # a group's credential policy: client certificates only
OAUTH2 = "oauth2"  # OAuth2 tokens only
BOTH = "both"  # either

CERTIFICATE_POLICIES = frozenset({MTLS, BOTH})
OAUTH_POLICIES = frozenset({OAUTH2, BOTH})
