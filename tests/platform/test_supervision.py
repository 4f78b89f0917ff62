"""A component that exits is started again, with a growing pause, while the rest keeps
running; the restart shows in ``sluice status``, in the state file and in the launcher's
output; a crash loop is reported loudly and never spun at full speed."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.env import BASE_DIR, load_runtime
from sluicectl import launcher as launcher_module
from sluicectl.components import Component, Context
from sluicectl.launcher import RESTARTING, RUNNING, Launcher, make_context, state_file
from sluicectl.supervisor import Process, RestartPolicy, describe_exit
from tests.platform.test_launcher import SLUICECTL, launcher_env, run_sluicectl

# Beside this run's own ports (test_launcher_state uses +600, the full run +500).
BASE = int(os.environ.get("SLUICE_PORT_OFFSET", "10000")) + 800


# -- the policy (pure) ------------------------------------------------------------------------


def test_the_pause_doubles_from_one_second_to_thirty_and_a_long_run_starts_it_over() -> None:
    policy = RestartPolicy()
    # given a component that keeps exiting right after its start
    exits, pauses = 0, []
    for _ in range(8):
        exits = policy.quick_exits(exits, ran_for=2.0)
        pauses.append(policy.delay(exits))
    # then the pause doubles up to its cap, and five quick exits in a row are a crash loop
    assert pauses == [1, 2, 4, 8, 16, 30, 30, 30]
    assert [policy.in_crash_loop(n) for n in (4, 5)] == [False, True]
    # when it then ran a healthy minute before it exited, the count starts over
    assert policy.quick_exits(exits, ran_for=60.0) == 1
    assert policy.delay(1) == 1


def test_exits_are_described_as_a_person_reads_them() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "status 3"


def test_the_console_runs_below_the_data_plane_under_sched_batch(tmp_path: Path) -> None:
    from sluicectl.components import BACKGROUND_NICE, WEB_NICE, CeleryWorker, Ingest, Web

    # given the launcher's context for the platform's components
    ctx = make_context({**os.environ, "SLUICE_STATE_DIR": str(tmp_path / "state")})
    # then the console and REST API are disfavoured most, Celery less, the data plane not at all
    web, worker, ingest = Web().process(ctx), CeleryWorker().process(ctx), Ingest().process(ctx)
    assert (web.nice, web.batch) == (WEB_NICE, True)
    assert (worker.nice, worker.batch) == (BACKGROUND_NICE, False)
    assert (ingest.nice, ingest.batch) == (0, False)
    assert 0 < BACKGROUND_NICE < WEB_NICE

    # and a process started so really runs at that nice under SCHED_BATCH
    probe = "import os; print(os.sched_getscheduler(0) == os.SCHED_BATCH, os.nice(0))"
    proc = Process("probe", ["python3", "-c", probe], tmp_path / "probe.log", nice=WEB_NICE, batch=True)
    proc.start()
    assert proc.popen is not None
    proc.popen.wait(timeout=30)
    base = os.nice(0)
    assert (tmp_path / "probe.log").read_text().splitlines()[-1] == f"True {min(base + WEB_NICE, 19)}"


# -- the launcher's loop, with a command that always fails ------------------------------------


class AlwaysFails(Component):
    name = "always-fails"

    def process(self, ctx: Context) -> Process:
        return Process(self.name, ["sh", "-c", "echo 'Error: no configuration'; exit 3"], ctx.log(self.name))

    def check(self, ctx: Context) -> str | None:
        return None


def test_a_crash_loop_is_reported_loudly_and_retried_at_the_capped_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a launcher supervising a component that exits at once, every time (fast pauses)
    component = AlwaysFails()
    monkeypatch.setitem(launcher_module.ALL, component.name, component)
    ctx = make_context(launcher_env(tmp_path, BASE))
    ctx.runtime.run_dir.mkdir(parents=True)
    ctx.runtime.logs_dir.mkdir(parents=True)
    launcher = Launcher(ctx, [], policy=RestartPolicy(first_delay=0.1, max_delay=0.4, crash_loop=4))
    launcher._claim()
    launcher._start(component)
    starts: list[float] = []
    try:
        # when it is watched for a few seconds
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            before = launcher.supervised[component.name].restarts
            launcher.supervise_once()
            if launcher.supervised[component.name].restarts > before:
                starts.append(time.monotonic())
            time.sleep(0.02)
        recorded = json.loads(state_file(ctx).read_text())["supervision"][component.name]
    finally:
        launcher.stop()

    # then it was started again and again, never faster than the pause allows (0.1, 0.2,
    # 0.4, 0.4 ... s), so a few seconds hold a handful of starts, not thousands
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 5 <= len(starts) <= 15, starts
    assert all(gap >= 0.2 for gap in gaps[1:]), gaps
    # and the state file says so, with its last exit and the reason from its log
    assert recorded["restarts"] == len(starts)
    assert recorded["crash_loop"] is True
    assert recorded["last_exit"].startswith("status 3 at ")
    assert recorded["last_error"] == "Error: no configuration"
    assert recorded["state"] in (RESTARTING, "starting")
    # and the launcher said it loudly, naming the log
    out = capsys.readouterr().out
    assert "sluice: always-fails exited unexpectedly, status 3 at" in out
    assert "CRASH LOOP: always-fails exited 4 times in a row" in out
    assert str(ctx.log(component.name)) in out


# -- a real component, killed under a running launcher ----------------------------------------


@pytest.fixture
def redis_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], list[str]]]:
    env = launcher_env(tmp_path, BASE + 50)
    proc = subprocess.Popen([*SLUICECTL, "up", "--components", "redis"], env=env, cwd=BASE_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "ready in" in line:
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(90):
            pytest.fail("the launcher never became ready:\n" + "".join(lines))
        yield proc, env, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _supervision(env: dict[str, str]) -> dict[str, dict[str, object]]:
    return json.loads(state_file(make_context(env)).read_text())["supervision"]


def test_a_killed_component_is_restarted_and_status_tells_it(
    redis_up: tuple[subprocess.Popen[str], dict[str, str], list[str]],
) -> None:
    proc, env, lines = redis_up
    first_pid = _supervision(env)["redis"]["pid"]
    assert isinstance(first_pid, int)

    # when Redis is killed outright
    os.kill(first_pid, signal.SIGKILL)

    # then the launcher starts it again within a few seconds, under a new pid, and stays up
    deadline = time.monotonic() + 20
    seen = _supervision(env)["redis"]
    while time.monotonic() < deadline and not (seen["restarts"] == 1 and seen["state"] == RUNNING):
        time.sleep(0.2)
        seen = _supervision(env)["redis"]
    assert seen["restarts"] == 1, seen
    assert seen["state"] == RUNNING, seen
    assert seen["pid"] != first_pid
    assert str(seen["last_exit"]).startswith("killed by SIGKILL at ")
    assert proc.poll() is None
    client = redis.Redis.from_url(load_runtime(env).redis_url(), socket_timeout=2)
    assert client.ping()

    # and `sluice status` reports it ok, with its restart and last exit
    status = run_sluicectl(["status"], env)
    assert status.returncode == 0, status.stdout
    assert f"redis     pid {seen['pid']}" in status.stdout
    assert "1 restart(s), last exit: killed by SIGKILL" in status.stdout
    # and the launcher's output said what happened
    said = "".join(lines)
    assert "sluice: redis exited unexpectedly, killed by SIGKILL" in said
    assert "restarting it in 1 s, the rest keeps running" in said
    assert "sluice: redis is back" in said


# -- readiness probes on ports in the kernel's ephemeral range ---------------------------------


def _self_connected() -> socket.socket:
    """A TCP connection whose two ends are the same socket: what a probe of a port in the
    ephemeral range with nothing listening can get (TCP simultaneous open with itself)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.connect(sock.getsockname())
    return sock


