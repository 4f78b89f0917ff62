"""The floor: the platform's own nginx configuration in front of a do-nothing ASGI app
(``bench/noop_app.py``) under the platform's own ASGI server command, on ports and sockets
of its own.

Nothing is copied from the launcher: its ``Nginx.prepare`` computes the template's values
(with ``render`` intercepted, so the platform's files are left alone), and the values that
name where the platform writes (its run, log and nginx directories, its ports) are moved to
the floor's; certificates, the trust bundle, CRLs and the proxy secret stay the platform's,
so devices' certificates are verified exactly as on the platform.  The ASGI server is each
server component's own ``process()`` command (``web`` today; any component whose name
contains ``ingest`` too, should the data plane get its own workers) with the application
swapped for the no-op one: change the server, its options or its worker count in
``platform/sluicectl/components.py`` and the floor follows.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from bench.ingestbench.windows import LogWatch

NOOP_APP = "bench.noop_app:app"
APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def asgi_components(names: list[str], chosen: list[str] | None = None) -> list[str]:
    """The components that serve HTTP behind nginx: ``chosen`` if given, else ``web`` and
    any ``*ingest*``."""
    if chosen:
        missing = set(chosen) - set(names)
        if missing:
            raise RuntimeError(f"no component(s) {', '.join(sorted(missing))}; the launcher has {', '.join(names)}")
        return list(chosen)
    return [n for n in names if n == "web" or "ingest" in n]


class Floor:
    def __init__(
        self,
        platform_env: dict[str, str],
        state: Path,
        offset: int,
        servers: list[str] | None = None,
        *,
        app: str = NOOP_APP,
        app_env: dict[str, str] | None = None,
    ) -> None:
        self.platform_env = platform_env
        self.app = app
        self.app_env = app_env or {}
        self.servers = servers
        self.state = state
        self.offset = offset
        self.processes: dict[str, Any] = {}
        self.port = 0
        self.argv: dict[str, list[str]] = {}

    def start(self) -> None:
        from sluicectl import components
        from sluicectl.launcher import child_env, make_context
        from sluicectl.supervisor import Process

        names = ("SLUICE_STATE_DIR", "SLUICE_PORT_OFFSET")
        platform = make_context(child_env({k: self.platform_env[k] for k in names}))
        floor = make_context(child_env({"SLUICE_STATE_DIR": str(self.state), "SLUICE_PORT_OFFSET": str(self.offset)}))
        self.port = floor.runtime.ports.web
        template, target, mode, values = _nginx_values(components, platform)
        moves = _moves(platform.runtime, floor.runtime)
        for source, destination in moves:
            if source.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
        for sub in (platform.runtime.state_dir / "nginx" / "tmp").iterdir():
            (floor.runtime.state_dir / "nginx" / "tmp" / sub.name).mkdir(parents=True, exist_ok=True)
        floor.runtime.run_dir.mkdir(parents=True, exist_ok=True)
        floor.runtime.public_socket_dir.mkdir(parents=True, exist_ok=True)
        # As the launcher's public paths (sluicectl.private_state): nginx's workers reach the sockets.
        os.chmod(floor.runtime.state_dir, 0o711)  # noqa: S103
        os.chmod(floor.runtime.public_socket_dir, 0o755)  # noqa: S103
        floor_values = {
            key: _move(value, moves, platform.runtime.ports.named(), floor.runtime.ports.named())
            for key, value in values.items()
        }
        components.render(template, _move(target, moves, {}, {}), mode=mode, **floor_values)
        for name in asgi_components(list(components.ALL), self.servers):
            spec = components.ALL[name].process(floor)
            argv = [self.app if APP_SPEC.match(arg) else arg for arg in spec.argv]
            if argv.count(self.app) != 1:
                raise RuntimeError(f"cannot find the application in the {name} command: {spec.argv}")
            env = {**(spec.env or os.environ), **self.app_env}
            self.argv[name] = argv
            self.processes[f"floor {name}"] = Process(
                f"floor-{name}", argv, floor.log(f"floor-{name}"), env=env, cwd=spec.cwd
            )
        nginx = components.ALL["nginx"].process(floor)
        self.argv["nginx"] = list(nginx.argv)
        self.processes["floor nginx"] = nginx
        for process in self.processes.values():
            process.start()
        self._wait(components, floor)
        self.logs = LogWatch(
            "floor", floor.runtime.logs_dir / "nginx-access.log", floor.runtime.logs_dir / "nginx-error.log"
        )

    def _wait(self, components: Any, floor: Any, timeout: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        pending = [n for n in components.ALL if f"floor {n}" in self.processes]
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                code = self.processes[f"floor {name}"].exit_code()
                if code is not None:
                    raise RuntimeError(f"floor {name} exited with {code}; see {floor.log(f'floor-{name}')}")
                if components.ALL[name].check(floor) is None:
                    pending.remove(name)
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"floor components never became ready: {pending}")

    def pid_groups(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items() if process.pid}

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop(timeout=10)
        shutil.rmtree(self.state, ignore_errors=True)


def _nginx_values(components: Any, platform: Any) -> tuple[Path, Path, int, dict[str, Any]]:
    """The template, target, mode and values the launcher renders nginx.conf with."""
    captured: list[tuple[Path, Path, int, dict[str, Any]]] = []

    def capture(template: Path, target: Path, mode: int = 0o644, **values: Any) -> None:
        captured.append((template, target, mode, values))

    original = components.render
    components.render = capture
    try:
        components.ALL["nginx"].prepare(platform)
    finally:
        components.render = original
    found = [c for c in captured if c[1].name == "nginx.conf"]
    if len(found) != 1:
        raise RuntimeError(f"Nginx.prepare rendered {[str(c[1]) for c in captured]}, not one nginx.conf")
    return found[0]


def _moves(platform: Any, floor: Any) -> list[tuple[Path, Path]]:
    """Where the platform writes -> where the floor writes."""
    return [
        (platform.run_dir, floor.run_dir),
        (platform.public_socket_dir, floor.public_socket_dir),
        (platform.logs_dir, floor.logs_dir),
        (platform.state_dir / "nginx", floor.state_dir / "nginx"),
    ]


def _move(value: Any, moves: list[tuple[Path, Path]], ports: dict[str, int], floor_ports: dict[str, int]) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        for name, port in ports.items():
            if value == port:
                return floor_ports[name]
        return value
    if isinstance(value, Path):
        text = str(value)
        for source, destination in moves:
            if text == str(source) or text.startswith(str(source) + os.sep):
                return Path(str(destination) + text[len(str(source)) :])
    if isinstance(value, str):
        # Strings may hold paths anywhere (e.g. nginx's upstream lines "server unix:<path>;").
        for source, destination in moves:
            if value == str(source):
                return str(destination)
            value = value.replace(str(source) + os.sep, str(destination) + os.sep)
    return value
