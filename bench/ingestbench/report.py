"""Results of measured runs, and the Markdown report."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ingestbench.windows import Spread, Window, clean

BESIDE = ("kafka", "redis", "registry", "worker", "beat", "launcher", "clients", "producer", "bench", "kernel", "irq")


@dataclass
class Run:
    name: str
    kind: str  # ceiling | sluice | floor | idle
    format: str
    records_per_request: int
    mode: str  # producer | keepalive | handshake | paced | idle
    server_parts: list[str]
    windows: list[Window]
    max_foreign: float
    connections: int = 0
    connects: int = 0
    rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    beside: list[str] = field(default_factory=list)  # further parts shown beside (e.g. the other transport's)

    @property
    def clean(self) -> list[Window]:
        return clean(self.windows, self.max_foreign)

    def server_cpu(self, w: Window) -> float:
        return sum(w.cpu.get(p, 0.0) for p in self.server_parts)

    def records_per_cpu(self, w: Window) -> float:
        cpu = self.server_cpu(w)
        return w.load.get("records", 0) / cpu if cpu > 0 else math.nan

    def requests_per_cpu(self, w: Window) -> float:
        cpu = self.server_cpu(w)
        return w.load.get("requests", 0) / cpu if cpu > 0 else math.nan

    def spread(self, metric: str) -> Spread:
        return Spread.of([metric_of(self, w, metric) for w in self.clean])

    def pooled_latency(self, q: float) -> float:
        values = sorted(ms for w in self.clean for ms in w.load.get("latencies", []))
        return percentile(values, q)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def metric_of(run: Run, w: Window, metric: str) -> float:
    seconds = w.seconds
    load = w.load
    if metric == "records/s":
        return load.get("records", 0) / seconds
    if metric == "requests/s":
        return load.get("requests", 0) / seconds
    if metric == "records/cpu":
        return run.records_per_cpu(w)
    if metric == "requests/cpu":
        return run.requests_per_cpu(w)
    if metric == "server cores":
        return run.server_cpu(w) / seconds
    if metric == "cpu/request ms":
        return run.server_cpu(w) / load["requests"] * 1000 if load.get("requests") else math.nan
    if metric == "cpu/record us":
        return run.server_cpu(w) / load["records"] * 1e6 if load.get("records") else math.nan
    if metric in ("p50", "p99"):
        return percentile(sorted(load.get("latencies", [])), 0.5 if metric == "p50" else 0.99)
    raise KeyError(metric)


def ratio_spread(numerators: list[float], denominator: float) -> Spread:
    return (
        Spread.of([n / denominator for n in numerators])
        if denominator == denominator and denominator
        else Spread.of([])
    )


def mean_of_medians(runs: list[Run], metric: str) -> float:
    medians = [r.spread(metric).median for r in runs if r.spread(metric).n]
    return statistics.fmean(medians) if medians else math.nan


# -- the report --------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    memory = ""
    try:
        kib = int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}, Linux {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import confluent_kafka

    parts = [f"confluent-kafka {confluent_kafka.version()} (librdkafka {confluent_kafka.libversion()[0]})"]
    for name in ("uvicorn", "granian", "Django"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    try:
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
        parts.append(nginx.replace("nginx version: ", ""))
    except OSError:
        pass
    return ", ".join(parts)


def _f(value: float, spec: str = ",.0f") -> str:
    return "n/a" if value != value else f"{value:{spec}}"


def _target(value: float, target: float, *, at_most: bool = False) -> str:
    if value != value:
        return "n/a"
    met = value <= target if at_most else value >= target
    return "met" if met else "**not met**"


@dataclass
class Summary:
    """What the report says at the top: one line per P-figure."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # figure, measured, target, verdict

    def add(
        self, figure: str, spread: Spread, target: float, spec: str, *, at_most: bool = False, unit: str = ""
    ) -> None:
        shown = f"{spread.fmt(spec)}{unit}"
        symbol = "≤" if at_most else "≥"
        self.rows.append(
            (figure, shown, f"{symbol} {target:{spec}}{unit}", _target(spread.median, target, at_most=at_most))
        )


