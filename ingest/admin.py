"""The console's device page: the device, its certificates (state, expiry, renew and revoke)
and what ingest saw of it (last seen, recent refusals).

It draws on devices, certs and ingest at once, so it lives in the top app of that chain
(tenants -> devices -> certs -> ingest) as a subclass of ``devices.admin.DeviceAdmin``,
registered in its place.  Writes go through ``certs.services`` like the REST API's
(``POST .../devices/<id>/certificates/`` and ``.../certificates/<serial>/revoke``): issue
from a CSR or with a generated key shown once, and revoke with a reason, each confirmed
on a page of its own and audited by the service."""

from __future__ import annotations

import io
import zipfile
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from certs import jobs
from certs import selectors as cert_selectors
from certs import services as cert_services
from certs.apis import MAX_CSR_CHARS
from certs.job_apis import checked_rows
from certs.models import Job
from config.errors import SluiceError
from devices.admin import DeviceAdmin
from devices.apis import CsvParser, _rows
from devices.models import Device
from ingest.selectors import device_activity
from tenants.models import Tenant

if TYPE_CHECKING:
    # django-stubs' name for what get_fields returns.
    from django.contrib.admin.options import _FieldGroups as FieldGroups

MAX_CSR_FILE_BYTES = MAX_CSR_CHARS


def reason_label(name: str) -> str:
    """``key_compromise`` -> ``Key compromise`` (the console's labels are sentence case)."""
    return name.replace("_", " ").capitalize()


class IssueForm(forms.Form):
    """Renew a device's certificate the way the REST API issues one: the device's CSR
    (uploaded or pasted; the key stays on the device) or a key generated here, shown once."""

    csr_file = forms.FileField(label="CSR file", required=False,
                               help_text="A PKCS#10 certificate signing request in PEM, e.g. device.csr.")  # fmt: skip
    csr = forms.CharField(label="Or paste the CSR", required=False, max_length=MAX_CSR_CHARS,
                          widget=forms.Textarea(attrs={"rows": 8, "cols": 70, "spellcheck": "false"}))  # fmt: skip
    generate = forms.BooleanField(
        label="Generate the key here instead", required=False,
        help_text="Sluice generates the key and shows it once; it keeps no copy.",
    )  # fmt: skip

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what Form.clean returns (django-stubs allows None)
        upload = data.get("csr_file")
        if upload is not None:
            if upload.size > MAX_CSR_FILE_BYTES:
                self.add_error("csr_file", f"A CSR file has at most {MAX_CSR_FILE_BYTES} bytes.")
                return data
            try:
                data["csr"] = upload.read().decode("ascii")
            except UnicodeDecodeError:
                self.add_error("csr_file", "The file is not PEM text (DER? convert it with openssl req -outform PEM).")
                return data
        given = [bool(data.get("csr")), bool(data.get("generate"))]
        if sum(given) != 1:
            raise forms.ValidationError("Upload or paste a CSR, or tick “Generate the key here instead” (one of them).")
        return data


class RevokeForm(forms.Form):
    reason = forms.ChoiceField(
        label="Reason",
        initial="unspecified",
        choices=[(name, reason_label(name)) for name in sorted(cert_services.REASONS)],
    )


