"""``/metrics``: Sluice's own metrics in Prometheus' text format (names and labels: README,
"Metrics").

Two ways in: Prometheus presents ``Authorization: Bearer <Runtime.metrics_scrape_token>``
(compared in constant time; the token opens this page and nothing else: every other view
sees an unknown bearer token), and operators use their session or an API token as before.

What it serves: the counters and histograms every process of this node wrote
(config.instruments, multiprocess), and gauges read at scrape time: certificates, CAs' CRLs,
devices and streams from the database; beat's heartbeat, the ACL drift, consumer lag and
the ingest outcome totals of every node from Redis; the state directory's disk.
"""

from __future__ import annotations

import hmac
import logging
import shutil
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rest_framework.request import Request

from certs.crl_files import root_crl_next_update
from certs.models import Certificate, CertificateAuthority
from config import instruments
from config.celery import BEAT_KEY
from devices.models import Device, Stream
from ingest import observed
from ingest.metrics import ACCEPTED, counters
from ingest.ratelimit import redis_client
from tenants.api_base import ScopedApi

log = logging.getLogger("sluice.metrics")

# sluice_certificates_expiring's ``within`` buckets.
EXPIRING_WITHIN = {"7d": 7, "30d": 30, "90d": 90}
AT_RISK_DAYS = 30


def scrape_token_presented(request: HttpRequest) -> bool:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return False
    presented = header[len("Bearer ") :].strip().encode()
    return hmac.compare_digest(presented, settings.SLUICE_RUNTIME.metrics_scrape_token.encode())