def render(*, runs: list[Run], summary: Summary, header: list[str], notes: list[str], smoke: bool) -> str:
    lines: list[str] = []
    if smoke:
        lines += [
            "> **SMOKE RUN**: short windows on a shared, busy machine, to prove the harness works. These "
            "figures are not measurements; do not quote them.",
            "",
        ]
    lines += header
    lines += [
        "",
        "## Summary (median of clean windows, range in brackets)",
        "",
        "| figure | measured | target (issue 9) | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary.rows]
    lines += [
        "",
        "## Runs",
        "",
        "Each run: warm-up, then windows; a window is discarded (marked ✗) when nginx reloaded, served a "
        "request that was not the benchmark's, or the machine spent more than the allowed cores outside "
        "the benchmark. Server CPU = the parts in the *server* column; the others are beside it.",
        "",
    ]
    for run in runs:
        lines += _run_table(run)
    lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _run_table(run: Run) -> list[str]:
    what = {
        "ceiling": f"direct producer, {run.format} record, runs of {run.extra.get('run_length', '?')} per key",
        "sluice": f"Sluice, {run.format}, {run.records_per_request} record(s)/request, {run.mode}",
        "floor": f"floor (nginx + no-op ASGI app), 1 record/request, {run.mode}",
        "produce-only": (
            f"produce-only floor (nginx + produce_app), {run.records_per_request} record(s)/request, {run.mode}"
        ),
        "mqtt": f"Sluice over MQTT, {run.format}, 1 record/message, QoS 1, {run.mode}",
        "idle": "idle platform (no traffic)",
    }[run.kind]
    head = [f"### {run.name}: {what}", ""]
    facts = [f"server = {' + '.join(run.server_parts)}"]
    if run.connections:
        facts.append(f"{run.connections} connections, {run.connects} TLS handshakes in all")
    if run.rate:
        facts.append(f"paced at {run.rate:,.0f} requests/s")
    for key, value in run.extra.items():
        if key not in ("run_length", "settings"):
            facts.append(f"{key}: {value}")
    head += ["; ".join(facts) + ".", ""]
    beside = [p for p in (*run.beside, *BESIDE) if any(abs(w.cpu.get(p, 0.0)) >= 0.005 for w in run.windows)]
    if run.kind == "ceiling":
        return [*head, *_ceiling_rows(run, beside), ""]
    cols = [
        "#",
        "s",
        "records/s",
        "requests/s",
        "server CPU-s",
        "records / server CPU-s",
        "requests / server CPU-s",
        "server CPU / request",
        "p50",
        "p99",
        *beside,
        "foreign cores",
        "statuses",
    ]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, w in enumerate(run.windows, 1):
        problems = w.problems(run.max_foreign)
        mark = f"{i} ✗" if problems else str(i)
        statuses = ", ".join(f"{'error' if k == 0 else k}: {v}" for k, v in sorted(w.load.get("statuses", {}).items()))
        if w.load.get("failed"):
            statuses = f"{int(w.load['failed'])} failed"
        cells = [
            mark,
            f"{w.seconds:.1f}",
            _f(metric_of(run, w, "records/s")),
            _f(metric_of(run, w, "requests/s")),
            f"{run.server_cpu(w):.2f}",
            _f(run.records_per_cpu(w)),
            _f(run.requests_per_cpu(w)),
            _f(metric_of(run, w, "cpu/request ms"), ".2f") + " ms" if w.load.get("requests") else "-",
            _f(metric_of(run, w, "p50"), ".1f") + " ms" if w.load.get("latencies") else "-",
            _f(metric_of(run, w, "p99"), ".1f") + " ms" if w.load.get("latencies") else "-",
            *[f"{w.cpu.get(p, 0.0):.2f}" for p in beside],
            f"{w.foreign_cores:.2f}",
            statuses or "-",
        ]
        rows.append("| " + " | ".join(cells) + " |")
        if problems:
            rows.append(f"| | ✗ {'; '.join(problems)} |" + " |" * (len(cols) - 2))
    return [*head, *rows, ""]


TITLE = "HTTPS ingest against its ceiling and its floor (`bench/ingest.py`)"


def header_lines(*, command: str, started: float, seconds: float, facts: list[str], title: str = TITLE) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))} with `{command}` "
        f"({seconds / 60:.1f} min in all).",
        "",
        f"Machine: {machine()}. Platform, clients and producer share its cores.",
        "",
        f"Software: {versions()}.",
        "",
        *[f"- {fact}" for fact in facts],
    ]


def _ceiling_rows(run: Run, beside: list[str]) -> list[str]:
    cols = ["#", "s", "records/s", "producer CPU-s", "records / producer CPU-s", *beside, "foreign cores", "failed"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, w in enumerate(run.windows, 1):
        problems = w.problems(run.max_foreign)
        cells = [
            f"{i} ✗" if problems else str(i),
            f"{w.seconds:.1f}",
            _f(metric_of(run, w, "records/s")),
            f"{run.server_cpu(w):.2f}",
            _f(run.records_per_cpu(w)),
            *[f"{w.cpu.get(p, 0.0):.2f}" for p in beside],
            f"{w.foreign_cores:.2f}",
            str(int(w.load.get("failed", 0))),
        ]
        rows.append("| " + " | ".join(cells) + " |")
        if problems:
            rows.append(f"| | ✗ {'; '.join(problems)} |" + " |" * (len(cols) - 2))
    return rows