def test_a_probe_that_meets_itself_is_not_a_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluicectl import components

    # given connections that land on themselves, as a not-yet-listening port can give
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: _self_connected())
    # then the port does not count as open
    assert components.tcp_open(1) is False
    # and an HTTP probe that reads its own request back says nothing answers HTTP there (an
    # OSError, which every readiness check takes as "not yet"), instead of failing the start
    monkeypatch.setattr(http.client.HTTPConnection, "connect", lambda self: setattr(self, "sock", _self_connected()))
    with pytest.raises(OSError, match="no HTTP answer"):
        components.http_get("http://127.0.0.1:1/health/ready")


def test_a_signal_that_arrives_while_the_launcher_logs_a_line_still_stops_it(tmp_path: Path) -> None:
    """``logging`` hands any Exception raised in a handler's emit to ``handleError`` (which
    prints "Logging error" and goes on).  The signal that stops the launcher must not be one:
    the CI once saw ``sluice up`` ignore the Ctrl-C that came while it wrote "press Ctrl-C"
    to its log, and run on for ever (its handlers ignore any signal after the first)."""
    import logging

    from sluicectl.launcher import Interrupted, install_signal_handlers

    class SignalledWhileWriting:
        def write(self, _text: str) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before write returns

        def flush(self) -> None:
            pass

    logger = logging.getLogger("sluice.test.interrupted")
    logger.propagate = False
    handler = logging.StreamHandler(SignalledWhileWriting())  # type: ignore[arg-type]
    logger.addHandler(handler)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        install_signal_handlers()
        # when the signal arrives in the middle of a log line, then it still ends the launcher
        with pytest.raises(Interrupted):
            logger.warning("press Ctrl-C to stop everything")
    finally:
        logger.removeHandler(handler)
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
