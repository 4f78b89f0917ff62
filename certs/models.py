"""Tenant issuing CAs and the certificates they issue."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

from devices.models import Device
from tenants import states
from tenants.models import Tenant


class CertificateAuthority(models.Model):
    """A tenant's issuing CA (pathLen 0), signed by the platform root.  Its private key is
    stored only encrypted with the key-encryption key (PKCS#8, BestAvailableEncryption)."""

    class Status(models.TextChoices):
        ACTIVE = "active"  # issues new certificates
        RETIRING = "retiring"  # still trusted, issues nothing (rotation overlap)
        RETIRED = "retired"

    tenant = models.ForeignKey(Tenant, verbose_name="tenant", on_delete=models.CASCADE, related_name="cas")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    subject = models.CharField(verbose_name="subject", max_length=300)
    serial = models.CharField(verbose_name="serial number", max_length=64, unique=True)
    certificate_pem = models.TextField(verbose_name="certificate (PEM)")
    encrypted_key_pem = models.TextField(verbose_name="encrypted key (PEM)")
    not_before = models.DateTimeField(verbose_name="valid from")
    not_after = models.DateTimeField(verbose_name="valid until")
    crl_number = models.PositiveBigIntegerField(verbose_name="CRL number", default=0)
    crl_der = models.BinaryField(verbose_name="CRL (DER)", default=bytes)
    crl_next_update = models.DateTimeField(verbose_name="next CRL update", null=True, blank=True)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)

    class Meta:
        verbose_name_plural = "certificate authorities"
        ordering: ClassVar = ["tenant", "-not_after"]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["tenant"], condition=models.Q(status="active"), name="one_active_ca_per_tenant"
            )
        ]

    def __str__(self) -> str:
        return self.subject


class Certificate(models.Model):
    """A device's (or a consumer's) client certificate.  The private key is never stored: it stays on the
    device (CSR) or is handed out once (server-generated)."""

    class Status(models.TextChoices):
        ACTIVE = states.ACTIVE
        SUPERSEDED = states.SUPERSEDED  # renewed; valid until its overlap ends
        REVOKED = states.REVOKED

    class Origin(models.TextChoices):
        CSR = "csr", "CSR"
        GENERATED = "generated", "Generated key"
        RENEWAL = "renewal", "Rotation"  # a successor the rotation task issued with a server-generated key
        EST_RENEWAL = "est_renewal", "EST renewal"  # the device renewed over EST with its own key

    # Certificates whose private key only the device holds: rotation can mark them due but
    # never renew them itself (it would have to generate and hand over a new key).
    DEVICE_KEY_ORIGINS = (Origin.CSR, Origin.EST_RENEWAL)

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="certificates")
    device = models.ForeignKey(
        Device, verbose_name="device", null=True, blank=True, on_delete=models.SET_NULL, related_name="certificates"
    )
    device_ref = models.CharField(
        verbose_name="device ID", max_length=128
    )  # the device id, kept after the device is deleted
    # A consumer's certificate (no device; device_ref is blank): a tenant backend reading
    # its streams from Kafka as ``User:<tenant>.consumers.<consumer>.<credential id>``.
    consumer = models.ForeignKey(
        "devices.Consumer",
        verbose_name="consumer",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="certificates",
    )
    ca = models.ForeignKey(
        CertificateAuthority, verbose_name="issuing CA", on_delete=models.PROTECT, related_name="issued"
    )
    serial = models.CharField(verbose_name="serial number", max_length=64, unique=True)
    fingerprint_sha256 = models.CharField(verbose_name="SHA-256 fingerprint", max_length=64, unique=True)
    subject = models.CharField(max_length=300)
    certificate_pem = models.TextField(verbose_name="certificate (PEM)")
    key_type = models.CharField(verbose_name="key type", max_length=16)
    origin = models.CharField(verbose_name="origin", max_length=16, choices=Origin.choices)
    status = models.CharField(verbose_name="status", max_length=16, choices=Status.choices, default=Status.ACTIVE)
    not_before = models.DateTimeField(verbose_name="valid from")
    not_after = models.DateTimeField(verbose_name="valid until")
    revoked_at = models.DateTimeField(verbose_name="revoked", null=True, blank=True)
    revocation_reason = models.CharField(verbose_name="revocation reason", max_length=32, blank=True)
    superseded_by = models.ForeignKey(
        "self", verbose_name="renewed as", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # After a renewal the old certificate stays valid until then; rotation revokes it after.
    overlap_until = models.DateTimeField(verbose_name="still valid after renewal until", null=True, blank=True)
    # Inside its group's renewal window; a CSR-based certificate waits for the device to
    # re-enroll (EST simplereenroll).
    renewal_due = models.BooleanField(verbose_name="renewal due", default=False, db_index=True)
    # A successor that rotation issued for a server-generated certificate keeps its new key
    # here, encrypted with the KEK, until the device collects it once (EST serverkeygen).
    pending_key_encrypted = models.TextField(verbose_name="pending key (encrypted)", blank=True)
    # ``User:<tenant>.<group>.<credential id>`` (certs.principals), what Kafka maps this
    # certificate's subject to; blank for certificates issued before credential ids, whose
    # principal no ACL names.
    kafka_principal = models.CharField(verbose_name="Kafka principal", max_length=200, blank=True)
    created_at = models.DateTimeField(verbose_name="created", auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["tenant", "-created_at"]
        indexes: ClassVar = [models.Index(fields=["tenant", "device_ref"]), models.Index(fields=["ca", "status"])]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["kafka_principal"],
                condition=~models.Q(kafka_principal=""),
                name="one_certificate_per_principal",
            )
        ]

    def __str__(self) -> str:
        return f"{self.subject} #{self.serial[:12]}"


