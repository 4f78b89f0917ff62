"""Guided onboarding of a new tenant by a platform operator, in six pages: tenant, its first
admin, a stream with its schema, a device group, a device, and a summary (where the device
gets its first certificate, and the tenant its consumers: backends that read its streams).

Views are thin: parse a form, call one service, redirect.  What the flow has made so far is
carried in the URL (tenant slug, stream id, group slug, device id), never in the session, so
any step can be reloaded or bookmarked.  Only operators may use it: anyone else signed in
gets a 403 on the console's own error page (``config.error_pages``), which says so.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from certs.downloads import ROOT_CA_FILENAME, issued_downloads
from certs.models import Certificate
from certs.platform_pki import PlatformPki, root_fingerprint
from certs.selectors import device_active_certificate
from certs.services import RENEWAL_OVERLAP, certificate_issue_generated
from config.errors import NotFound, SluiceError
from config.onboarding_forms import (
    ConsumerForm,
    CredentialsForm,
    DeviceForm,
    GroupForm,
    StreamForm,
    TenantAdminForm,
    TenantForm,
    add_service_error,
)
from devices import registry
from devices import selectors as device_selectors
from devices.models import Consumer, Device
from devices.services import consumer_create, device_create, group_create, stream_with_schema_create
from ingest.selectors import record_sample_for
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.scoping import Scope, scope_for
from tenants.selectors import tenant_admin_usernames, tenant_get
from tenants.services import tenant_create, user_create_tenant_admin

T = TypeVar("T")
View = Callable[..., HttpResponse]


@dataclass(frozen=True)
class Step:
    number: int
    key: str
    title: str


STEPS = (
    Step(1, "tenant", "Tenant"),
    Step(2, "admin", "Administrator"),
    Step(3, "stream", "Stream & schema"),
    Step(4, "group", "Device group"),
    Step(5, "device", "First device"),
    Step(6, "summary", "Summary"),
)


# -- service ----------------------------------------------------------------------------


# -- plumbing ---------------------------------------------------------------------------


def operator_only(view: View) -> View:
    """Signed-out visitors go to the login page; signed-in non-operators are refused (403)."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not scope_for(request.user).is_operator:
            raise PermissionDenied(
                "Onboarding is for platform operators. Your account administers its own tenants: "
                "manage their streams, groups and devices in the console."
            )
        return view(request, *args, **kwargs)

    return guarded


def _tenant(request: HttpRequest, slug: str) -> Tenant:
    try:
        return tenant_get(scope=scope_for(request.user), slug=slug)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _scope(request: HttpRequest, target: Tenant) -> Scope:
    """What the flow reads of ``target``: the operator's scope narrowed to it."""
    return scope_for(request.user).within(target)


def _actor(request: HttpRequest) -> Actor:
    return Actor.of(request.user)


def _bound(form_class: type[forms.Form], request: HttpRequest, **kwargs: Any) -> Any:
    return form_class(request.POST if request.method == "POST" else None, **kwargs)


def _submit(request: HttpRequest, form: forms.Form, service: Callable[[dict[str, Any]], T]) -> T | None:
    """Call ``service`` with the form's data on a valid POST; its domain errors end up on
    the form (field by field where they name one) and the result is None."""
    if request.method != "POST" or not form.is_valid():
        return None
    try:
        return service(form.cleaned_data)
    except SluiceError as error:
        add_service_error(form, error)
        return None


def _page(request: HttpRequest, template: str, number: int, **context: Any) -> HttpResponse:
    return render(
        request, f"onboarding/{template}", {"steps": STEPS, "step": STEPS[number - 1], "total": len(STEPS), **context}
    )


# -- steps ------------------------------------------------------------------------------


@operator_only
@require_http_methods(["GET", "POST"])
def tenant_step(request: HttpRequest) -> HttpResponse:
    form = _bound(TenantForm, request)
    tenant = _submit(request, form, lambda data: tenant_create(actor=_actor(request), **data))
    if tenant is not None:
        messages.success(request, f"Tenant {tenant.slug} created, with its own certificate authority.")
        return redirect("onboarding:admin", tenant=tenant.slug)
    return _page(request, "tenant.html", 1, form=form)


