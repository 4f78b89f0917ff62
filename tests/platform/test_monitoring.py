"""The monitoring that ships in the repo: the alert rules (each alert fires on series that
should fire it and stays quiet on series that should not, by ``promtool test rules``), the
Prometheus configuration the launcher renders (``promtool check config``), and the Grafana
dashboard (every query parses, and names only metrics that exist)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import yaml

from certs.platform_pki import PlatformPki
from config.env import BASE_DIR, load_runtime
from sluicectl.components import ALERT_RULES, JMX_EXPORTER_RULES, prometheus_config

PROMTOOL = "/usr/bin/promtool"
ALERT_TESTS = BASE_DIR / "platform" / "prometheus" / "alerts_test.yml"
DASHBOARD = BASE_DIR / "platform" / "grafana" / "sluice.json"

# Sluice's own metrics (issue 14's contract: served by Sluice's /metrics).
CONTRACT = {
    "sluice_ingest_records_total", "sluice_ingest_bytes_total", "sluice_ingest_requests_total",
    "sluice_ingest_refusals_total", "sluice_ingest_rate_limited_total", "sluice_ingest_producer_queue_messages",
    "sluice_celery_tasks_total", "sluice_celery_beat_heartbeat_timestamp_seconds", "sluice_certificates",
    "sluice_certificates_expiring", "sluice_certificates_at_risk", "sluice_crl_next_update_timestamp_seconds",
    "sluice_acl_drift_bindings", "sluice_acl_reconcile_timestamp_seconds", "sluice_consumer_lag_records",
    "sluice_state_disk_free_bytes", "sluice_state_disk_size_bytes", "sluice_devices", "sluice_streams",
    "sluice_ingest_dead_letters_total", "sluice_mqtt_bridge_records_total",
}  # fmt: skip
CONTRACT_HISTOGRAMS = {
    "sluice_ingest_request_duration_seconds", "sluice_ingest_delivery_duration_seconds",
    "sluice_celery_task_duration_seconds",
}  # fmt: skip
METRIC = re.compile(r"\b((?:sluice|kafka)_[a-z0-9_]+)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False)


def jmx_metric_names() -> set[str]:
    """The names the brokers' JMX exporter rules produce."""
    rules = yaml.safe_load(JMX_EXPORTER_RULES.read_text())["rules"]
    return {rule["name"] for rule in rules}


def known_metrics() -> set[str]:
    histograms = {f"{name}_{suffix}" for name in CONTRACT_HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    return CONTRACT | histograms | jmx_metric_names()


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_every_alert_fires_on_its_case_and_not_on_the_others() -> None:
    # when promtool runs the rules' unit tests
    result = promtool("test", "rules", str(ALERT_TESTS))
    # then every case passes
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not() -> None:
    # given the alerts and their test cases
    alerts = {rule["alert"] for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]}
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    # then each alert is expected to fire somewhere and to stay quiet somewhere
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts - fired == set()
    assert alerts - quiet == set()
    # and the issue's alerts are all there
    assert {"ConsumerLagRising", "KafkaBrokerDown", "KafkaUnderReplicatedPartitions", "KafkaOfflinePartitions",
            "StateDiskFilling", "IngestServerErrors", "IngestRateLimitStorm", "CertificatesAtRisk", "CrlStale",
            "AclDrift", "CeleryBeatSilent"} <= alerts  # fmt: skip


def test_the_alert_rules_check_and_use_only_known_metrics() -> None:
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    used = set(METRIC.findall(ALERT_RULES.read_text()))
    assert used, "the rules name no metric"
    assert used - known_metrics() == set()


