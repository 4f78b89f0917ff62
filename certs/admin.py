"""The Sluice console for the PKI: tenant CAs, device certificates (revoke, see what is due),
issuing certificates for selected devices (the private key is shown once), and a consumer's
page with its credentials (a client certificate or an OAuth client, each shown once)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format

from certs import jobs, selectors, services
from certs.apis import MAX_CSR_CHARS
from certs.downloads import issued_downloads
from certs.models import Certificate, CertificateAuthority, Job
from config.errors import SluiceError
from devices.admin import ConsumerAdmin, DeviceAdmin
from devices.models import Consumer, Device
from tenants.admin_scoping import TenantScopedAdmin, show_service_error, status_badge
from tenants.oauth.admin import ClientCreateForm
from tenants.oauth.models import OAuthClient
from tenants.oauth.selectors import oauth_client_list
from tenants.oauth.services import oauth_client_create
from tenants.oauth.views import metadata_document
from tenants.scoping import Scope

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


@admin.action(description="Issue certificates (server-generated keys, downloaded once)", permissions=["change"])
def issue_certificates(
    model_admin: DeviceAdmin, request: HttpRequest, queryset: QuerySet[Device]
) -> HttpResponse | None:
    """Starts an issuance job for the selected devices (of one tenant) and opens its page,
    which shows the progress and then offers the generated keys, once (``certs.jobs``)."""
    scope = model_admin.scope(request)
    devices = [d for d in queryset.select_related("tenant") if scope.can_admin(d.tenant)]
    tenants = {d.tenant_id: d.tenant for d in devices}
    if len(tenants) != 1:
        model_admin.message_user(request, "Select devices of one tenant you administer; each issuance is one job "
                                 "of one tenant.", messages.ERROR)  # fmt: skip
        return None
    tenant = next(iter(tenants.values()))
    try:
        job = jobs.job_start(actor=model_admin.actor(request), tenant=tenant, kind=Job.Kind.CERTIFICATE_ISSUE,
                             items=[{"device_id": d.device_id} for d in devices])  # fmt: skip
    except SluiceError as error:
        model_admin.message_user(request, error.message, messages.ERROR)
        return None
    return HttpResponseRedirect(reverse("admin:devices_device_job", args=[job.pk]))


# A class attribute Django reads per instance; django-stubs types it per instance only.
DeviceAdmin.actions = (*tuple(DeviceAdmin.actions or ()), issue_certificates)  # type: ignore[misc]


# -- a consumer's page: its credentials ---------------------------------------------------


class ConsumerIssueForm(forms.Form):
    """A consumer's client certificate, as ``POST .../consumers/<slug>/certificates/`` issues
    one: for the backend's own key (its CSR), or a key generated here and shown once."""

    passphrase = forms.CharField(
        label="Passphrase", required=False, min_length=8, max_length=256,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Sluice generates the key and shows it once, with a PKCS#12 bundle this protects (at least 8 "
        "characters). It keeps no copy.",
    )  # fmt: skip
    csr = forms.CharField(
        label="Or the backend's CSR", required=False, max_length=MAX_CSR_CHARS,
        widget=forms.Textarea(attrs={"rows": 8, "cols": 70, "spellcheck": "false"}),
        help_text="A PKCS#10 request in PEM: the key never leaves the backend. Its subject is replaced by the "
        "consumer's.",
    )  # fmt: skip

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what Form.clean returns (django-stubs allows None)
        if bool(data.get("passphrase")) == bool((data.get("csr") or "").strip()) and not self.errors:
            raise forms.ValidationError("Give a passphrase for a key generated here, or paste a CSR (one of them).")
        return data


@dataclass(frozen=True)
class Credential:
    """One of a consumer's credentials as its page lists it: a certificate or an OAuth client."""

    kind: str
    name: str
    principal: str
    state: str
    until: dt.datetime | None
    url: str