class MetricsApi(ScopedApi):
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Prometheus with the scrape token is answered here, before DRF's authentication
        (to which the token is no credential); everyone else goes through it."""
        if scrape_token_presented(request) and request.method in ("GET", "HEAD"):
            return exposition()
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: Request) -> HttpResponse:
        self.scope.require_operator()
        return exposition()


def exposition() -> HttpResponse:
    body = generate_latest(instruments.registry())
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(ScrapeTimeCollector())
    body += generate_latest(scraped)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


class ScrapeTimeCollector(Collector):
    """The gauges read when scraped (one short query or Redis read each); a part whose
    source is away is left out (logged), the rest is served."""

    def collect(self) -> Iterator[Metric]:
        for part in (_certificates, _crls, _inventory, _disk, _beat, _acl_drift, _consumer_lag, _ingest_totals):
            try:
                yield from list(part())
            except (redis.RedisError, OSError) as exc:
                log.warning("/metrics: %s left out (%s)", part.__name__.lstrip("_"), exc)


def _certificates() -> Iterable[GaugeMetricFamily]:
    by_status = GaugeMetricFamily("sluice_certificates", "Certificates by tenant and status.",
                                  labels=["tenant", "status"])  # fmt: skip
    rows = Certificate.objects.values("tenant__slug", "status").annotate(n=Count("id")).order_by("tenant__slug")
    for row in rows:
        by_status.add_metric([row["tenant__slug"], row["status"]], row["n"])
    yield by_status
    due = GaugeMetricFamily("sluice_certificates_renewal_due", "Active certificates inside their renewal window.",
                            labels=["tenant"])  # fmt: skip
    rows = (Certificate.objects.filter(renewal_due=True, status=Certificate.Status.ACTIVE)
            .values("tenant__slug").annotate(n=Count("id")).order_by("tenant__slug"))  # fmt: skip
    for row in rows:
        due.add_metric([row["tenant__slug"]], row["n"])
    yield due
    now = timezone.now()
    active = Certificate.objects.filter(status=Certificate.Status.ACTIVE)
    buckets = {within: Count("id", filter=Q(not_after__lte=now + timedelta(days=days)))
               for within, days in EXPIRING_WITHIN.items()}  # fmt: skip
    expiring = GaugeMetricFamily("sluice_certificates_expiring", "Active certificates expiring within 7, 30, 90 days.",
                                 labels=["tenant", "within"])  # fmt: skip
    for row in active.values("tenant__slug").annotate(**buckets).order_by("tenant__slug"):
        for within in EXPIRING_WITHIN:
            expiring.add_metric([row["tenant__slug"], within], row[within])
    yield expiring
    at_risk = GaugeMetricFamily(
        "sluice_certificates_at_risk",
        f"Active device certificates expiring within {AT_RISK_DAYS} days without a successor.",
        labels=["tenant"],
    )
    risky = Q(device__isnull=False, superseded_by__isnull=True, not_after__lte=now + timedelta(days=AT_RISK_DAYS))
    for row in active.values("tenant__slug").annotate(n=Count("id", filter=risky)).order_by("tenant__slug"):
        at_risk.add_metric([row["tenant__slug"]], row["n"])
    yield at_risk


def _crls() -> Iterable[GaugeMetricFamily]:
    family = GaugeMetricFamily("sluice_crl_next_update_timestamp_seconds",
                               "When each CA's published CRL must be replaced (its nextUpdate).",
                               labels=["ca"])  # fmt: skip
    root = root_crl_next_update(settings.SLUICE_RUNTIME)
    if root is not None:
        family.add_metric(["platform"], root.timestamp())
    cas = (CertificateAuthority.objects.filter(status=CertificateAuthority.Status.ACTIVE, crl_next_update__isnull=False)
           .values_list("tenant__slug", "crl_next_update").order_by("tenant__slug"))  # fmt: skip
    for slug, next_update in cas:
        if next_update is not None:
            family.add_metric([slug], next_update.timestamp())
    yield family


def _inventory() -> Iterable[GaugeMetricFamily]:
    devices = GaugeMetricFamily("sluice_devices", "Devices by tenant.", labels=["tenant"])
    for row in Device.objects.values("tenant__slug").annotate(n=Count("id")).order_by("tenant__slug"):
        devices.add_metric([row["tenant__slug"]], row["n"])
    yield devices
    streams = GaugeMetricFamily("sluice_streams", "Streams by tenant and provisioning status.",
                                labels=["tenant", "status"])  # fmt: skip
    rows = Stream.objects.values("tenant__slug", "status").annotate(n=Count("id")).order_by("tenant__slug")
    for row in rows:
        streams.add_metric([row["tenant__slug"], row["status"]], row["n"])
    yield streams


def _disk() -> Iterable[GaugeMetricFamily]:
    usage = shutil.disk_usage(settings.SLUICE_RUNTIME.state_dir)
    yield GaugeMetricFamily("sluice_state_disk_free_bytes", "Free bytes on the state directory's filesystem.",
                            value=usage.free)  # fmt: skip
    yield GaugeMetricFamily("sluice_state_disk_size_bytes", "Size of the state directory's filesystem.",
                            value=usage.total)  # fmt: skip


def _beat() -> Iterable[GaugeMetricFamily]:
    family = GaugeMetricFamily("sluice_celery_beat_heartbeat_timestamp_seconds",
                               "When beat's heartbeat task last ran (every 10 s).")  # fmt: skip
    last = redis_client().get(BEAT_KEY)
    if last is not None:
        family.add_metric([], float(last))
    yield family


def _acl_drift() -> Iterable[GaugeMetricFamily]:
    per_tenant, finished = observed.acl_drift()
    drift = GaugeMetricFamily("sluice_acl_drift_bindings",
                              "Kafka ACL bindings missing or extra found by the last reconcile.",
                              labels=["tenant"])  # fmt: skip
    for tenant, n in sorted(per_tenant.items()):
        drift.add_metric([tenant], n)
    yield drift
    when = GaugeMetricFamily("sluice_acl_reconcile_timestamp_seconds", "When the last ACL reconcile finished.")
    if finished is not None:
        when.add_metric([], finished)
    yield when


def _consumer_lag() -> Iterable[GaugeMetricFamily]:
    family = GaugeMetricFamily(
        "sluice_consumer_lag_records",
        "Records a tenant consumer's groups have not committed yet, summed over its groups and partitions.",
        labels=["tenant", "consumer"],
    )
    for (tenant, consumer), lag in sorted(observed.consumer_lags().items()):
        family.add_metric([tenant, consumer], lag)
    yield family


def _ingest_totals() -> Iterable[CounterMetricFamily]:
    """Every node's ingest outcomes since Redis was emptied (the lines /metrics served
    before the per-tenant counters; the console reads the same hash)."""
    outcomes = counters()
    yield CounterMetricFamily("sluice_ingest_records_accepted",
                              "Records Kafka acknowledged through HTTPS ingest (every node).",
                              value=outcomes.pop(ACCEPTED, 0))  # fmt: skip
    refused = CounterMetricFamily("sluice_ingest_requests_refused",
                                  "Ingest requests refused, by error code (every node).", labels=["code"])  # fmt: skip
    for code, n in sorted(outcomes.items()):
        refused.add_metric([code], n)
    yield refused
