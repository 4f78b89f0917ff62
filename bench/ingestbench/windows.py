"""Measured windows: warm up, then take windows until enough are clean.

At each window edge the meter snapshots the CPU of every part (platform components, the
floor stack, clients, producer, this process), the whole machine's busy CPU, and the end of
each nginx log.  A window is discarded when, inside it, nginx reloaded (its error log says
"reconfiguring"), nginx served a request that is not the benchmark's own (an access-log
line without the run's User-Agent token), or the machine spent more than ``max_foreign``
cores on processes that are not part of the benchmark.  Windows are taken until
``windows`` are clean or ``max_windows`` were tried.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.ingestbench.stack import Sources, machine_busy


@dataclass(frozen=True)
class Plan:
    warmup: float
    seconds: float
    windows: int
    max_windows: int
    max_foreign: float  # cores used by processes outside the benchmark; above it a window is discarded


@dataclass(frozen=True)
class Edge:
    at: float
    cpu: dict[str, float]
    busy: float
    logs: dict[str, int]
    mark: Any


@dataclass
class Window:
    start: float
    end: float
    cpu: dict[str, float]  # part -> CPU seconds inside the window
    foreign_cores: float  # busy cores of the machine not accounted to any part (other users' processes)
    reloads: int
    foreign_requests: int
    foreign_examples: list[str]
    logged: int  # access-log lines of the benchmark's own requests
    mark: tuple[Any, Any]
    load: dict[str, Any] = field(default_factory=dict)  # what the load did: records, requests, latencies
    flagged: list[str] = field(default_factory=list)  # what the load itself says went wrong in the window

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def problems(self, max_foreign: float) -> list[str]:
        found = list(self.flagged)
        if self.reloads:
            found.append(f"{self.reloads} nginx reload(s)")
        if self.foreign_requests:
            found.append(f"{self.foreign_requests} foreign request(s): {'; '.join(self.foreign_examples)}")
        if self.foreign_cores > max_foreign:
            found.append(f"{self.foreign_cores:.2f} cores used outside the benchmark")
        return found


class Load(Protocol):
    def start(self) -> None: ...

    def mark(self) -> Any: ...

    def stop(self) -> None: ...

    def tally(self, window: Window) -> dict[str, Any]: ...


class LogWatch:
    """The nginx logs of one stack: access log (requests) and error log (reloads)."""

    def __init__(self, name: str, access: Path, error: Path) -> None:
        self.name = name
        self.access = access
        self.error = error

    def offsets(self) -> dict[str, int]:
        return {f"{self.name}:access": _size(self.access), f"{self.name}:error": _size(self.error)}

    def between(self, before: dict[str, int], after: dict[str, int], token: bytes) -> tuple[int, int, list[str], int]:
        """(reloads, foreign requests, examples of them, own requests) between two offsets."""
        access = _read(self.access, before[f"{self.name}:access"], after[f"{self.name}:access"])
        error = _read(self.error, before[f"{self.name}:error"], after[f"{self.name}:error"])
        reloads = error.count(b"reconfiguring")
        lines = [line for line in access.split(b"\n") if line]
        own = sum(token in line for line in lines)
        foreign = [line for line in lines if token not in line]
        examples = [f"{self.name}: {_request_of(line)}" for line in foreign[:3]]
        return reloads, len(foreign), examples, own


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read(path: Path, start: int, end: int) -> bytes:
    if end <= start:
        return b""
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def _request_of(line: bytes) -> str:
    parts = line.split(b'"')
    return parts[1].decode(errors="replace")[:80] if len(parts) > 1 else line[:80].decode(errors="replace")


class Meter:
    def __init__(self, sources: Sources, logs: Sequence[LogWatch], token: bytes) -> None:
        self.sources = sources
        self.logs = logs
        self.token = token

    def edge(self, load: Load | None) -> Edge:
        offsets: dict[str, int] = {}
        for watch in self.logs:
            offsets.update(watch.offsets())
        mark = load.mark() if load is not None else None
        cpu = self.sources.cpu()
        busy, cpu["irq"] = machine_busy()
        return Edge(time.time(), cpu, busy, offsets, mark)

    def window(self, a: Edge, b: Edge) -> Window:
        cpu = {part: b.cpu[part] - a.cpu.get(part, 0.0) for part in b.cpu}
        seconds = b.at - a.at
        foreign = max(0.0, (b.busy - a.busy) - sum(cpu.values())) / seconds
        reloads = foreign_requests = logged = 0
        examples: list[str] = []
        for watch in self.logs:
            r, f, ex, own = watch.between(a.logs, b.logs, self.token)
            reloads += r
            foreign_requests += f
            examples += ex
            logged += own
        return Window(a.at, b.at, cpu, foreign, reloads, foreign_requests, examples, logged, (a.mark, b.mark))


def measure(meter: Meter, load: Load | None, plan: Plan, say: Callable[[str], None] = print) -> list[Window]:
    """Start ``load``, warm up, take windows until ``plan.windows`` are clean (or
    ``plan.max_windows`` were taken), stop the load and tally what it did in each."""
    windows: list[Window] = []
    if load is not None:
        load.start()
    try:
        time.sleep(plan.warmup)
        edge = meter.edge(load)
        while len(windows) < plan.max_windows and sum(not w.problems(plan.max_foreign) for w in windows) < plan.windows:
            time.sleep(max(0.0, edge.at + plan.seconds - time.time()))
            after = meter.edge(load)
            window = meter.window(edge, after)
            # A load may know of trouble the meter cannot see (the MQTT bridge stalled).
            flag = getattr(load, "problems", None)
            if flag is not None:
                window.flagged += flag(window)
            windows.append(window)
            problems = window.problems(plan.max_foreign)
            if problems:
                say(f"    window {len(windows)} discarded: {', '.join(problems)}")
            edge = after
    finally:
        if load is not None:
            load.stop()
    if load is not None:
        for window in windows:
            window.load = load.tally(window)
    return windows


def clean(windows: Sequence[Window], max_foreign: float) -> list[Window]:
    return [w for w in windows if not w.problems(max_foreign)]


@dataclass(frozen=True)
class Spread:
    """Median of the clean windows with their range; ``n`` windows were clean."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [v for v in values if v == v]  # drop NaN
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, spec: str = ",.0f") -> str:
        if not self.n:
            return "n/a"
        if self.n == 1:
            return f"{self.median:{spec}} (1 window)"
        return f"{self.median:{spec}} ({self.low:{spec}}-{self.high:{spec}})"