def test_the_rendered_prometheus_configuration_checks(tmp_path: Path) -> None:
    # given a 3-broker platform's runtime, with the files the configuration names
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_PORT_OFFSET": "21000",
                            "SLUICE_KAFKA_BROKERS": "3"})  # fmt: skip
    pki = PlatformPki(runtime.pki_dir)
    pki.trust_bundle.parent.mkdir(parents=True)
    pki.trust_bundle.write_text("")
    runtime.metrics_scrape_token_file.parent.mkdir(parents=True)
    runtime.metrics_scrape_token_file.write_text("token\n")
    # when the launcher's configuration is rendered
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(runtime, pki))
    # then promtool accepts it (and the alert rules it loads)
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    # and it scrapes Sluice over HTTPS with the token, every broker's exporter, the registry and itself
    jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert set(jobs) == {"sluice", "kafka", "registry", "prometheus"}
    assert jobs["sluice"]["scheme"] == "https"
    assert jobs["sluice"]["authorization"]["credentials_file"] == str(runtime.metrics_scrape_token_file)
    assert jobs["sluice"]["tls_config"]["ca_file"] == str(pki.trust_bundle)
    kafka_targets = [t for group in jobs["kafka"]["static_configs"] for t in group["targets"]]
    assert kafka_targets == [f"127.0.0.1:{runtime.broker_ports(n).metrics}" for n in (1, 2, 3)]
    assert jobs["registry"]["static_configs"][0]["targets"] == [f"127.0.0.1:{runtime.ports.registry_management}"]


def test_an_external_cluster_and_registry_are_not_scraped(tmp_path: Path) -> None:
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_KAFKA_BOOTSTRAP": "kafka.example:9092",
                            "SLUICE_REGISTRY_URL": "https://registry.example"})  # fmt: skip
    jobs = yaml.safe_load(prometheus_config(runtime, PlatformPki(runtime.pki_dir)))["scrape_configs"]
    assert {job["job_name"] for job in jobs} == {"sluice", "prometheus"}


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    # given every query of every panel as a recording rule
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": expr}
                                                        for i, (_, expr) in enumerate(queries)]}]}  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    # then promtool parses them all
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def test_every_dashboard_query_names_only_known_metrics() -> None:
    for title, expr in dashboard_queries():
        used = set(METRIC.findall(expr)) | ({"up"} if re.search(r"\bup\{", expr) else set())
        assert used, f"{title}: {expr} names no metric"
        assert used - known_metrics() - {"up"} == set(), f"{title}: {expr}"


def test_the_dashboard_has_the_issues_panels() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for metric in ("sluice_ingest_records_total", "sluice_ingest_refusals_total",
                   "sluice_ingest_request_duration_seconds_bucket", "sluice_ingest_producer_queue_messages",
                   "sluice_consumer_lag_records", 'up{job="kafka"}', "kafka_under_replicated_partitions",
                   "kafka_bytes_in_total", "kafka_bytes_out_total", "sluice_certificates_at_risk",
                   'sluice_celery_tasks_total{outcome="failure"}'):  # fmt: skip
        assert metric in exprs, metric


def test_sluice_up_starts_prometheus_and_says_where_and_no_prometheus_leaves_it_out(tmp_path: Path) -> None:
    from tests.platform.test_launcher import SLUICECTL, launcher_env, read_until

    env = launcher_env(tmp_path, 21500)
    url = f"http://127.0.0.1:{9090 + 21500}"
    # when the launcher starts Redis and Prometheus
    proc = subprocess.Popen([*SLUICECTL, "up", "--components", "redis,prometheus"], env=env, cwd=BASE_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        seen = read_until(proc, "press Ctrl-C", timeout=60)
        # then it prints where Prometheus is, and Prometheus answers there with the alert rules loaded
        assert f"Prometheus      {url}/" in seen
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:  # noqa: S310 - loopback
            assert response.status == 200
        with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=5) as response:  # noqa: S310
            rules = json.loads(response.read())["data"]["groups"]
        assert {"sluice-kafka", "sluice-ingest", "sluice-platform"} <= {group["name"] for group in rules}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    # when started again with --no-prometheus (a state and ports of its own), then no Prometheus starts
    env = launcher_env(tmp_path / "without", 21600)
    proc = subprocess.Popen([*SLUICECTL, "up", "--no-prometheus", "--components", "redis,prometheus"], env=env,
                            cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        seen = read_until(proc, "press Ctrl-C", timeout=60)
        assert "starting prometheus" not in seen
        assert "Prometheus" not in seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