def consumer_credentials(*, scope: Scope, consumer: Consumer) -> list[Credential]:
    """``consumer``'s certificates and OAuth clients, each with the principal it is on Kafka
    and its state now (usable ones first, then the newest)."""
    now = timezone.now()
    rows = [
        Credential("certificate", f"serial {c.serial[:16]}", c.kafka_principal, selectors.certificate_state(c, now=now),
                   c.not_after, reverse("admin:certs_certificate_change", args=[c.pk]))
        for c in selectors.consumer_certificate_list(scope=scope, consumer=consumer).order_by("-created_at")
    ]  # fmt: skip
    clients = oauth_client_list(scope=scope).filter(consumer=consumer).select_related("consumer__tenant")
    rows += [
        Credential("OAuth client", f"{c.client_id} ({c.name})", f"User:{c.kafka_principal}", c.status, None,
                   reverse("admin:tenants_oauthclient_change", args=[c.pk]))
        for c in clients.order_by("-created_at")
    ]  # fmt: skip
    usable = (Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED)
    return sorted(rows, key=lambda row: row.state not in usable)


class ConsumerPageAdmin(ConsumerAdmin):
    """The consumer's page with its credentials: issue a client certificate (a generated key
    shown once, or for a CSR) and create an OAuth client (its secret shown once), through the
    same services as ``POST .../consumers/<slug>/certificates/`` and ``.../oauth-clients/``.
    Lives here, above devices, because it draws on the PKI; registered in ConsumerAdmin's place."""

    change_form_template = "admin/devices/consumer/sluice_change_form.html"

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("<path:object_id>/certificates/issue/", self.admin_site.admin_view(self.issue_view),
                 name="devices_consumer_certificate_issue"),
            path("<path:object_id>/oauth-clients/add/", self.admin_site.admin_view(self.oauth_client_view),
                 name="devices_consumer_oauth_client_add"),
        ]  # fmt: skip
        return own + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        consumer = self.scoped_object(request, object_id)
        context = dict(extra_context or {})
        if consumer is not None:
            context.update(credentials=consumer_credentials(scope=self.scope(request), consumer=consumer),
                           can_add_credentials=self.has_change_permission(request, consumer))  # fmt: skip
        return super().change_view(request, object_id, form_url, context)

    def issue_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        consumer = self.writable_object(request, object_id)
        form = ConsumerIssueForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            csr = form.cleaned_data["csr"].strip()
            try:
                issued = services.consumer_certificate_issue(
                    actor=self.actor(request), consumer=consumer, csr_pem=csr.encode() if csr else None,
                    passphrase=None if csr else form.cleaned_data["passphrase"],
                )  # fmt: skip
            except SluiceError as error:
                show_service_error(form, error)
            else:
                response = self.object_page(
                    request, "admin/certs/issued.html", consumer, f"Certificate issued for {consumer.slug}",
                    issued=[issued], holder=consumer.slug, consumer=consumer, back_url=self.change_url(consumer),
                    downloads=issued_downloads(consumer.slug, issued),
                    kafka_bootstrap=settings.SLUICE_RUNTIME.kafka_bootstrap,
                )  # fmt: skip
                response["Cache-Control"] = "no-store"
                return response
        return self.object_page(request, "admin/devices/consumer/credential_add.html", consumer,
                                f"Issue a client certificate for {consumer.slug}", form=form,
                                submit="Issue certificate")  # fmt: skip

    def oauth_client_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        consumer = self.writable_object(request, object_id)
        form = ClientCreateForm(request.POST if request.method == "POST" else None, kind=OAuthClient.Kind.CONSUMER,
                                initial={"name": f"{consumer.slug} backend"})  # fmt: skip
        if request.method == "POST" and form.is_valid():
            try:
                client, secret = oauth_client_create(
                    actor=self.actor(request), tenant=consumer.tenant, kind=OAuthClient.Kind.CONSUMER,
                    name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"], consumer=consumer,
                )  # fmt: skip
            except SluiceError as error:
                show_service_error(form, error)
            else:
                runtime = settings.SLUICE_RUNTIME
                response = self.object_page(
                    request, "admin/tenants/oauthclient/secret.html", consumer, f"OAuth client for {consumer.slug}",
                    client=client, secret=secret, token_endpoint=metadata_document()["token_endpoint"],
                    principal=f"User:{client.kafka_principal}",
                    consumer=consumer, kafka_bootstrap=runtime.kafka_oauth_bootstrap,
                    back_url=self.change_url(consumer),
                )  # fmt: skip
                response["Cache-Control"] = "no-store"
                return response
        return self.object_page(request, "admin/devices/consumer/credential_add.html", consumer,
                                f"Create an OAuth client for {consumer.slug}", form=form,
                                submit="Create client")  # fmt: skip


admin.site.unregister(Consumer)
admin.site.register(Consumer, ConsumerPageAdmin)
