"""Streams (Kafka topics), device groups (the unit of policy) and devices."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from devices.principals import CONSUMERS, consumer_group_prefix, group_principal
from tenants import states
from tenants.models import SLUG_REGEX, SLUG_RULE, Tenant, slug_validator

HOUR_MS = 3_600_000
DEVICE_ID_RULE = "1-128 characters: letters, digits, '.', '_', ':' and '-', starting with a letter or digit"
device_id_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", message=f"Must be {DEVICE_ID_RULE}.", code="invalid_device_id"
)


def default_partitions() -> int:
    return int(settings.SLUICE_DEFAULT_PARTITIONS)


def default_replication_factor() -> int:
    return int(settings.SLUICE_DEFAULT_REPLICATION_FACTOR)


def min_insync_replicas(replication_factor: int) -> int:
    return min(2, replication_factor)


class Stream(models.Model):
    """A Kafka topic of a tenant: ``iot.<tenant>.<region>.<type>`` for raw telemetry,
    with ``.enriched`` appended for derived data."""

    class RetentionClass(models.TextChoices):
        RAW = "raw", "raw (6 h)"
        ENRICHED = "enriched", "enriched (168 h)"
        CUSTOM = "custom", "custom"

    class Compression(models.TextChoices):
        PRODUCER = "producer"
        ZSTD = "zstd"
        LZ4 = "lz4"
        SNAPPY = "snappy"
        GZIP = "gzip"
        UNCOMPRESSED = "uncompressed"

    class CleanupPolicy(models.TextChoices):
        DELETE = "delete"
        COMPACT = "compact"
        COMPACT_DELETE = "compact,delete"

    class Status(models.TextChoices):
        PENDING = "pending"
        PROVISIONED = "provisioned"
        FAILED = "failed"

    RETENTION_MS: ClassVar[dict[str, int]] = {"raw": 6 * HOUR_MS, "enriched": 168 * HOUR_MS}

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="streams")
    region = models.CharField(verbose_name="region", max_length=40, validators=[slug_validator])
    type = models.CharField(verbose_name="device type", max_length=40, validators=[slug_validator])
    retention_class = models.CharField(
        verbose_name="retention class", max_length=16, choices=RetentionClass.choices, default=RetentionClass.RAW
    )
    custom_retention_hours = models.PositiveIntegerField(
        verbose_name="custom retention (hours)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 3650)],
    )
    partitions = models.PositiveIntegerField(
        default=default_partitions, validators=[MinValueValidator(1), MaxValueValidator(10_000)]
    )
    replication_factor = models.PositiveSmallIntegerField(
        verbose_name="replication factor",
        default=default_replication_factor,
        validators=[MinValueValidator(1), MaxValueValidator(7)],
    )
    compression = models.CharField(max_length=16, choices=Compression.choices, default=Compression.ZSTD)
    cleanup_policy = models.CharField(
        verbose_name="cleanup policy", max_length=16, choices=CleanupPolicy.choices, default=CleanupPolicy.DELETE
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    last_error = models.TextField(verbose_name="last error", blank=True)
    provisioned_at = models.DateTimeField(verbose_name="provisioned", null=True, blank=True)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name="updated", auto_now=True)

    class Meta:
        ordering: ClassVar = ["tenant", "region", "type", "retention_class"]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["tenant", "region", "type", "retention_class"], name="one_stream_per_topic"
            ),
            models.CheckConstraint(
                condition=~models.Q(retention_class="custom") | models.Q(custom_retention_hours__isnull=False),
                name="custom_retention_has_hours",
            ),
        ]

    def __str__(self) -> str:
        return self.topic

    @property
    def topic(self) -> str:
        base = f"iot.{self.tenant.slug}.{self.region}.{self.type}"
        return f"{base}.enriched" if self.retention_class == self.RetentionClass.ENRICHED else base

    @property
    def retention_ms(self) -> int:
        if self.retention_class == self.RetentionClass.CUSTOM:
            return int(self.custom_retention_hours or 0) * HOUR_MS
        return self.RETENTION_MS[self.retention_class]

    def topic_config(self) -> dict[str, str]:
        """The topic-level Kafka configs this stream owns."""
        return {
            "retention.ms": str(self.retention_ms),
            "compression.type": self.compression,
            "cleanup.policy": self.cleanup_policy,
            # acks=all waits for the in-sync replicas only: with the broker default of 1 a
            # record acknowledged by a lone leader is lost if that leader dies.  Two of three
            # replicas keeps "a 2xx is never lost" true on a real cluster.
            "min.insync.replicas": str(min_insync_replicas(self.replication_factor)),
        }


# A device group's expected reporting interval: an hour unless said otherwise, from ten
# seconds to thirty days.
EXPECTED_INTERVAL_DEFAULT = 3600
EXPECTED_INTERVAL_MIN = 10
EXPECTED_INTERVAL_MAX = 30 * 24 * 3600


class DeviceGroup(models.Model):
    """The unit of policy: which stream its devices write to, under which schema subject,
    with which credentials and limits, and whether they may also write to Kafka directly
    (``kafka_direct``; each credential then has its principal ``<tenant>.<group>.<id>``)."""

    class CredentialPolicy(models.TextChoices):
        MTLS = states.MTLS, "mTLS client certificate"
        OAUTH2 = states.OAUTH2, "OAuth2 bearer token"
        BOTH = states.BOTH, "either"

    class KeyType(models.TextChoices):
        EC_P256 = "ec-p256", "ECDSA P-256"
        EC_P384 = "ec-p384", "ECDSA P-384"
        RSA_2048 = "rsa-2048", "RSA 2048"
        RSA_3072 = "rsa-3072", "RSA 3072"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="groups")
    slug = models.CharField(verbose_name="slug", max_length=40, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True)
    # The stream's region and type (``follow_stream``): blank means "take them from the stream".
    region = models.CharField(
        verbose_name="region",
        max_length=40,
        blank=True,
        validators=[slug_validator],
        help_text="The stream's region; leave empty to take it from the stream.",
    )
    device_type = models.CharField(
        verbose_name="device type",
        max_length=40,
        blank=True,
        validators=[slug_validator],
        help_text="The stream's type; leave empty to take it from the stream.",
    )
    stream = models.ForeignKey(Stream, on_delete=models.PROTECT, related_name="groups")
    schema_subject = models.CharField(verbose_name="schema subject", max_length=255)
    credential_policy = models.CharField(
        verbose_name="credential policy", max_length=8, choices=CredentialPolicy.choices, default=CredentialPolicy.MTLS
    )
    cert_lifetime_days = models.PositiveIntegerField(
        verbose_name="certificate lifetime (days)",
        default=365,
        validators=[MinValueValidator(1), MaxValueValidator(3650)],
    )
    cert_key_type = models.CharField(
        verbose_name="certificate key type", max_length=16, choices=KeyType.choices, default=KeyType.EC_P256
    )
    cert_renewal_window_days = models.PositiveIntegerField(
        verbose_name="renewal window (days)", default=30, validators=[MinValueValidator(1)]
    )
    rate_limit_per_second = models.PositiveIntegerField(
        verbose_name="rate limit (records per second)", default=10, validators=[MinValueValidator(1)]
    )
    # How often its devices are expected to report: one silent for longer shows on the
    # console's overviews ("devices silent").
    expected_interval_seconds = models.PositiveIntegerField(
        verbose_name="expected reporting interval (seconds)",
        default=EXPECTED_INTERVAL_DEFAULT,
        validators=[MinValueValidator(EXPECTED_INTERVAL_MIN), MaxValueValidator(EXPECTED_INTERVAL_MAX)],
        help_text="A device silent for longer than this is listed as silent on the console's overviews.",
    )
    # Kafka-direct access is a privilege of its own: only then does each usable credential
    # of the group get its own ACL (ingest.acls).  HTTPS ingest produces as the platform.
    kafka_direct = models.BooleanField(verbose_name="Kafka-direct access", default=False)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name="updated", auto_now=True)

    class Meta:
        ordering: ClassVar = ["tenant", "slug"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["tenant", "slug"], name="group_slug_unique_per_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.slug}"

    # The fields that follow the stream: a change of stream that does not name them re-derives them.
    FOLLOWS_STREAM: ClassVar[tuple[str, ...]] = ("region", "device_type")

    def clean(self) -> None:
        super().clean()
        self.follow_stream()

    def follow_stream(self) -> None:
        """A group's region and device type are its stream's (``iot.<tenant>.<region>.<type>``):
        an empty one is taken from the stream, a different one is refused on its field with
        the code ``contradicts_stream`` -- a group labelled ``us``/``vibration`` that writes to
        ``eu.temperature`` would mislead every reader of the label.  The one place the rule
        lives: ``full_clean`` runs it for the services (API, onboarding) and the console."""
        if self.stream_id is None:
            return
        errors: dict[str, ValidationError] = {}
        for field, expected, what in (("region", self.stream.region, "region"),
                                      ("device_type", self.stream.type, "type")):  # fmt: skip
            given = getattr(self, field)
            if not given:
                setattr(self, field, expected)
            elif given != expected:
                errors[field] = ValidationError(
                    f"Must be '{expected}', the {what} of the stream {self.stream.topic} (or left empty).",
                    code="contradicts_stream",
                )
        if errors:
            raise ValidationError(errors)

    @property
    def kafka_principal(self) -> str:
        """``User:<tenant>.<group>``: the prefix (plus ``.``) of its credentials' principals;
        itself the principal of certificates issued before credential ids, which holds no ACL."""
        return group_principal(tenant=self.tenant.slug, group=self.slug)


class Device(models.Model):
    """One device of a tenant, in exactly one group of the same tenant."""

    class Status(models.TextChoices):
        ACTIVE = states.ACTIVE
        DISABLED = states.DISABLED

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="devices")
    group = models.ForeignKey(
        DeviceGroup, verbose_name="device group", on_delete=models.PROTECT, related_name="devices"
    )
    device_id = models.CharField(verbose_name="device ID", max_length=128, validators=[device_id_validator])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    labels = models.JSONField(default=dict, blank=True)
    last_seen_at = models.DateTimeField(verbose_name="last seen", null=True, blank=True)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name="updated", auto_now=True)

    class Meta:
        ordering: ClassVar = ["tenant", "device_id"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["tenant", "device_id"], name="device_id_unique_per_tenant")
        ]
        indexes: ClassVar = [models.Index(fields=["tenant", "group"])]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.device_id}"


class Consumer(models.Model):
    """A tenant's backend that reads its streams from Kafka with its own credentials (client
    certificates from the tenant CA, OAuth clients with ``kafka:consume``).  Each usable
    credential is its own principal ``User:<tenant>.consumers.<consumer>.<credential id>``
    and gets READ on the topics this consumer is granted (``all_streams`` or ``streams``,
    plus the tenant's DLQ with ``dead_letters``) and on the consumer groups under
    ``<tenant>.<consumer>.``; nothing else (``ingest.acls``).  Disabling or deleting it
    takes every grant away; its credentials are revoked on deletion."""

    class Status(models.TextChoices):
        ACTIVE = states.ACTIVE
        DISABLED = states.DISABLED

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="consumers")
    slug = models.CharField(verbose_name="slug", max_length=40, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True)
    all_streams = models.BooleanField(
        verbose_name="all streams", default=True, help_text="Read every stream of the tenant, present and future."
    )
    streams = models.ManyToManyField(
        Stream, blank=True, related_name="consumers", help_text="The streams it reads when not all of them."
    )
    dead_letters = models.BooleanField(
        verbose_name="dead letters", default=False, help_text="Also read the tenant's dead-letter topic."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name="updated", auto_now=True)

    class Meta:
        ordering: ClassVar = ["tenant", "slug"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["tenant", "slug"], name="consumer_slug_unique_per_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.slug}"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def kafka_principal_prefix(self) -> str:
        """``User:<tenant>.consumers.<consumer>.``: every credential principal of it starts so."""
        return f"User:{self.tenant.slug}.{CONSUMERS}.{self.slug}."

    @property
    def group_prefix(self) -> str:
        """The consumer-group ids it may use start with this: ``<tenant>.<consumer>.``."""
        return consumer_group_prefix(tenant=self.tenant.slug, consumer=self.slug)


__all__ = ["SLUG_REGEX", "SLUG_RULE", "Consumer", "Device", "DeviceGroup", "Stream"]
