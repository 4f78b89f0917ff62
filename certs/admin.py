"""The Sluice console for the PKI: tenant CAs, device certificates (revoke, see what is due),
and issuing certificates for selected devices (the private key is shown once)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.formats import date_format

from certs import selectors, services
from certs.models import Certificate, CertificateAuthority
from config.errors import SluiceError
from devices.admin import DeviceAdmin
from devices.models import Device
from tenants.admin_scoping import TenantScopedAdmin, status_badge

TENANT_FILTER = ("tenant", admin.RelatedOnlyFieldListFilter)


class ExpiresFilter(admin.SimpleListFilter):
    """Active certificates that expire soon (the console's index links here)."""

    title = "expiry"
    parameter_name = "expires"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("30d", "Within 30 days")]

    def __init__(self, request: HttpRequest, params: Any, model: Any, model_admin: TenantScopedAdmin) -> None:
        super().__init__(request, params, model, model_admin)
        self.scope = model_admin.scope(request)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Certificate]) -> QuerySet[Certificate]:
        if self.value() == "30d":
            expiring = selectors.certificates_expiring(scope=self.scope, within=selectors.EXPIRING_WITHIN)
            return queryset.filter(pk__in=expiring.values("pk"))
        return queryset


@admin.register(CertificateAuthority)
class CertificateAuthorityAdmin(TenantScopedAdmin[CertificateAuthority]):
    read_only = True
    list_display = ("subject", "tenant", "status_display", "not_after", "crl_number", "crl_next_update")
    list_filter = ("status", TENANT_FILTER)
    fields = ("tenant", "subject", "status", "serial", "not_before", "not_after", "crl_number", "crl_next_update",
              "certificate_pem")  # fmt: skip
    readonly_fields = fields
    exclude = ("encrypted_key_pem", "crl_der")

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: CertificateAuthority) -> str:
        return status_badge(obj.status)


@admin.register(Certificate)
class CertificateAdmin(TenantScopedAdmin[Certificate]):
    list_display = (
        "device_ref",
        "tenant",
        "status_display",
        "renewal_display",
        "origin",
        "key_type",
        "not_after",
        "serial",
    )
    list_filter = ("status", ExpiresFilter, "renewal_due", "origin", TENANT_FILTER)
    search_fields = ("device_ref", "serial", "fingerprint_sha256", "tenant__slug")
    list_select_related = ("tenant", "device__group")
    fields = ("tenant", "device_ref", "subject", "status", "renewal_due", "origin", "key_type", "serial",
              "fingerprint_sha256", "not_before", "not_after", "overlap_until", "revoked_at", "revocation_reason",
              "certificate_pem")  # fmt: skip
    readonly_fields = fields
    exclude = ("pending_key_encrypted",)
    actions = ("revoke",)
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # issued from the device list (action) or the API, never typed in

    def has_delete_permission(self, request: HttpRequest, obj: Certificate | None = None) -> bool:
        return False  # revoked, never deleted: the CRL must keep listing it

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Certificate) -> str:
        return status_badge(obj.status)

    @admin.display(description="renewal due", ordering="not_after")
    def renewal_display(self, obj: Certificate) -> str:
        """The column says "Now" once rotation marked it, else from when its group's renewal window opens."""
        if obj.status != Certificate.Status.ACTIVE:
            return "-"
        if obj.renewal_due:
            return "Now"
        group = obj.device.group if obj.device is not None else None
        if group is None:
            return "-"
        opens = obj.not_after - dt.timedelta(days=group.cert_renewal_window_days)
        return f"From {date_format(timezone.localtime(opens), 'DATE_FORMAT')}"

    @admin.action(description="Revoke selected certificates (key compromise)", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Certificate]) -> None:
        done = []
        for certificate in queryset.select_related("tenant", "ca"):
            if not self.scope(request).can_admin(certificate.tenant):
                continue
            try:
                services.certificate_revoke(actor=self.actor(request), certificate=certificate,
                                            reason="key_compromise")  # fmt: skip
                done.append(certificate.serial[:12])
            except SluiceError as error:
                self.message_user(request, f"{certificate.serial[:12]}: {error.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Revoked {len(done)} certificate(s); the CRLs are republished.",
                              messages.SUCCESS)  # fmt: skip


@admin.action(description="Issue certificates (server-generated key, shown once)", permissions=["change"])
def issue_certificates(
    model_admin: DeviceAdmin, request: HttpRequest, queryset: QuerySet[Device]
) -> HttpResponse | None:
    scope = model_admin.scope(request)
    devices = [d for d in queryset.select_related("tenant", "group") if scope.can_admin(d.tenant)]
    by_tenant: dict[int, list[Device]] = {}
    for device in devices:
        by_tenant.setdefault(device.tenant_id, []).append(device)
    issued = []
    for tenant_devices in by_tenant.values():
        try:
            issued += services.certificates_issue_bulk(
                actor=model_admin.actor(request), tenant=tenant_devices[0].tenant,
                items=[{"device_id": d.device_id} for d in tenant_devices],
            )  # fmt: skip
        except SluiceError as error:
            details = "; ".join(f["message"] for f in error.fields) or error.message
            model_admin.message_user(request, f"{error.message} {details}", messages.ERROR)
            return None
    response = TemplateResponse(request, "admin/certs/issued.html", {
        **model_admin.admin_site.each_context(request), "title": "Certificates issued", "issued": issued,
    })  # fmt: skip
    response["Cache-Control"] = "no-store"
    return response


# A class attribute Django reads per instance; django-stubs types it per instance only.
DeviceAdmin.actions = (*tuple(DeviceAdmin.actions or ()), issue_certificates)  # type: ignore[misc]