class Job(models.Model):
    """Bulk work run by a Celery task, which the API and the console poll (``certs.jobs``).

    It lives here, in the highest domain app, because its two kinds call both ``devices``
    (device import) and ``certs`` (certificate issuance).  A job row never holds a secret:
    the private keys an issuance job generates are sealed in ``JobKeys`` (encrypted under the
    key-encryption key) until its creator collects them, once, or they expire; ``input``
    (device ids, CSRs) is cleared when the job ends."""

    class Kind(models.TextChoices):
        DEVICE_IMPORT = "device_import"
        CERTIFICATE_ISSUE = "certificate_issue"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"  # every item done
        FAILED = "failed"  # no item done
        PARTIAL = "partial"  # some items done, some refused (see errors)

    ENDED: ClassVar = (Status.SUCCEEDED, Status.FAILED, Status.PARTIAL)

    tenant = models.ForeignKey(Tenant, verbose_name="tenant", on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0, help_text="Items handled so far, succeeded or failed.")
    failed = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="Per-item errors, the first few only.")
    result = models.JSONField(default=dict, blank=True)
    input = models.JSONField(default=list, blank=True, help_text="The items to do; cleared when the job ends.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")  # fmt: skip
    created_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    keys_generated = models.PositiveIntegerField(default=0, help_text="Private keys Sluice generated (issuance).")
    keys_expire_at = models.DateTimeField(null=True, blank=True, help_text="Uncollected keys are deleted then.")
    keys_collected_at = models.DateTimeField(null=True, blank=True)
    keys_collected_by_label = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"


class JobKeys(models.Model):
    """The private keys (and chains) one chunk of an issuance job generated, sealed with
    AES-256-GCM under a key derived from the key-encryption key (``certs.jobs``), until the
    job's creator collects them (then deleted) or they expire (then deleted by beat)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="sealed_keys")
    start = models.PositiveIntegerField(help_text="Index of the chunk's first item.")
    count = models.PositiveIntegerField()
    sealed = models.BinaryField(help_text="Nonce, then ciphertext and tag.")

    class Meta:
        ordering: ClassVar = ["start"]
        constraints: ClassVar = [models.UniqueConstraint(fields=["job", "start"], name="one_sealed_chunk")]

    def __str__(self) -> str:
        return f"keys of job #{self.job_id} from item {self.start} ({self.count})"
