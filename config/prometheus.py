"""A small client of Prometheus's HTTP query API (``/api/v1/query``, ``/api/v1/query_range``)
for the console's overviews: the Prometheus the launcher starts on loopback, at the port
``SLUICE_RUNTIME.ports.prometheus``.  Short timeouts, and its own errors: a console page that
cannot reach Prometheus says so and shows the rest."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from django.conf import settings

TIMEOUT_SECONDS = 2.0


class PrometheusError(Exception):
    """Prometheus could not answer a query; ``code`` and ``message`` say why."""

    code = "prometheus_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PrometheusUnavailable(PrometheusError):
    """Nothing answers at Prometheus's address (not started: ``sluice up --no-prometheus``,
    or another web node), or it answered too slowly."""

    code = "prometheus_unavailable"


class PrometheusQueryFailed(PrometheusError):
    """Prometheus answered, but refused the query or answered something unreadable."""

    code = "prometheus_query_failed"


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix time, value)


def label_value(value: str) -> str:
    """``value`` quoted as a PromQL label value (``"..."`` with its escapes)."""
    return json.dumps(value)


class Prometheus:
    def __init__(self, base_url: str, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 (our own loopback URL)
                body = response.read()
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("error", "")
            except ValueError:
                detail = ""
            reason = f"Prometheus refused the query (HTTP {error.code}): {detail}".rstrip(": ")
            raise PrometheusQueryFailed(reason) from None
        except (OSError, TimeoutError) as error:
            raise PrometheusUnavailable(f"Prometheus at {self.base_url} is not reachable ({error}).") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise PrometheusQueryFailed("Prometheus answered something that is not JSON.") from None
        if answer.get("status") != "success":
            raise PrometheusQueryFailed(f"Prometheus refused the query: {answer.get('error', 'no reason given')}")
        return answer["data"]

    def query(self, promql: str, *, at: dt.datetime | None = None) -> list[Sample]:
        """An instant vector (``/api/v1/query``); a scalar comes back as one unlabelled sample."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [Sample(labels={}, value=float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PrometheusQueryFailed(f"Expected an instant vector, got a {data['resultType']}.")
        return [Sample(labels=item["metric"], value=float(item["value"][1])) for item in data["result"]]

    def query_range(self, promql: str, *, start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> list[Series]:
        """A range vector (``/api/v1/query_range``): each series with its points, oldest first."""
        params = {"query": promql, "start": f"{start.timestamp():.3f}", "end": f"{end.timestamp():.3f}",
                  "step": f"{step.total_seconds():g}"}  # fmt: skip
        data = self._get("/api/v1/query_range", params)
        if data["resultType"] != "matrix":
            raise PrometheusQueryFailed(f"Expected a range vector, got a {data['resultType']}.")
        return [
            Series(labels=item["metric"], points=[(float(t), float(v)) for t, v in item["values"]])
            for item in data["result"]
        ]


def prometheus() -> Prometheus:
    """The platform's Prometheus (on loopback, at the runtime's Prometheus port)."""
    return Prometheus(f"http://127.0.0.1:{settings.SLUICE_RUNTIME.ports.prometheus}")
