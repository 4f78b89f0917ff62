"""OAuth2 clients of Sluice's own authorization server (client-credentials grant only).

Imported by ``tenants.models`` so Django registers the model under the ``tenants`` app;
related models are named by string so this module imports no other app's models.
"""

from __future__ import annotations

import hmac
from typing import ClassVar, TypedDict

from django.db import models

from tenants import states
from tenants.hashing import hash_token


class PolicyFacts(TypedDict):
    """An OAuth client's facts as ``tenants.policy.oauth_client_refusal`` takes them."""

    status: str
    tenant_status: str
    device_status: str | None
    credential_policy: str | None
    consumer_status: str | None


class OAuthClient(models.Model):
    """A confidential OAuth2 client of one tenant (RFC 6749 §2.1), authenticating with its
    ``client_id`` and a secret to get access tokens by the client-credentials grant (§4.4).

    * ``device``: one device; its tokens carry the device id and the client's Kafka principal
      (``<tenant>.<group>.<client_id>``).
    * ``gateway``: speaks for the devices of one group; its tokens carry the client's principal.
    * ``service``: a tenant's backend automation; its tokens reach the provisioning API for
      this tenant only (``provision:read`` as a viewer, ``provision:write`` as an admin).
    * ``consumer``: one consumer of the tenant (a backend reading its streams); its tokens
      carry the consumer credential's principal (``<tenant>.consumers.<consumer>.<client_id>``)
      for ``kafka:consume`` and reach the tenant's schemas with ``registry:read``.

    Only the SHA-256 of the secret is stored: the secret is 256 random bits, so a fast hash
    cannot be brute-forced, and the secret is shown once, at creation or rotation.  A device
    client's group is always its device's *current* group (``effective_group``), so moving a
    device moves its Kafka principal with it.
    """

    class Kind(models.TextChoices):
        DEVICE = "device"
        GATEWAY = "gateway"
        SERVICE = "service"
        CONSUMER = "consumer"

    class Status(models.TextChoices):
        ACTIVE = states.ACTIVE
        REVOKED = states.REVOKED

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="oauth_clients")
    client_id = models.CharField(verbose_name="client ID", max_length=40, unique=True, editable=False)
    secret_hash = models.CharField(verbose_name="secret hash", max_length=64, editable=False)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # CASCADE: a device's or group's credentials cannot outlive it (tenant deletion removes
    # devices, then groups, then the tenant).
    device = models.ForeignKey(
        "devices.Device", null=True, blank=True, on_delete=models.CASCADE, related_name="oauth_clients"
    )
    group = models.ForeignKey(
        "devices.DeviceGroup", null=True, blank=True, on_delete=models.CASCADE, related_name="oauth_clients"
    )
    consumer = models.ForeignKey(
        "devices.Consumer", null=True, blank=True, on_delete=models.CASCADE, related_name="oauth_clients"
    )
    scopes = models.JSONField(default=list)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)
    last_used_at = models.DateTimeField(verbose_name="last used", null=True, blank=True)
    secret_rotated_at = models.DateTimeField(verbose_name="secret rotated", null=True, blank=True)
    revoked_at = models.DateTimeField(verbose_name="revoked", null=True, blank=True)

    class Meta:
        app_label = "tenants"
        ordering: ClassVar = ["tenant", "created_at", "id"]
        verbose_name = "OAuth client"
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=(
                    models.Q(kind="device", device__isnull=False, group__isnull=True, consumer__isnull=True)
                    | models.Q(kind="gateway", device__isnull=True, group__isnull=False, consumer__isnull=True)
                    | models.Q(kind="service", device__isnull=True, group__isnull=True, consumer__isnull=True)
                    | models.Q(kind="consumer", device__isnull=True, group__isnull=True, consumer__isnull=False)
                ),
                name="oauth_client_subject_matches_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def effective_group(self) -> models.Model | None:
        """The device group whose policy and Kafka principal apply: the device's for device
        clients, the named group for gateways, none for service clients."""
        if self.kind == self.Kind.DEVICE:
            return self.device.group if self.device is not None else None
        return self.group

    @property
    def kafka_principal(self) -> str | None:
        """``<tenant>.<group>.<client_id>``: this client's own Kafka principal without
        ``User:`` -- the value of the token claim the broker maps to a principal
        (``sasl.oauthbearer.sub.claim.name``).  Per client, so revoking one client ends its
        Kafka access by one ACL change; the group is the effective one, so a device client's
        principal moves with its device (and its old tokens name the old group)."""
        if self.consumer is not None:
            return f"{self.consumer.kafka_principal_prefix}{self.client_id}".removeprefix("User:")
        group = self.effective_group
        if group is None:
            return None
        return f"{group.kafka_principal}.{self.client_id}".removeprefix("User:")  # type: ignore[attr-defined]

    def check_secret(self, secret: str) -> bool:
        """Constant-time comparison of digests, so response timing says nothing about how
        much of a guess was right."""
        return hmac.compare_digest(self.secret_hash, hash_token(secret))

    def policy_facts(self) -> PolicyFacts:
        """What ``tenants.policy.oauth_client_refusal`` decides on: this client's status and
        its tenant's, device's and group's, as of this row.  Checked at issuance and again
        by resource servers on every request."""
        group = self.effective_group
        return PolicyFacts(
            status=self.status,
            tenant_status=self.tenant.status,
            device_status=self.device.status if self.device is not None else None,
            credential_policy=group.credential_policy if group is not None else None,  # type: ignore[attr-defined]
            consumer_status=self.consumer.status if self.consumer is not None else None,
        )
