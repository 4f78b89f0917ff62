"""The console's overviews: an operator's (every tenant) and a tenant's (one tenant, for its
admins and viewers; 404 for anyone else, like every console page).

What they show comes from two places: charts from Prometheus's query API (records per second
per stream, refusals by code, consumer lag, and for operators the brokers' health), drawn
here as SVG; devices silent for longer than their group's expected interval and certificates
at risk from the database's selectors.  When Prometheus cannot be reached the page says so and
shows the rest.  Views are thin: ``overview`` composes, the services write."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from certs import selectors as cert_selectors
from certs import services as cert_services
from certs.models import Certificate
from config.charts import Chart, Line, bar_chart, line_chart
from config.errors import NotFound, SluiceError
from config.prometheus import Prometheus, PrometheusError, label_value, prometheus
from devices import selectors as device_selectors
from devices.models import Device
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.scoping import Scope, scope_for

WINDOW = dt.timedelta(hours=1)
STEP = dt.timedelta(seconds=30)
LIST_LIMIT = 50


@dataclass(frozen=True)
class BrokerHealth:
    instance: str
    broker: str
    up: bool
    under_replicated: float | None
    offline: float | None
    active_controller: float | None

    @property
    def counts(self) -> tuple[float | None, float | None, float | None]:
        return self.under_replicated, self.offline, self.active_controller


@dataclass
class Overview:
    tenant: Tenant | None  # None: the operator's overview of every tenant
    can_renew: bool
    prometheus_error: str | None = None
    records: Chart | None = None
    refusals: Chart | None = None
    lag: Chart | None = None
    brokers: list[BrokerHealth] | None = None
    silent: list[Device] = field(default_factory=list)
    silent_total: int = 0
    at_risk: list[Certificate] = field(default_factory=list)
    at_risk_total: int = 0
    now: dt.datetime = field(default_factory=timezone.now)


def _name(labels: dict[str, str], keys: tuple[str, ...]) -> str:
    return "/".join(labels.get(key, "") or "-" for key in keys)


def _charts(page: Overview, client: Prometheus, selector: str, keys: tuple[str, ...]) -> None:
    """Fill ``page``'s charts from Prometheus (``selector``: the tenant's label matcher or none)."""
    end = page.now
    start = end - WINDOW

    def by(extra: str) -> str:
        return ", ".join((*keys, extra))

    def lines(promql: str, extra: str) -> list[Line]:
        found = client.query_range(promql, start=start, end=end, step=STEP)
        return sorted((Line(_name(s.labels, (*keys, extra)), s.points) for s in found), key=lambda line: line.name)

    span = (start.timestamp(), end.timestamp())
    records = lines(f"sum by ({by('stream')}) (rate(sluice_ingest_records_total{{{selector}}}[1m]))", "stream")
    page.records = line_chart(records, start=span[0], end=span[1], label="Records per second per stream")
    refusals = client.query(f"sum by ({by('code')}) (increase(sluice_ingest_refusals_total{{{selector}}}[1h]))")
    page.refusals = bar_chart([(_name(s.labels, (*keys, "code")), s.value) for s in refusals if s.value > 0],
                              label="Refusals by code in the last hour")  # fmt: skip
    lag = lines(f"sum by ({by('consumer')}) (sluice_consumer_lag_records{{{selector}}})", "consumer")
    page.lag = line_chart(lag, start=span[0], end=span[1], label="Consumer lag (records) per consumer")


def _brokers(client: Prometheus) -> list[BrokerHealth]:
    up = client.query('up{job="kafka"}')

    def per_instance(promql: str) -> dict[str, float]:
        return {s.labels.get("instance", ""): s.value for s in client.query(promql)}

    under = per_instance('sum by (instance) (kafka_under_replicated_partitions{job="kafka"})')
    offline = per_instance('sum by (instance) (kafka_offline_partitions{job="kafka"})')
    controller = per_instance('sum by (instance) (kafka_active_controller_count{job="kafka"})')
    rows = []

    def order(sample: Any) -> tuple[int, str]:  # by broker id (1, 2, ... 10), then address
        broker = sample.labels.get("broker", "")
        return (int(broker) if broker.isdigit() else 1 << 31, sample.labels.get("instance", ""))

    for sample in sorted(up, key=order):
        instance = sample.labels.get("instance", "")
        rows.append(BrokerHealth(instance=instance, broker=sample.labels.get("broker", ""), up=sample.value == 1,
                                 under_replicated=under.get(instance), offline=offline.get(instance),
                                 active_controller=controller.get(instance)))  # fmt: skip
    return rows


def overview(*, scope: Scope, tenant: Tenant | None, client: Prometheus | None = None) -> Overview:
    """The overview of ``tenant`` (which ``scope`` must see), or of every tenant (operators)."""
    if tenant is None:
        scope.require_operator()
        keys: tuple[str, ...] = ("tenant",)
        selector = ""
    else:
        scope = scope.within(tenant)
        keys = ()
        selector = f"tenant={label_value(tenant.slug)}"
    page = Overview(tenant=tenant, can_renew=tenant is not None and scope.can_admin(tenant))
    client = client or prometheus()
    try:
        _charts(page, client, selector, keys)
        if tenant is None:
            page.brokers = _brokers(client)
    except PrometheusError as error:
        page.prometheus_error = error.message
    silent = device_selectors.devices_silent(scope=scope, now=page.now)
    page.silent_total = silent.count()
    page.silent = list(silent[:LIST_LIMIT])
    at_risk = cert_selectors.certificates_at_risk(scope=scope)
    page.at_risk_total = at_risk.count()
    page.at_risk = list(at_risk[:LIST_LIMIT])
    return page


# -- views ---------------------------------------------------------------------------------------


def _tenant(scope: Scope, slug: str) -> Tenant:
    try:
        return scope.tenant(slug)
    except NotFound as error:
        raise Http404(error.message) from None


def _render(request: HttpRequest, site: Any, page: Overview) -> TemplateResponse:
    title = f"Overview of {page.tenant.slug}" if page.tenant is not None else "Operator overview"
    return TemplateResponse(request, "admin/sluice_overview.html",
                            {**site.each_context(request), "title": title, "page": page})  # fmt: skip


def operator_overview_view(request: HttpRequest, site: Any) -> HttpResponse:
    scope = scope_for(request.user)
    if not scope.is_operator:
        raise Http404("The operator overview is for platform operators.")
    return _render(request, site, overview(scope=scope, tenant=None))


def tenant_overview_view(request: HttpRequest, site: Any, tenant: str) -> HttpResponse:
    scope = scope_for(request.user)
    return _render(request, site, overview(scope=scope, tenant=_tenant(scope, tenant)))


def renew_view(request: HttpRequest, site: Any, tenant: str, serial: str) -> HttpResponse:
    """Renew one at-risk certificate (POST): a successor with a key generated here, shown once."""
    scope = scope_for(request.user)
    found = _tenant(scope, tenant)
    try:
        certificate = cert_selectors.certificate_at_risk_get(scope=scope.within(found), serial=serial)
    except NotFound as error:
        raise Http404(error.message) from None
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    back = reverse("admin:sluice_tenant_overview", args=[found.slug])
    try:
        scope.require_admin(found)
        issued = cert_services.certificate_renew_generated(actor=Actor.of(request.user), certificate=certificate)
    except SluiceError as error:
        messages.error(request, f"{certificate.device_ref}: {error.message}")
        return HttpResponseRedirect(back)
    response = TemplateResponse(request, "admin/certs/issued.html", {
        **site.each_context(request), "title": "Certificate renewed", "issued": [issued], "back_url": back,
    })  # fmt: skip
    response["Cache-Control"] = "no-store"
    return response
