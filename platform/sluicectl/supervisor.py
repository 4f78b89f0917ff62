"""Child processes: each in its own session (so a stop reaches its whole tree), output
appended to ``<state>/logs/<name>.log``, and told to exit if the launcher dies."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
ERROR_WORDS = ("ERROR", "FATAL", "Exception", "Error:", "error:", "Error occurred", "Address already in use")


def _die_with_parent() -> None:
    """preexec hook: SIGTERM this child when the launcher goes away, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _child_setup(nice: int, batch: bool) -> None:
    """preexec hook: die with the launcher, and run at ``nice`` (0: as the launcher), under
    ``SCHED_BATCH`` when ``batch`` (see ``Process.batch``)."""
    _die_with_parent()
    if nice:
        os.nice(nice)
    if batch:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def last_error(path: Path) -> str:
    """The most telling line of the latest run in a log: the first line that reads like an
    error after the last start marker, else its last line."""
    text = tail(path, 400)
    run = text.rsplit("\n==== ", 1)[-1].splitlines()
    for line in run:
        if any(word in line for word in ERROR_WORDS):
            return line.strip()[:400]
    return run[-1].strip()[:400] if run else ""


def tail(path: Path, lines: int = 5) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Process:
    """One supervised command."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # Scheduling priority below the data plane's (see components.BACKGROUND_NICE).
    nice: int = 0
    # SCHED_BATCH (sched(7)): the kernel takes the process for CPU-bound throughput work and
    # disfavours it in wake-up decisions, so the data plane's short wake-ups are not kept
    # waiting behind it (see components.WEB_NICE).
    batch: bool = False
    # Run as this (unprivileged) user, when the launcher is root and the program refuses to
    # run as root (PostgreSQL: components.Postgres).  None: as the launcher.
    user: str | None = None
    # What asks the process to stop; SIGKILL follows after the timeout.  PostgreSQL's
    # SIGTERM is a "smart" shutdown that waits for every client to disconnect; its SIGINT
    # is the "fast" one (rolls back open transactions, then exits cleanly).
    stop_signal: int = signal.SIGTERM
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            try:
                self.popen = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(self.env) if self.env is not None else None,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=functools.partial(_child_setup, self.nice, self.batch),
                    user=self.user,
                    group=_primary_group(self.user) if self.user else None,
                    extra_groups=[] if self.user else None,
                )
            except FileNotFoundError as exc:
                from sluicectl.errors import LaunchError

                raise LaunchError(f"{self.name}: cannot run {self.argv[0]!r} ({exc.strerror})") from None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after ``timeout``."""
        if self.popen is None:
            return
        pgid = self.popen.pid
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.popen.poll()
            if not group_alive(pgid):
                break
            time.sleep(0.1)
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def _primary_group(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


@dataclass(frozen=True)
class RestartPolicy:
    """When a component that exits is started again, as systemd's ``Restart=on-failure``
    with ``RestartSec`` doubling: the first restart after ``first_delay`` seconds, each quick
    exit after it waits twice as long up to ``max_delay``, and a run that lasted
    ``healthy_after`` seconds starts the count over.  ``crash_loop`` quick exits in a row are
    a crash loop: reported loudly, and still retried every ``max_delay`` seconds (a
    dependency may come back), never spun at full speed."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    healthy_after: float = 60.0
    crash_loop: int = 5

    def quick_exits(self, before: int, ran_for: float) -> int:
        """Quick exits in a row, counting the one that just ended a run of ``ran_for`` s."""
        return 1 if ran_for >= self.healthy_after else before + 1

    def delay(self, quick_exits: int) -> float:
        """Seconds to wait before the next start, after ``quick_exits`` quick exits in a row."""
        return min(self.max_delay, self.first_delay * 2 ** max(0, quick_exits - 1))

    def in_crash_loop(self, quick_exits: int) -> bool:
        return quick_exits >= self.crash_loop


def describe_exit(code: int) -> str:
    """``status 1``, or ``killed by SIGKILL`` for a process a signal ended (Popen's negative codes)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"status {code}"


def run_once(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float,
    user: str | None = None,
) -> None:
    """Run a preparation step to completion; a failure becomes a LaunchError with its tail."""
    from sluicectl.errors import LaunchError

    proc = Process(name, argv, log_path, env=env, cwd=cwd, user=user)
    proc.start()
    assert proc.popen is not None
    try:
        code = proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.stop(timeout=5)
        raise LaunchError(f"{name} did not finish within {timeout:.0f} s; see {log_path}") from None
    if code != 0:
        last = last_error(log_path)
        raise LaunchError(f"{name} failed (exit {code}): {last}  [full log: {log_path}]")
