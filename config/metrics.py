"""Prometheus text metrics of the control plane, for operators (session or API token)."""

from __future__ import annotations

from django.db.models import Count
from django.http import HttpResponse
from rest_framework.request import Request

from certs.models import Certificate
from devices.models import Device, Stream
from ingest.metrics import ACCEPTED, counters
from tenants.api_base import ScopedApi


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsApi(ScopedApi):
    def get(self, request: Request) -> HttpResponse:
        self.scope.require_operator()
        lines = [
            "# HELP sluice_certificates Device certificates by tenant and status.",
            "# TYPE sluice_certificates gauge",
        ]
        rows = Certificate.objects.values("tenant__slug", "status").annotate(n=Count("id")).order_by("tenant__slug")
        lines += [f'sluice_certificates{{tenant="{_escape(r["tenant__slug"])}",status="{r["status"]}"}} {r["n"]}'
                  for r in rows]  # fmt: skip
        lines += [
            "# HELP sluice_certificates_renewal_due Active certificates inside their renewal window.",
            "# TYPE sluice_certificates_renewal_due gauge",
        ]
        due = (Certificate.objects.filter(renewal_due=True, status=Certificate.Status.ACTIVE)
               .values("tenant__slug").annotate(n=Count("id")).order_by("tenant__slug"))  # fmt: skip
        lines += [f'sluice_certificates_renewal_due{{tenant="{_escape(r["tenant__slug"])}"}} {r["n"]}' for r in due]
        lines += ["# HELP sluice_devices Devices by tenant.", "# TYPE sluice_devices gauge"]
        devices = Device.objects.values("tenant__slug").annotate(n=Count("id")).order_by("tenant__slug")
        lines += [f'sluice_devices{{tenant="{_escape(r["tenant__slug"])}"}} {r["n"]}' for r in devices]
        lines += ["# HELP sluice_streams Streams by tenant and provisioning status.", "# TYPE sluice_streams gauge"]
        streams = Stream.objects.values("tenant__slug", "status").annotate(n=Count("id")).order_by("tenant__slug")
        lines += [f'sluice_streams{{tenant="{_escape(r["tenant__slug"])}",status="{r["status"]}"}} {r["n"]}'
                  for r in streams]  # fmt: skip
        lines += _ingest_lines()
        return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")


def _ingest_lines() -> list[str]:
    outcomes = counters()
    lines = [
        "# HELP sluice_ingest_records_accepted_total Records Kafka acknowledged through HTTPS ingest.",
        "# TYPE sluice_ingest_records_accepted_total counter",
        f"sluice_ingest_records_accepted_total {outcomes.pop(ACCEPTED, 0)}",
        "# HELP sluice_ingest_requests_refused_total Ingest requests refused, by error code.",
        "# TYPE sluice_ingest_requests_refused_total counter",
    ]
    lines += [
        f'sluice_ingest_requests_refused_total{{code="{_escape(code)}"}} {n}' for code, n in sorted(outcomes.items())
    ]
    return lines
