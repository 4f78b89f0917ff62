"""Bring a set of components up in order, watch them, and take them all down again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.env import BASE_DIR, ConfigurationError, load_runtime
from sluicectl.components import ALL, Component, Context, platform_health
from sluicectl.errors import LaunchError
from sluicectl.private_state import make_state_dir, open_public_paths, refuse_open_state
from sluicectl.supervisor import Process, last_error

# Start order; stop is the reverse.  Only Redis and nginx are waited for before the next
# one starts: Kafka and the registry are JVMs that take a while, and migrations run
# meanwhile.  With
# web and nginx, the last wait reads /healthz, which covers the database, Kafka, the
# registry, the Celery worker and beat: "ready" means the whole platform answers.
ORDER = ("redis", "nginx", "kafka", "registry", "web", "ingest", "worker", "beat")
# nginx serves the CRLs the broker checks every TLS peer against, and the token-signing
# JWKS the broker's OAUTHBEARER listener fetches while it starts (Nginx.prepare creates
# the first signing key and publishes the JWKS), so it comes first.
WAIT_BEFORE_NEXT = {"redis", "nginx"}
PLATFORM_TIMEOUT = 90.0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    env["PYTHONPATH"] = f"{BASE_DIR}{os.pathsep}{BASE_DIR / 'platform'}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def make_context(env: dict[str, str]) -> Context:
    try:
        return Context(runtime=load_runtime(env), env=env)
    except ConfigurationError as exc:
        raise LaunchError(str(exc)) from None


def say(message: str) -> None:
    print(f"sluice: {message}", flush=True)


def state_file(ctx: Context) -> Path:
    return ctx.runtime.run_dir / "launcher.json"


def running_launcher(ctx: Context) -> int | None:
    """The pid of a live launcher for this state directory, if one is running."""
    path = state_file(ctx)
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"sluicectl" in cmdline else None


def check_ports_free(ctx: Context, components: Sequence[Component]) -> None:
    for component in components:
        for port_name in component.ports:
            port = getattr(ctx.runtime.ports, port_name)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # As the services themselves do: connections in TIME_WAIT from a previous
                # run must not count as "in use", only a live listener.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    variable = f"SLUICE_{port_name.upper()}_PORT"
                    raise LaunchError(
                        f"port {port} ({component.name}) is already in use; stop whatever holds it "
                        f"(ss -ltnp 'sport = :{port}') or choose another with "
                        f"{variable}= or SLUICE_PORT_OFFSET="
                    ) from None


@dataclass
class Launcher:
    ctx: Context
    names: Sequence[str]
    processes: dict[str, Process] = field(default_factory=dict)
    _stopping: bool = False

    @property
    def components(self) -> list[Component]:
        """The named components and what they require, in start order."""
        wanted = set(self.names)
        pending = list(wanted)
        while pending:
            for required in ALL[pending.pop()].requires:
                if required not in wanted:
                    wanted.add(required)
                    pending.append(required)
        return [ALL[name] for name in ORDER if name in wanted]

    def _write_state(self) -> None:
        path = state_file(self.ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "components": {n: p.pid for n, p in self.processes.items()},
                    "state_dir": str(self.ctx.runtime.state_dir),
                },
                indent=2,
            )
        )

    def _raise_if_died(self, component: Component) -> None:
        process = self.processes[component.name]
        code = process.exit_code()
        if code is not None:
            last = last_error(process.log_path)
            raise LaunchError(
                f"{component.name} exited with status {code} while starting: {last}  [log: {process.log_path}]"
            )

    def wait_healthy(self, component: Component) -> None:
        deadline = time.monotonic() + component.startup_timeout
        reason: str | None = "not checked yet"
        while time.monotonic() < deadline:
            self._raise_if_died(component)
            reason = component.check(self.ctx)
            if reason is None:
                component.after_healthy(self.ctx)
                return
            time.sleep(0.5)
        self._raise_if_died(component)
        raise LaunchError(
            f"{component.name} did not become healthy within {component.startup_timeout:.0f} s "
            f"(last check: {reason}); see {self.ctx.log(component.name)}"
        )

    def _start(self, component: Component) -> None:
        component.prepare(self.ctx)
        # What prepare created under umask 077 is private; the few public paths (CRLs, the
        # JWKS, static files, the web socket's directory) are opened here, before nginx needs them.
        open_public_paths(self.ctx.runtime)
        process = component.process(self.ctx)
        process.start()
        self.processes[component.name] = process
        self._write_state()

    def start(self) -> None:
        """Start everything in order and wait until each is healthy; on any failure stop
        what was started and raise."""
        rt = self.ctx.runtime
        # Before anything is started or written: state left open by an earlier version (or
        # by hand) stops the start with the command that fixes it.
        refuse_open_state(rt)
        make_state_dir(rt)
        for directory in (rt.logs_dir, rt.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        try:
            rt.ensure_secrets()
        except ConfigurationError as exc:
            raise LaunchError(str(exc)) from None
        other = running_launcher(self.ctx)
        if other is not None and other != os.getpid():
            raise LaunchError(
                f"Sluice is already running from {rt.state_dir} (pid {other}); stop it with: platform/bin/sluice down"
            )
        check_ports_free(self.ctx, self.components)
        self._write_state()
        started: list[Component] = []
        for component in self.components:
            say(f"starting {component.name}")
            self._start(component)
            started.append(component)
            if component.name in WAIT_BEFORE_NEXT:
                self.wait_healthy(component)
        for component in started:
            if component.name not in WAIT_BEFORE_NEXT:
                self.wait_healthy(component)
        if {"web", "ingest", "nginx", "worker", "beat"} <= {c.name for c in self.components}:
            self.wait_platform()

    def wait_platform(self) -> None:
        """Every part answers, as the web app sees it (its /healthz through nginx)."""
        deadline = time.monotonic() + PLATFORM_TIMEOUT
        reason: str | None = "not checked yet"
        while time.monotonic() < deadline:
            for component in self.components:
                self._raise_if_died(component)
            reason = platform_health(self.ctx)
            if reason is None:
                return
            time.sleep(0.5)
        raise LaunchError(
            f"the platform did not become healthy within {PLATFORM_TIMEOUT:.0f} s ({reason}); "
            f"see the logs in {self.ctx.runtime.logs_dir}"
        )

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for name in reversed(ORDER):
            process = self.processes.get(name)
            if process is None:
                continue
            if process.running():
                say(f"stopping {name}")
            process.stop(timeout=ALL[name].stop_timeout)
        with contextlib.suppress(OSError):
            state_file(self.ctx).unlink()

    def watch(self) -> None:
        """Block until a signal or until a component dies (then raise)."""
        while True:
            for name, process in self.processes.items():
                code = process.exit_code()
                if code is not None:
                    last = last_error(process.log_path)
                    raise LaunchError(
                        f"{name} exited unexpectedly with status {code}: {last}  [log: {process.log_path}]"
                    )
            time.sleep(1)


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the launcher."""


def install_signal_handlers() -> None:
    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