@never_cache  # the success response carries the new user's password
@operator_only
@require_http_methods(["GET", "POST"])
def admin_step(request: HttpRequest, tenant: str) -> HttpResponse:
    target = _tenant(request, tenant)
    form = _bound(TenantAdminForm, request)
    created = _submit(
        request, form, lambda data: user_create_tenant_admin(actor=_actor(request), tenant=target, **data)
    )
    if created is not None:
        user, password = created
        # Shown in this response only: never in a URL, the session or a message.
        return _page(request, "admin_created.html", 2, tenant=target, admin=user, password=password)
    return _page(request, "admin.html", 2, tenant=target, form=form)


@operator_only
@require_http_methods(["GET", "POST"])
def stream_step(request: HttpRequest, tenant: str) -> HttpResponse:
    target = _tenant(request, tenant)
    form = _bound(StreamForm, request)
    created = _submit(
        request, form, lambda data: stream_with_schema_create(actor=_actor(request), tenant=target, **data)
    )
    if created is not None:
        stream, subject, schema_id = created
        messages.success(request, f"Stream {stream.topic} created; schema {schema_id} registered under {subject}.")
        return redirect("onboarding:group", tenant=target.slug, stream=stream.pk)
    return _page(request, "stream.html", 3, tenant=target, form=form)


@operator_only
@require_http_methods(["GET", "POST"])
def group_step(request: HttpRequest, tenant: str, stream: int) -> HttpResponse:
    target = _tenant(request, tenant)
    streams = device_selectors.stream_list(scope=_scope(request, target))
    chosen = streams.filter(pk=stream).first()
    if chosen is None:
        raise Http404("No such stream.")
    initial = {"region": chosen.region, "device_type": chosen.type, "stream": chosen,
               "schema_subject": registry.value_subject(chosen.topic)}  # fmt: skip
    form = _bound(GroupForm, request, streams=streams, initial=initial)
    group = _submit(request, form, lambda data: group_create(actor=_actor(request), tenant=target, **data))
    if group is not None:
        messages.success(request, f"Device group {group.slug} created.")
        return redirect("onboarding:device", tenant=target.slug, group=group.slug)
    return _page(request, "group.html", 4, tenant=target, stream=chosen, form=form)


@operator_only
@require_http_methods(["GET", "POST"])
def device_step(request: HttpRequest, tenant: str, group: str) -> HttpResponse:
    target = _tenant(request, tenant)
    try:
        chosen = device_selectors.group_get(scope=_scope(request, target), slug=group)
    except NotFound:
        raise Http404("No such device group.") from None
    form = _bound(DeviceForm, request)
    device = _submit(
        request, form, lambda data: device_create(actor=_actor(request), tenant=target, group=chosen, **data)
    )
    if device is not None:
        messages.success(request, f"Device {device.device_id} created in group {chosen.slug}.")
        return redirect("onboarding:summary", tenant=target.slug, device=device.device_id)
    return _page(request, "device.html", 5, tenant=target, group=chosen, form=form)


@operator_only
@require_http_methods(["GET"])
def summary(request: HttpRequest, tenant: str, device: str) -> HttpResponse:
    target = _tenant(request, tenant)
    return _summary_page(request, target, _device(request, target, device), CredentialsForm())


def _device(request: HttpRequest, target: Tenant, device: str) -> Device:
    try:
        return device_selectors.device_get(scope=_scope(request, target), device_id=device)
    except NotFound:
        raise Http404("No such device.") from None


@dataclass(frozen=True)
class ConsumerSummary:
    """A consumer of the tenant as the summary shows it: what it reads, and where its
    credentials come from (its console page, and the REST API)."""

    consumer: Consumer
    topics: list[str]
    console_url: str
    certificates_api: str
    oauth_clients_api: str


def _consumers(scope: Scope, target: Tenant) -> list[ConsumerSummary]:
    api = f"/api/v1/tenants/{target.slug}"
    return [
        ConsumerSummary(consumer, device_selectors.consumer_topics(consumer=consumer),
                        reverse("admin:devices_consumer_change", args=[consumer.pk]),
                        f"{api}/consumers/{consumer.slug}/certificates/", f"{api}/oauth-clients/")
        for consumer in device_selectors.consumer_list(scope=scope)
    ]  # fmt: skip


