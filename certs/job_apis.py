"""Bulk jobs over the API: start a device import or a certificate issuance (202 with the
job and its ``Location``), then poll ``.../jobs/<id>/`` until its status is no longer
``queued`` or ``running``.  See ``certs.jobs``."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from certs import jobs, selectors
from certs.apis import CSR_HELP, CsrField
from certs.models import Job
from certs.services import BULK_MAX
from config.errors import InvalidInput, PayloadTooLarge, field_errors
from devices.apis import BulkImportInput, DeviceBulkImportApi, DeviceRow, device_id_field, import_rows
from tenants.api_base import ScopedApi, StrictSerializer

POLL = "Poll the job's URL (the Location header) until its status is succeeded, failed or partial."


class JobError(serializers.Serializer):
    pointer = serializers.CharField(help_text="The item: /rows/<index>[/<field>] or /items/<index>[/<field>].")
    code = serializers.CharField()
    message = serializers.CharField()


class JobKeysOutput(serializers.Serializer):
    generated = serializers.IntegerField(source="keys_generated", help_text="Private keys Sluice generated.")
    collect_url = serializers.SerializerMethodField(help_text="POST here, once, as who started the job.")
    expires_at = serializers.DateTimeField(
        source="keys_expire_at", allow_null=True, help_text="Uncollected keys are deleted then (a day after the end)."
    )
    collected_at = serializers.DateTimeField(source="keys_collected_at", allow_null=True)

    def get_collect_url(self, job: Job) -> str:
        return reverse("job-keys", kwargs={"tenant": job.tenant.slug, "job": job.pk})


class JobOutput(serializers.ModelSerializer):
    id = serializers.IntegerField(read_only=True)
    tenant = serializers.CharField(source="tenant.slug", read_only=True)
    result = serializers.JSONField(
        help_text='device_import: {"created": n}; certificate_issue: {"issued": [{"device_id", "serial", "key": '
        '"csr"|"generated"}]} (the chains at .../certificates/<serial>/; the job row never holds a private key).'
    )
    url = serializers.SerializerMethodField()
    keys = serializers.SerializerMethodField(help_text="Issuance jobs that generated keys: how to collect them.")

    class Meta:
        model = Job
        fields = ("id", "url", "tenant", "kind", "status", "total", "done", "failed", "errors", "result", "keys",
                  "created_by_label", "created_at", "started_at", "finished_at")  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(JobKeysOutput(allow_null=True))
    def get_keys(self, job: Job) -> dict[str, Any] | None:
        return JobKeysOutput(job).data if job.keys_generated else None

    def get_fields(self) -> dict[str, serializers.Field]:
        # "errors" is also the name of Serializer.errors: the field is added here, not declared.
        fields = super().get_fields()
        fields["errors"] = JobError(
            many=True, read_only=True, help_text=f"Per-item errors, the first {jobs.ERRORS_KEPT}; failed counts all."
        )
        return fields

    def get_url(self, job: Job) -> str:
        return reverse("job-detail", kwargs={"tenant": job.tenant.slug, "job": job.pk})


def _accepted(job: Job) -> Response:
    body = JobOutput(job).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


class DeviceImportJobApi(DeviceBulkImportApi):
    """The bulk import as a job: the same input as ``devices/bulk`` (JSON or CSV)."""

    @extend_schema(
        request={"application/json": BulkImportInput,
                 "text/csv": {"type": "string", "format": "sluice-devices-csv"}},
        responses={202: JobOutput},
        description=f"Up to {settings.SLUICE_BULK_IMPORT_MAX_ROWS} devices, as for devices/bulk, imported by a "
        "background job: rows are checked and written in chunks, a bad row is reported in the job's errors "
        f"at /rows/<index>/<field> and the others are imported (not all or nothing). {POLL}",
    )  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        job = jobs.job_start(actor=self.actor, tenant=target, kind=Job.Kind.DEVICE_IMPORT,
                             items=checked_rows(import_rows(request)))  # fmt: skip
        return _accepted(job)


def checked_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row as the document describes it (fields, types, rules), checked before the job
    starts, every problem at /rows/<index>/<field>; what only the work can find (a group
    that does not exist, a device id taken) the job reports."""
    errors: list[dict[str, str]] = []
    for index, row in enumerate(rows):
        checked = DeviceRow(data=row)
        if not checked.is_valid():
            errors += field_errors(checked.errors, f"/rows/{index}")
    if errors:
        bad_rows = len({e["pointer"].split("/")[2] for e in errors})
        raise InvalidInput(f"{bad_rows} row(s) are invalid; no job was started.", fields=errors)
    return rows