class ImportForm(forms.Form):
    tenant: forms.ModelChoiceField = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    csv_file = forms.FileField(
        label="CSV file", required=False, help_text="A header row device_id,group[,status][,label:<key>...]."
    )
    csv_text = forms.CharField(label="or CSV text", required=False, widget=forms.Textarea(attrs={"rows": 6}))

    def __init__(self, *args: Any, tenants: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["tenant"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = tenants

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("csv_file") and not data.get("csv_text"):
            raise forms.ValidationError("Choose a CSV file or paste CSV text.")
        return data

    def csv_bytes(self) -> bytes:
        upload = self.cleaned_data.get("csv_file")
        if upload is not None:
            return bytes(upload.read())
        return str(self.cleaned_data["csv_text"]).encode()


class DevicePageAdmin(DeviceAdmin):
    change_form_template = "admin/devices/device/sluice_change_form.html"

    def get_fields(self, request: HttpRequest, obj: Device | None = None) -> FieldGroups:
        # The page shows when ingest last saw the device from ingest's own flush (1 s late),
        # not the database's copy, which is written at most once a minute.
        return [name for name in super().get_fields(request, obj) if name != "last_seen_at"]

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("import/", self.admin_site.admin_view(self.import_view), name="devices_device_import"),
            path("jobs/<int:job>/", self.admin_site.admin_view(self.job_view), name="devices_device_job"),
            path("jobs/<int:job>/keys/", self.admin_site.admin_view(self.job_keys_view),
                 name="devices_device_job_keys"),
            path("<path:object_id>/certificates/issue/", self.admin_site.admin_view(self.issue_view),
                 name="devices_device_certificate_issue"),
            path("<path:object_id>/certificates/<str:serial>/revoke/", self.admin_site.admin_view(self.revoke_view),
                 name="devices_device_certificate_revoke"),
        ]  # fmt: skip
        return own + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        device = self._device(request, object_id)
        context = dict(extra_context or {})
        if device is not None:
            context.update(
                certificates=cert_selectors.device_certificates(scope=self.scope(request), device=device),
                activity=device_activity(device=device),
                can_change_certificates=self.has_change_permission(request, device),
            )
        return super().change_view(request, object_id, form_url, context)

    # -- bulk import as a job ------------------------------------------------------------

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """A CSV of devices imported by a job (``certs.jobs``): the page then polls the job
        through the API (the session authenticates it) and draws its progress."""
        tenants = self.writable_tenants(request)
        if not tenants.exists():
            raise PermissionDenied
        form = ImportForm(request.POST or None, request.FILES or None, tenants=tenants)
        if request.method == "POST" and form.is_valid():
            try:
                rows = checked_rows(_rows(CsvParser().parse(io.BytesIO(form.csv_bytes()))))
                job = jobs.job_start(actor=self.actor(request), tenant=form.cleaned_data["tenant"],
                                     kind=Job.Kind.DEVICE_IMPORT, items=rows)  # fmt: skip
                return HttpResponseRedirect(reverse("admin:devices_device_job", args=[job.pk]))
            except SluiceError as error:
                form.add_error(None, error.message)
                for field in error.fields[:20]:
                    form.add_error(None, f"{field.get('pointer', '')}: {field.get('message', '')}")
        return TemplateResponse(request, "admin/devices/device/import.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Import devices", "form": form,
            "changelist_url": reverse("admin:devices_device_changelist"),
        })  # fmt: skip

    # -- a job's page: its progress, its outcome, and (issuance) its keys, once --------------

    def _job(self, request: HttpRequest, job_id: int) -> Job:
        try:
            return cert_selectors.job_get(scope=self.scope(request), pk=job_id)
        except SluiceError:
            raise Http404("No such job.") from None

    def job_view(self, request: HttpRequest, job: int) -> HttpResponse:
        """A job of the user's tenants: the page polls it through the API (the session
        authenticates it) and draws its progress, then its outcome."""
        found = self._job(request, job)
        title = "Import devices" if found.kind == Job.Kind.DEVICE_IMPORT else "Issue certificates"
        return TemplateResponse(request, "admin/devices/device/job.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": title, "job": found,
            "job_url": reverse("job-detail", kwargs={"tenant": found.tenant.slug, "job": found.pk}),
            "keys_url": reverse("admin:devices_device_job_keys", args=[found.pk]),
            "changelist_url": reverse("admin:devices_device_changelist"),
            "mine": found.created_by_id == request.user.pk,
        })  # fmt: skip

    def job_keys_view(self, request: HttpRequest, job: int) -> HttpResponse:
        """The keys an issuance job generated, once, as a ZIP of ``<device>.key`` and
        ``<device>.crt`` (the chain): POST only, to who started the job."""
        found = self._job(request, job)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.scope(request).can_admin(found.tenant):
            raise PermissionDenied
        try:
            keys = jobs.job_keys_collect(actor=self.actor(request), tenant=found.tenant, job_id=found.pk)
        except SluiceError as error:
            self.message_user(request, error.message, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:devices_device_job", args=[found.pk]))
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for key in keys:
                bundle.writestr(f"{key['device_id']}.key", key["private_key_pem"])
                bundle.writestr(f"{key['device_id']}.crt", key["chain_pem"])
        response = HttpResponse(archive.getvalue(), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{found.tenant.slug}-job-{found.pk}-keys.zip"'
        response["Cache-Control"] = "no-store"
        return response

    # -- certificate actions -------------------------------------------------------------

    def _device(self, request: HttpRequest, object_id: str) -> Device | None:
        """The device if this user may see it (the scoped queryset), else None."""
        try:
            return self.get_queryset(request).select_related("tenant", "group").get(pk=int(object_id))
        except (ValueError, Device.DoesNotExist):
            return None

    def _writable_device(self, request: HttpRequest, object_id: str) -> Device:
        device = self._device(request, object_id)
        if device is None:
            raise Http404("No such device.")
        if not self.has_change_permission(request, device):
            raise PermissionDenied
        return device

    def _page(self, request: HttpRequest, template: str, device: Device, title: str,
              **context: Any) -> TemplateResponse:  # fmt: skip
        return TemplateResponse(request, template, {
            **self.admin_site.each_context(request), "opts": self.opts, "original": device, "device": device,
            "title": title, "change_url": self._change_url(device), **context,
        })  # fmt: skip

    def _change_url(self, device: Device) -> str:
        return reverse("admin:devices_device_change", args=[device.pk], current_app=self.admin_site.name)

    def issue_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        device = self._writable_device(request, object_id)
        form = IssueForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            actor = self.actor(request)
            try:
                if form.cleaned_data.get("generate"):
                    issued = cert_services.certificates_issue_bulk(
                        actor=actor, tenant=device.tenant, items=[{"device_id": device.device_id}]
                    )[0]
                else:
                    issued = cert_services.certificate_issue_from_csr(
                        actor=actor, device=device, csr_pem=form.cleaned_data["csr"].encode()
                    )
            except SluiceError as error:
                messages_by_field = [f.get("message", "") for f in error.fields if f.get("message")]
                target = "csr" if any(f.get("pointer", "").endswith("/csr") for f in error.fields) else None
                for message in messages_by_field or [error.message]:
                    form.add_error(target, message)
                if messages_by_field and error.message not in messages_by_field:
                    form.add_error(None, error.message)
            else:
                response = self._page(request, "admin/certs/issued.html", device, "Certificate issued",
                                      issued=[issued], back_url=self._change_url(device))  # fmt: skip
                response["Cache-Control"] = "no-store"
                return response
        return self._page(request, "admin/devices/device/certificate_issue.html", device,
                          f"Renew the certificate of {device.device_id}", form=form)  # fmt: skip

    def revoke_view(self, request: HttpRequest, object_id: str, serial: str) -> HttpResponse:
        device = self._writable_device(request, object_id)
        certificate = cert_selectors.device_certificate_get(scope=self.scope(request), device=device, serial=serial)
        if certificate is None:
            raise Http404("No such certificate for this device.")
        form = RevokeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                cert_services.certificate_revoke(actor=self.actor(request), certificate=certificate,
                                                 reason=form.cleaned_data["reason"])  # fmt: skip
            except SluiceError as error:
                self.message_user(request, error.message, messages.ERROR)
            else:
                self.message_user(request, f"Revoked certificate {certificate.serial}; the CRL is republished and "
                                           "ingest refuses it from now on.", messages.SUCCESS)  # fmt: skip
            return HttpResponseRedirect(self._change_url(device))
        state = cert_selectors.certificate_state(certificate, now=timezone.now())
        return self._page(request, "admin/devices/device/certificate_revoke.html", device,
                          f"Revoke a certificate of {device.device_id}", form=form, certificate=certificate,
                          state=state)  # fmt: skip


admin.site.unregister(Device)
admin.site.register(Device, DevicePageAdmin)
