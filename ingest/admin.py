"""The console's device page: the device, its certificates (state, expiry, renew and revoke)
and what ingest saw of it (last seen, recent refusals).

It draws on devices, certs and ingest at once, so it lives in the top app of that chain
(tenants -> devices -> certs -> ingest) as a subclass of ``devices.admin.DeviceAdmin``,
registered in its place.  Writes go through ``certs.services`` like the REST API's
(``POST .../devices/<id>/certificates/`` and ``.../certificates/<serial>/revoke``): issue
from a CSR or with a generated key shown once, and revoke with a reason, each confirmed
on a page of its own and audited by the service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from certs import selectors as cert_selectors
from certs import services as cert_services
from certs.apis import MAX_CSR_CHARS
from config.errors import SluiceError
from devices.admin import DeviceAdmin
from devices.models import Device
from ingest.selectors import device_activity

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


class DevicePageAdmin(DeviceAdmin):
    change_form_template = "admin/devices/device/sluice_change_form.html"

    def get_fields(self, request: HttpRequest, obj: Device | None = None) -> FieldGroups:
        # The page shows when ingest last saw the device from ingest's own flush (1 s late),
        # not the database's copy, which is written at most once a minute.
        return [name for name in super().get_fields(request, obj) if name != "last_seen_at"]

    def get_urls(self) -> list[URLPattern]:
        own = [
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