class JobIssueItem(StrictSerializer):
    device_id = device_id_field(help_text="A device of this tenant.")
    csr = CsrField(required=False, help_text=CSR_HELP + " Without one, Sluice generates the key; the job's "
                   "creator collects the generated keys once, at keys.collect_url.")  # fmt: skip


class JobIssueInput(StrictSerializer):
    # many=True hands min_length to the ListSerializer; the stubs' Serializer.__init__ omits it.
    items = JobIssueItem(many=True, allow_empty=False, min_length=1, help_text=f"At most {BULK_MAX} (413 beyond).")  # type: ignore[call-arg]


class CertificateIssueJobApi(ScopedApi):
    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"post": (413,)}

    @extend_schema(request=JobIssueInput, responses={202: JobOutput},
                   description="Certificates for many devices, issued by a background job; a bad item is "
                   "reported in the job's errors at /items/<index>/<field>, the others are issued. An item "
                   "without a CSR gets a key Sluice generates, kept encrypted until the job's creator collects "
                   f"it once (POST .../jobs/<id>/keys) or a day after the job ended. {POLL}")  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        raw = request.data.get("items") if isinstance(request.data, dict) else None
        if isinstance(raw, list) and len(raw) > BULK_MAX:
            raise PayloadTooLarge(f"A job takes at most {BULK_MAX} items; this one has {len(raw)}.")
        items: list[dict[str, Any]] = [dict(i) for i in self.parse(JobIssueInput)["items"]]
        job = jobs.job_start(actor=self.actor, tenant=target, kind=Job.Kind.CERTIFICATE_ISSUE, items=items)
        return _accepted(job)


class JobListApi(ScopedApi):
    @extend_schema(responses=JobOutput(many=True), description="This tenant's bulk jobs, newest first.")
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(selectors.job_list(scope=self.tenant_scope), JobOutput)


class JobDetailApi(ScopedApi):
    @extend_schema(responses=JobOutput, description=POLL)
    def get(self, request: Request, tenant: str, job: int) -> Response:
        return Response(JobOutput(selectors.job_get(scope=self.tenant_scope, pk=job)).data)


class CollectedKey(serializers.Serializer):
    device_id = serializers.CharField()
    serial = serializers.CharField()
    chain_pem = serializers.CharField(help_text="The certificate, then its tenant CA.")
    private_key_pem = serializers.CharField(help_text="PKCS#8, unencrypted: given once.")


class CollectedKeys(serializers.Serializer):
    keys = CollectedKey(many=True)


class JobKeysApi(ScopedApi):
    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"post": (410,)}

    @extend_schema(request=None, responses={200: CollectedKeys},
                   description="The private keys (with their chains) an issuance job generated, once, to who "
                   "started the job, when it has ended; they are deleted as they are given. 409 no_keys or "
                   "job_not_ended, 403 not_job_owner, 410 keys_collected or keys_expired.")  # fmt: skip
    def post(self, request: Request, tenant: str, job: int) -> Response:
        target = self.writable_tenant()
        keys = jobs.job_keys_collect(actor=self.actor, tenant=target, job_id=job)
        response = Response({"keys": keys})
        response["Cache-Control"] = "no-store"
        return response
