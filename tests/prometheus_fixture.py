"""A real Prometheus (``/usr/bin/prometheus``) for the tests of the console's charts, scraping
a tiny HTTP server of the test that serves the contract's metric names in Prometheus's text
format (counters that grow at every scrape), as two jobs: ``sluice`` and ``kafka`` (one
broker up, one target that refuses connections, so ``up{job="kafka"}`` has a 0 too).

``metrics_prometheus(port)`` starts both and waits until the range and instant queries the
overviews make return data."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

PROMETHEUS = "/usr/bin/prometheus"
# (tenant, stream, records per scrape), (tenant, code, refusals per scrape), (tenant, consumer, lag)
RECORDS = (("acme", "eu.temperature", 50), ("globex", "us.vibration", 20))
REFUSALS = (("acme", "schema_invalid", 2), ("globex", "rate_limited", 5))
LAG = (("acme", "analytics", 1200), ("globex", "billing", 30))


class _Metrics(BaseHTTPRequestHandler):
    scrapes = 0

    def do_GET(self) -> None:
        type(self).scrapes += 1
        n = type(self).scrapes
        if self.path == "/sluice":
            lines = ["# TYPE sluice_ingest_records_total counter"]
            lines += [f'sluice_ingest_records_total{{tenant="{t}",stream="{s}"}} {k * n}' for t, s, k in RECORDS]
            lines += ["# TYPE sluice_ingest_refusals_total counter"]
            lines += [f'sluice_ingest_refusals_total{{tenant="{t}",code="{c}"}} {k * n}' for t, c, k in REFUSALS]
            lines += ["# TYPE sluice_consumer_lag_records gauge"]
            lines += [f'sluice_consumer_lag_records{{tenant="{t}",consumer="{c}"}} {v}' for t, c, v in LAG]
        elif self.path == "/kafka":
            lines = ['kafka_under_replicated_partitions{broker="1"} 0', 'kafka_offline_partitions{broker="1"} 0',
                     'kafka_active_controller_count{broker="1"} 1']  # fmt: skip
        else:
            self.send_error(404)
            return
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(base: str, path: str, **params: str) -> list[object]:
    try:
        url = f"{base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a loopback http URL)
            return list(json.loads(response.read())["data"]["result"])
    except OSError:
        return []


@contextmanager
def metrics_prometheus(port: int, workdir: Path) -> Iterator[str]:
    """A real Prometheus on ``127.0.0.1:port`` scraping the contract's metrics every second;
    yields its base URL once its queries return data."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_address[1]}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "sluice", "metrics_path": "/sluice", "static_configs": [{"targets": [target]}]},
            {"job_name": "kafka", "metrics_path": "/kafka",
             "static_configs": [{"targets": [target], "labels": {"broker": "1"}},
                                {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"broker": "2"}}]},
        ],
    }  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        now = time.time()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"Prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}", pytrace=False)
            ready = (
                _answers(base, "/api/v1/query", query="sum(increase(sluice_ingest_refusals_total[1h])) > 0")
                and _answers(base, "/api/v1/query_range", query="rate(sluice_ingest_records_total[1m])",
                             start=str(now - 60), end=str(time.time()), step="5")
                and len(_answers(base, "/api/v1/query", query='up{job="kafka"}')) == 2
            )  # fmt: skip
            if ready:
                break
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus never answered the overviews' queries with data", pytrace=False)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        server.shutdown()