def _summary_page(request: HttpRequest, target: Tenant, found: Device, credentials_form: Any,
                  consumer_form: ConsumerForm | None = None) -> HttpResponse:  # fmt: skip
    scope = _scope(request, target)
    return _page(request, "summary.html", 6, tenant=target, device=found, group=found.group,
                 stream=found.group.stream, admins=tenant_admin_usernames(scope=scope),
                 credentials_form=credentials_form, consumers=_consumers(scope, target),
                 consumer_form=consumer_form
                 or ConsumerForm(streams=device_selectors.stream_list(scope=scope), prefix=ConsumerForm.PREFIX),
                 certificate=device_active_certificate(scope=scope, device=found))  # fmt: skip


@operator_only
@require_http_methods(["GET", "POST"])
def consumer(request: HttpRequest, tenant: str, device: str) -> HttpResponse:
    """Create a consumer of the tenant from the summary (a backend that reads its streams
    from Kafka), then show the summary again with it and how to get its credentials."""
    target = _tenant(request, tenant)
    found = _device(request, target, device)
    if request.method == "GET":
        return redirect("onboarding:summary", tenant=target.slug, device=found.device_id)
    streams = device_selectors.stream_list(scope=_scope(request, target))
    form = _bound(ConsumerForm, request, streams=streams, prefix=ConsumerForm.PREFIX)
    created = _submit(request, form, lambda data: consumer_create(actor=_actor(request), tenant=target, **data))
    if created is None:
        return _summary_page(request, target, found, CredentialsForm(), form)
    messages.success(request, f"Consumer {created.slug} created: issue its credentials below.")
    return redirect(reverse("onboarding:summary", kwargs={"tenant": target.slug, "device": found.device_id})
                    + "#consumers")  # fmt: skip


@never_cache  # the success response carries the device's private key
@operator_only
@require_http_methods(["GET", "POST"])
def credentials(request: HttpRequest, tenant: str, device: str) -> HttpResponse:
    """Issue the device's first certificate (server-generated key, shown in this response
    only).  Once the device holds an active certificate, this URL -- opened again, reloaded,
    or posted a second time -- says that its key was shown once and how to get a new one
    (410 Gone), and issues nothing."""
    target = _tenant(request, tenant)
    found = _device(request, target, device)
    current = device_active_certificate(scope=_scope(request, target), device=found)
    if current is not None:
        return _shown_once(request, target, found, current)
    if request.method == "GET":
        return redirect("onboarding:summary", tenant=target.slug, device=found.device_id)
    form = _bound(CredentialsForm, request)
    issued = _submit(request, form, lambda data: certificate_issue_generated(
        actor=_actor(request), device=found, passphrase=data["passphrase"]))  # fmt: skip
    if issued is None:
        return _summary_page(request, target, found, form)
    # The first POST is shown with a record to send: from the group's schema, as ingest
    # would validate it now (or a note saying why there is none).
    sample = record_sample_for(subject=found.group.schema_subject)
    runtime = settings.SLUICE_RUNTIME
    root_pem = PlatformPki(runtime.pki_dir).root_cert.read_bytes()
    return _page(request, "credentials.html", 6, tenant=target, device=found, issued=issued,
                 pkcs12_base64=base64.b64encode(issued.pkcs12 or b"").decode(), web_url=runtime.web_url,
                 root_ca_url=runtime.root_ca_url, root_fingerprint=root_fingerprint(root_pem),
                 root_ca_filename=ROOT_CA_FILENAME, downloads=issued_downloads(found.device_id, issued), sample=sample,
                 overlap_hours=int(RENEWAL_OVERLAP.total_seconds() // 3600))  # fmt: skip


def _shown_once(request: HttpRequest, target: Tenant, found: Device, current: Certificate) -> HttpResponse:
    response = _page(request, "credentials_shown.html", 6, tenant=target, device=found, certificate=current,
                     web_url=settings.SLUICE_RUNTIME.web_url)  # fmt: skip
    response.status_code = 410  # Gone: what this URL gave out once is not available again
    return response
