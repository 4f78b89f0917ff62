"""The scratch platform (``platform/bin/sluice up``) and how its CPU is counted.

CPU of a process tree = user + system of every live process in it, plus what each has
collected from children it reaped (``children_user``/``children_system``): a worker that
exits inside a window is counted by its parent once reaped, and until then as a zombie,
so the difference between two snapshots covers processes that came and went.  Parts of the
platform are the launcher's components by name (``<state>/run/launcher.json``), so a new
component (say separate ingest workers) is counted under its own name without changes
here.
"""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KTHREADD = 2


@dataclass(frozen=True)
class ProcTable:
    """Every process of the machine at one instant, from ``/proc/<pid>/stat``: its parent,
    its own CPU (all threads) and what it collected from reaped children.  One pass over
    ``/proc`` per window edge, so all parts are read at (nearly) the same instant and the
    benchmark's own accounting stays cheap."""

    parent: dict[int, int]
    own: dict[int, float]
    reaped: dict[int, float]

    @classmethod
    def read(cls) -> ProcTable:
        parent, own, reaped = {}, {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            parent[pid] = int(fields[1])
            own[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            reaped[pid] = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
        return cls(parent, own, reaped)

    @functools.cached_property
    def children(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for child, ppid in self.parent.items():
            out.setdefault(ppid, []).append(child)
        return out

    def below(self, pid: int) -> set[int]:
        """``pid`` and all its descendants (empty if it is gone)."""
        if pid not in self.parent:
            return set()
        found, pending = {pid}, [pid]
        while pending:
            for child in self.children.get(pending.pop(), []):
                if child not in found:
                    found.add(child)
                    pending.append(child)
        return found

    def tree_cpu(self, pid: int) -> float:
        """CPU seconds of ``pid``'s tree: every live process plus what each has reaped."""
        return sum(self.own[p] + self.reaped[p] for p in self.below(pid))


def tree_pids(pid: int) -> set[int]:
    return ProcTable.read().below(pid)


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy since boot (every core, every process),
    and the part of it spent in interrupts and soft interrupts (loopback networking, mostly)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS, (irq + softirq) / CLOCK_TICKS


class Platform:
    """``platform/bin/sluice up`` on a scratch state directory, read until "ready in"; its
    output is drained by a thread afterwards (a full pipe would block the launcher)."""

    def __init__(self, state: Path, offset: int, up_args: list[str] | None = None) -> None:
        self.state = state
        self.up_args = up_args or []
        self.env = dict(os.environ, SLUICE_STATE_DIR=str(state), SLUICE_PORT_OFFSET=str(offset))
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._components: dict[str, int] = {}

    def start(self, timeout: float = 300.0) -> float:
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [str(ROOT / "platform" / "bin" / "sluice"), "up", *self.up_args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        while time.monotonic() - began < timeout:
            readable, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if not readable:
                continue
            line = self.proc.stdout.readline()
            self._keep(line)
            if "ready in" in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return time.monotonic() - began
            if line == "" and self.proc.poll() is not None:
                break
        raise RuntimeError("platform never became ready:\n" + "".join(self.output[-40:]))

    def _keep(self, line: str) -> None:
        # The first start prints the one-time admin password; never keep it.
        self.output.append("[password line withheld]\n" if "password" in line.lower() else line)

    def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._keep(line)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def restart(self, name: str, timeout: float = 120.0) -> int:
        """End component ``name`` (SIGTERM) and wait until the launcher has started it again
        and its readiness check passed (its state ``running`` under a new pid); the new pid."""
        old = self.components[name]
        os.kill(old, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                state = json.loads((self.state / "run" / "launcher.json").read_text())
            except (OSError, ValueError):
                continue
            pid = state["components"].get(name)
            if pid and pid != old and state.get("supervision", {}).get(name, {}).get("state") == "running":
                self._components = {}
                return int(pid)
        raise RuntimeError(f"the launcher did not have {name} running again within {timeout:.0f} s")

    @property
    def components(self) -> dict[str, int]:
        """Component name -> pid, as the launcher recorded them."""
        if not self._components:
            state = json.loads((self.state / "run" / "launcher.json").read_text())
            self._components = {name: int(pid) for name, pid in state["components"].items()}
        return self._components

    def cpu_by_part(self, table: ProcTable) -> dict[str, float]:
        """Cumulative CPU seconds of each component's process tree, and the launcher's own."""
        assert self.proc is not None
        parts = {name: table.tree_cpu(pid) for name, pid in self.components.items()}
        parts["launcher"] = table.own.get(self.proc.pid, 0.0)
        return parts

    @property
    def logs(self) -> Path:
        return self.state / "logs"


@dataclass
class Sources:
    """Everything whose CPU is counted at a window's edges: named process trees (each
    reported as its own part) and callables giving several parts at once (the platform)."""

    trees: dict[str, Callable[[], Iterable[int]]] = field(default_factory=dict)
    groups: list[Callable[[ProcTable], dict[str, float]]] = field(default_factory=list)

    def cpu(self) -> dict[str, float]:
        table = ProcTable.read()
        out: dict[str, float] = {}
        for group in self.groups:
            out.update(group(table))
        for name, pids in self.trees.items():
            out[name] = sum(table.tree_cpu(pid) for pid in pids())
        out["bench"] = table.own.get(os.getpid(), 0.0)
        # Kernel threads (kthreadd's tree: ksoftirqd, kworkers) work for everyone, the
        # benchmark included; they are shown, not counted as foreign.
        out["kernel"] = table.tree_cpu(KTHREADD)
        return out
