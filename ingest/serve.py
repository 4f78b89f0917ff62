"""``python -m ingest.serve``: the data plane's worker processes, each on a socket of its own.

nginx hashes every device onto one of these sockets (see platform/nginx/nginx.conf.in), so
a device's requests meet the same worker and its rate-limit bucket stays in that worker's
memory (ingest.ratelimit).  This small supervisor starts ``SLUICE_INGEST_WORKERS`` ASGI
server processes, one worker each (uvicorn with uvloop and httptools by default, or granian:
``SLUICE_INGEST_SERVER``; the README's benchmark section compares them), and restarts any
that exits, with a growing pause, while the others keep serving: nothing dies alone,
nothing dies for all.
It stops them all on SIGTERM or SIGINT, and they stop with it if it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from config.env import BASE_DIR, load_runtime
from config.instruments import process_dead
from config.logs import JsonFormatter

PR_SET_PDEATHSIG = 1
MAX_PAUSE = 30.0
log = logging.getLogger("sluice.ingest.serve")


APPLICATION = "config.asgi:application"


def server_argv(socket: Path, app: str = APPLICATION, server: str = "uvicorn") -> list[str]:
    """One ASGI server process on ``socket`` serving ``app`` (the one place the ingest
    server is chosen: ``SLUICE_INGEST_SERVER``; the benchmark's floor runs the same command
    with a do-nothing app).  Both are spelled out fully so a missing extra fails at start
    instead of serving on a slower loop or parser; no access log (nginx keeps one)."""
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", "--uds", str(socket),
            "--uds-permissions", "438", "--workers", "1", "--loop", "uvloop", "--runtime-mode", "st",
            "--http", "1", "--no-ws", "--no-access-log", "--log-level", "warning", app,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "uvicorn", app,
        "--uds", str(socket), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools", "--lifespan", "on",
        "--no-access-log", "--no-server-header", "--log-level", "warning",
    ]  # fmt: skip


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, sockets: list[Path], app: str = APPLICATION, server: str = "uvicorn") -> None:
        self.sockets = sockets
        self.app = app
        self.server = server
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.failures = [0] * len(sockets)
        self.stopping = False

    def start(self, index: int) -> None:
        self.sockets[index].unlink(missing_ok=True)
        self.children[index] = subprocess.Popen(
            server_argv(self.sockets[index], self.app, self.server), cwd=BASE_DIR, preexec_fn=_die_with_parent
        )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(len(self.sockets)):
            self.start(index)
        started = {index: time.monotonic() for index in self.children}
        while not self.stopping:
            time.sleep(0.2)
            for index, child in list(self.children.items()):
                code = child.poll()
                if code is None or self.stopping:
                    continue
                # Its producer queue no longer counts in the node's sum (its counters do).
                process_dead(child.pid)
                # A worker that ran a while before it died starts over with a short pause.
                if time.monotonic() - started[index] > 60:
                    self.failures[index] = 0
                self.failures[index] += 1
                pause = min(MAX_PAUSE, 0.5 * 2 ** (self.failures[index] - 1))
                log.warning("ingest worker %d exited (%s); restarting in %.1f s", index, code, pause,
                            extra={"worker": index, "exit_status": code})  # fmt: skip
                time.sleep(pause)
                self.start(index)
                started[index] = time.monotonic()
        for child in self.children.values():
            child.terminate()
        deadline = time.monotonic() + 15
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        # Nothing listens on them any more; a stopped platform leaves no socket behind.
        for socket in self.sockets:
            socket.unlink(missing_ok=True)
        return 0

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("app", nargs="?", default=APPLICATION, help=f"the ASGI application (default {APPLICATION})")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()  # stderr, which the launcher appends to <state>/logs/ingest.log
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    runtime = load_runtime()
    os.chdir(BASE_DIR)
    sockets = [runtime.ingest_socket(i) for i in range(runtime.ingest.workers)]
    return Supervisor(sockets, args.app, runtime.ingest.server).run()


if __name__ == "__main__":
    sys.exit(main())
