"""Prometheus as ``sluice up`` starts it, against this test run's real brokers and registry:
every target it is configured with answers, and Kafka's own metrics (the brokers' JMX
exporter) are queryable."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from config.env import Runtime
from sluicectl.components import ALL, Context, prometheus_url
from sluicectl.launcher import child_env
from sluicectl.supervisor import Process


def api(runtime: Runtime, path: str, **query: str) -> Any:
    url = f"{prometheus_url(runtime)}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def prometheus(services: Runtime) -> Iterator[Runtime]:
    """The launcher's Prometheus component, prepared and started as ``sluice up`` does."""
    component = ALL["prometheus"]
    ctx = Context(runtime=services, env=child_env())
    component.prepare(ctx)
    process: Process = component.process(ctx)
    process.start()
    try:
        deadline = time.monotonic() + 60
        while (reason := component.check(ctx)) is not None:
            assert process.exit_code() is None, f"prometheus exited: see {process.log_path}"
            assert time.monotonic() < deadline, f"prometheus not ready: {reason}"
            time.sleep(0.5)
        yield services
    finally:
        process.stop(timeout=20)


@pytest.mark.django_db(transaction=True)  # Sluice's /metrics reads the test database
def test_prometheus_scrapes_sluice_the_brokers_the_registry_and_itself(prometheus: Runtime) -> None:
    # when Prometheus has scraped each target once (the first scrape of each comes within its interval)
    deadline = time.monotonic() + 60
    health: dict[str, list[str]] = {}
    wanted = {"sluice", "kafka", "registry", "prometheus"}
    while time.monotonic() < deadline:
        targets = api(prometheus, "targets")["activeTargets"]
        health = {}
        errors = {}
        for target in targets:
            health.setdefault(target["labels"]["job"], []).append(target["health"])
            errors[target["scrapeUrl"]] = target.get("lastError", "")
        if all(health.get(job) and set(health[job]) == {"up"} for job in wanted):
            break
        time.sleep(1)
    # then Sluice's /metrics (through nginx, with the scrape token), every broker's JMX exporter,
    # the registry and Prometheus itself are up
    assert {job: set(states) for job, states in health.items() if job in wanted} == {job: {"up"} for job in wanted}, (
        errors
    )
    assert len(health["kafka"]) == prometheus.kafka_brokers
    # and Sluice's own metrics are queryable
    deadline = time.monotonic() + 30
    while not api(prometheus, "query", query="sluice_state_disk_size_bytes")["result"]:
        assert time.monotonic() < deadline, "no sluice_state_disk_size_bytes series"
        time.sleep(1)

    # and Kafka's own metrics are queryable: no partition under-replicated, one active controller
    deadline = time.monotonic() + 30
    while not api(prometheus, "query", query="kafka_under_replicated_partitions")["result"]:
        assert time.monotonic() < deadline, "no kafka_under_replicated_partitions series"
        time.sleep(1)
    urp = api(prometheus, "query", query="sum(kafka_under_replicated_partitions)")["result"]
    assert float(urp[0]["value"][1]) == 0
    controllers = api(prometheus, "query", query="sum(kafka_active_controller_count)")["result"]
    assert float(controllers[0]["value"][1]) == 1
    # and the request and log metrics of the brokers' rules are there (every client asks for metadata;
    # the quorum's own log is a partition)
    assert api(prometheus, "query", query='kafka_requests_total{request="Metadata"}')["result"], "no request counter"
    assert api(prometheus, "query", query='kafka_log_size_bytes{topic="__cluster_metadata"}')["result"], "no log size"


def test_prometheus_loaded_the_alert_rules(prometheus: Runtime) -> None:
    groups = api(prometheus, "rules")["groups"]
    alerts = {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
    assert {"KafkaBrokerDown", "KafkaUnderReplicatedPartitions", "CeleryBeatSilent", "CertificatesAtRisk"} <= alerts
    # and with every broker up, KafkaBrokerDown is not pending or firing
    firing = {alert["labels"]["alertname"] for alert in api(prometheus, "alerts")["alerts"]}
    assert "KafkaBrokerDown" not in firing
