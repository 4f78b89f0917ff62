"""Background load on the REST API while ingest is measured (issue 9, item 7: ingest keeps
its latency while the console and API are busy).

A few processes, each with a few keep-alive HTTPS connections, send authenticated ``GET``
requests to list endpoints of the REST API back to back (Django's whole request cycle, a
token lookup and tenant-scoped queries each), as hard as the web workers answer.  The count
of answered requests and of non-200 answers is read back when the load stops.
"""

from __future__ import annotations

import multiprocessing
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.ingestbench.clients import Connection


def _api_process(spec: dict[str, Any], stop: Any, results: Any) -> None:
    context = ssl.create_default_context(cafile=spec["ca_file"])
    head = "".join(f"{name}: {value}\r\n" for name, value in spec["headers"].items())
    requests = [f"GET {path} HTTP/1.1\r\n{head}\r\n".encode() for path in spec["paths"]]
    counts = {"answered": 0, "not_200": 0, "errors": 0}
    lock = threading.Lock()

    def run(offset: int) -> None:
        conn: Connection | None = None
        i = offset
        while not stop.is_set():
            try:
                if conn is None:
                    conn = Connection(context, spec["host"], spec["port"], spec["server_hostname"])
                status, closes, _ = conn.exchange(requests[i % len(requests)])
                with lock:
                    counts["answered"] += 1
                    counts["not_200"] += status != 200
                if closes:
                    conn.close()
                    conn = None
            except (OSError, ValueError):
                with lock:
                    counts["errors"] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            i += 1

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(spec["connections"])]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(timeout=65)
    results.put(counts)


@dataclass
class ApiLoad:
    host: str
    port: int
    server_hostname: str
    ca_file: str
    token: str
    user_agent: str  # the run's token: the meter counts these requests as the benchmark's own
    paths: list[str]
    procs: int = 2
    connections: int = 4
    _stop: Any = None
    _results: Any = None
    _procs: list[Any] = field(default_factory=list)
    started: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __enter__(self) -> ApiLoad:
        ctx = multiprocessing.get_context("spawn")
        self._stop, self._results = ctx.Event(), ctx.Queue()
        spec = {
            "host": self.host,
            "port": self.port,
            "server_hostname": self.server_hostname,
            "ca_file": self.ca_file,
            "headers": {
                "Authorization": f"Bearer {self.token}",
                "Host": self.server_hostname,
                "User-Agent": self.user_agent,
            },
            "paths": self.paths,
            "connections": self.connections,
        }
        args = (spec, self._stop, self._results)
        self._procs = [ctx.Process(target=_api_process, args=args) for _ in range(self.procs)]
        for proc in self._procs:
            proc.start()
        self.started = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self.seconds = time.monotonic() - self.started
        totals = {"answered": 0, "not_200": 0, "errors": 0}
        for _ in self._procs:
            try:
                for key, value in self._results.get(timeout=60).items():
                    totals[key] += value
            except Exception:  # noqa: BLE001 - a lost process is reported as missing counts
                totals["errors"] += 1
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        self.counts = totals

    def pids(self) -> set[int]:
        return {p.pid for p in self._procs if p.pid is not None}

    def describe(self) -> str:
        rate = self.counts.get("answered", 0) / self.seconds if self.seconds else 0.0
        return (
            f"{self.counts.get('answered', 0):,} REST API requests answered in {self.seconds:.0f} s "
            f"({rate:,.0f}/s; {self.counts.get('not_200', 0)} not 200, {self.counts.get('errors', 0)} "
            f"connection errors) by {self.procs} processes x {self.connections} keep-alive connections"
        )
