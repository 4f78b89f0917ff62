"""Tenants, who may act on them, API tokens for scripts, and the append-only audit log."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from tenants import states

# Tenant and group slugs end up in Kafka topic names (iot.<tenant>.<region>.<type>) and in
# Kafka principals (<tenant>.<group>), so they are restricted to what is safe in both.
SLUG_RULE = (
    "2-40 characters: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"
)
SLUG_REGEX = r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$"
slug_validator = RegexValidator(SLUG_REGEX, message=f"Must be {SLUG_RULE}.", code="invalid_slug")


def dlq_topic(tenant_slug: str) -> str:
    """The tenant's dead-letter topic: records ingest refused, kept when a device asked
    (``?invalid=dlq``).  Under the tenant's ``iot.<tenant>.`` namespace like its streams."""
    return f"iot.{tenant_slug}.dlq"


class Tenant(models.Model):
    """A customer of the platform: owns device groups, devices, streams and Kafka topics
    under the prefix ``iot.<slug>.``."""

    class Status(models.TextChoices):
        ACTIVE = states.ACTIVE
        SUSPENDED = states.SUSPENDED

    class TopicPolicy(models.TextChoices):
        DELETE = "delete", "delete the tenant's topics with the tenant"
        KEEP = "keep", "keep the tenant's topics when the tenant is deleted"

    slug = models.CharField(max_length=40, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    max_devices = models.PositiveIntegerField(
        verbose_name="maximum devices", default=100_000, validators=[MinValueValidator(1)]
    )
    max_records_per_second = models.PositiveIntegerField(
        verbose_name="maximum records per second", default=10_000, validators=[MinValueValidator(1)]
    )
    max_bytes_per_second = models.PositiveIntegerField(
        verbose_name="maximum bytes per second", default=10 * 2**20, validators=[MinValueValidator(1)]
    )
    # What one tenant may ask of the shared Kafka cluster: every partition costs the brokers
    # file handles, memory and controller metadata, so both are capped (devices.services
    # checks them inside the writing transaction).  Operators set them; tenant admins cannot.
    max_streams = models.PositiveIntegerField(
        verbose_name="maximum streams",
        default=50,
        validators=[MinValueValidator(1)],
        help_text="Streams (Kafka topics) this tenant may have.",
    )
    max_partitions = models.PositiveIntegerField(
        verbose_name="maximum partitions",
        default=1_000,
        validators=[MinValueValidator(1)],
        help_text="Partitions this tenant's streams may have in total.",
    )
    topic_deletion_policy = models.CharField(
        verbose_name="topic deletion policy", max_length=8, choices=TopicPolicy.choices, default=TopicPolicy.DELETE
    )
    # Kafka client quotas of each Kafka-direct credential's principal (ingest.quotas): the
    # broker throttles a producer past them.  Operator-set, like the other limits.
    kafka_producer_byte_rate = models.PositiveIntegerField(
        verbose_name="Kafka producer byte rate (bytes per second)", default=2**20, validators=[MinValueValidator(1024)]
    )
    kafka_consumer_byte_rate = models.PositiveIntegerField(
        verbose_name="Kafka consumer byte rate (bytes per second)",
        default=2 * 2**20,
        validators=[MinValueValidator(1024)],
        help_text="What each of the tenant's consumer credentials may fetch per broker.",
    )
    kafka_request_percentage = models.FloatField(
        verbose_name="Kafka request percentage",
        default=10.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(1000.0)],
    )
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name="updated", auto_now=True)

    class Meta:
        ordering: ClassVar = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def topic_prefix(self) -> str:
        return f"iot.{self.slug}."

    @property
    def dlq_topic(self) -> str:
        return dlq_topic(self.slug)

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class RetiredSlug(models.Model):
    """The slug of a deleted tenant, held back so that no new tenant takes it while anything
    of the old one could still act or be read under it: topics ``iot.<slug>.*`` kept by the
    tenant's policy (held until an operator releases the slug, ``manage.py
    sluice_release_slug``, once those topics are gone), credentials whose end has not reached
    every cache yet (held for ``tenants.services.SLUG_RESERVATION``, longer than any token
    or CRL cache lives).  Principals carry credential ids and are never reused whatever the
    slug; this keeps topics, schema subjects and audit history from passing to a stranger."""

    slug = models.CharField(max_length=40, unique=True)
    deleted_at = models.DateTimeField()
    # None: held until released (the deleted tenant's topics were kept).
    reserved_until = models.DateTimeField(null=True, blank=True)
    topics_kept = models.JSONField(default=list, blank=True)

    class Meta:
        ordering: ClassVar = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    """A user's role in one tenant.  Platform operators are Django superusers and need none."""

    class Role(models.TextChoices):
        ADMIN = "admin", "tenant admin"
        VIEWER = "viewer", "tenant viewer"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)

    class Meta:
        constraints: ClassVar = [models.UniqueConstraint(fields=["user", "tenant"], name="one_role_per_tenant")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.tenant}"


class ApiToken(models.Model):
    """A bearer token for scripts, acting as its user.  Only the SHA-256 of the secret is
    stored; the secret is shown once, at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, unique=True)
    secret_hash = models.CharField(verbose_name="secret hash", max_length=64, unique=True)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)
    expires_at = models.DateTimeField(verbose_name="expires", null=True, blank=True)
    last_used_at = models.DateTimeField(verbose_name="last used", null=True, blank=True)
    revoked_at = models.DateTimeField(verbose_name="revoked", null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> int:
        raise PermissionError("the audit log is append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("the audit log is append-only")


class AuditEvent(models.Model):
    """One provisioning, credential or ACL change: who, what, when, which tenant, and the
    object before and after.  Append-only: the application never updates or deletes rows
    (tenant deletion keeps them, with the tenant's slug)."""

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    tenant_slug = models.CharField(verbose_name="tenant", max_length=40, blank=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(verbose_name="actor", max_length=200)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(verbose_name="object type", max_length=64)
    object_id = models.CharField(verbose_name="object ID", max_length=64, blank=True)
    object_repr = models.CharField(verbose_name="object", max_length=300, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(verbose_name="request ID", max_length=64, blank=True)
    created_at = models.DateTimeField(verbose_name="time", auto_now_add=True, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering: ClassVar = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise PermissionError("the audit log is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("the audit log is append-only")


# Registered under this app; defined with the authorization server it belongs to.
from tenants.oauth.models import OAuthClient  # noqa: E402, F401
