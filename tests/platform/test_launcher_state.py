"""A state directory belongs to the one launcher that runs on it.  A second ``sluice up`` --
on the same state directory, or on another one whose ports collide -- is refused or fails
without touching the running launcher's state, so ``status`` and ``down`` keep telling and
doing the truth; and a run writes nothing into the checkout outside ``var/`` and ``.venv/``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.env import BASE_DIR
from sluicectl import fetch
from sluicectl.errors import LaunchError
from sluicectl.launcher import Launcher, child_env, lock_file, make_context, state_file
from tests.platform.test_launcher import read_until

SLUICECTL = [sys.executable, "-m", "sluicectl"]
REDIS_PORT = 6379
# Port offsets beside this run's own (other checkouts' test runs use other offsets).
BASE = int(os.environ.get("SLUICE_PORT_OFFSET", "10000")) + 600


def launcher_env(state: Path, offset: int) -> dict[str, str]:
    return child_env({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(state), "SLUICE_PORT_OFFSET": str(offset)})


def sluice(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SLUICECTL, *args], env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=timeout, check=False
    )


class Up:
    """``sluice up --components redis`` (the quickest part to start) in the background."""

    def __init__(self, state: Path, offset: int) -> None:
        self.state = state
        self.env = launcher_env(state, offset)
        self.proc = subprocess.Popen(
            [*SLUICECTL, "up", "--components", "redis"],
            env=self.env,
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            read_until(self.proc, "ready in", timeout=90)
        except BaseException:
            self.kill()
            raise

    @property
    def state_file(self) -> Path:
        return state_file(make_context(self.env))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def first(tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path / "first", BASE)
    yield up
    up.kill()


def assert_running(up: Up) -> None:
    status = sluice(["status"], up.env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"launcher pid {up.proc.pid}" in status.stdout
    assert "redis" in status.stdout
    assert "ok" in status.stdout


def test_a_second_up_on_the_same_state_directory_leaves_the_first_in_charge(first: Up) -> None:
    # given a running launcher and its state file
    recorded = first.state_file.read_text()
    assert json.loads(recorded)["pid"] == first.proc.pid

    # when a second `up` is started on the same state directory
    second = sluice(["up", "--components", "redis"], first.env, timeout=60)

    # then it is refused in one line
    assert second.returncode == 1
    assert f"Sluice is already running from {first.state} (pid {first.proc.pid})" in second.stdout
    assert "Traceback" not in second.stdout + second.stderr
    # and the first launcher's state is as it was: status still sees it, and down stops it
    assert first.state_file.read_text() == recorded
    assert_running(first)
    down = sluice(["down"], first.env)
    assert down.returncode == 0
    assert "stopped" in down.stdout
    assert first.proc.wait(timeout=60) == 0
    assert sluice(["status"], first.env).returncode == 1
    assert not first.state_file.exists()


def test_a_second_up_on_another_state_directory_is_its_own(first: Up, tmp_path: Path) -> None:
    # given a running launcher
    recorded = first.state_file.read_text()
    other_state = tmp_path / "other"

    # when another state directory is started on the same ports, then it fails on the port
    clash = sluice(["up", "--components", "redis"], launcher_env(other_state, BASE), timeout=60)
    assert clash.returncode == 1
    assert f"port {REDIS_PORT + BASE} (redis) is already in use" in clash.stdout
    # and it left no state of its own behind, and did not touch the first's
    assert not state_file(make_context(launcher_env(other_state, BASE))).exists()
    status = sluice(["status"], launcher_env(other_state, BASE))
    assert status.returncode == 1
    assert f"not running (state: {other_state})" in status.stdout
    assert first.state_file.read_text() == recorded
    assert_running(first)

    # when another state directory is started on its own ports, it runs beside the first
    second = Up(other_state, BASE + 50)
    try:
        assert_running(second)
        assert_running(first)
        # and `down` on it stops it alone
        assert sluice(["down"], second.env).returncode == 0
        assert second.proc.wait(timeout=60) == 0
        assert sluice(["status"], second.env).returncode == 1
        assert_running(first)
        assert first.state_file.read_text() == recorded
    finally:
        second.kill()


def test_a_failed_start_cleans_up_its_own_state_and_nothing_else(tmp_path: Path) -> None:
    # given a state directory whose Redis port is taken by something else
    env = launcher_env(tmp_path / "state", BASE + 100)
    port = REDIS_PORT + BASE + 100
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        # when the platform is started, then it fails in one line
        result = sluice(["up", "--components", "redis"], env, timeout=60)
    assert result.returncode == 1
    assert f"port {port} (redis) is already in use" in result.stdout
    # and status and down say what is true: nothing runs
    ctx = make_context(env)
    assert not state_file(ctx).exists()
    status = sluice(["status"], env)
    assert status.returncode == 1
    assert "not running" in status.stdout
    down = sluice(["down"], env)
    assert down.returncode == 0
    assert "not running" in down.stdout
    # and the state directory is free for the next start
    after = Up(tmp_path / "state", BASE + 100)
    try:
        assert_running(after)
    finally:
        after.kill()


def test_two_launchers_cannot_both_own_a_state_directory(tmp_path: Path) -> None:
    # given a launcher that owns a state directory (no components: just the ownership)
    ctx = make_context(launcher_env(tmp_path, BASE + 150))
    owner = Launcher(ctx, [])
    owner.start()
    try:
        recorded = state_file(ctx).read_text()
        # when a second launcher in this very process tries it (a pid check cannot tell them
        # apart; the lock can), then it is refused, and its clean-up removes nothing
        intruder = Launcher(ctx, [])
        with pytest.raises(LaunchError, match="already running"):
            intruder.start()
        intruder.stop()
        assert state_file(ctx).read_text() == recorded
    finally:
        owner.stop()
    # and once the owner has stopped, its state file is gone and the directory is free again
    assert not state_file(ctx).exists()
    assert lock_file(ctx).exists()
    again = Launcher(ctx, [])
    again.start()
    again.stop()


def checkout_state() -> list[str]:
    """What git sees in the checkout (untracked and ignored too), less ``var/`` and the
    virtualenv, and Python's own bytecode caches (``__pycache__``, written by any import)."""
    listing = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return sorted(
        line
        for line in listing
        if not line[3:].startswith(("var/", ".venv")) and "__pycache__/" not in line and "/.pytest_cache/" not in line
    )


def test_a_run_writes_nothing_into_the_checkout_outside_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given the checkout as git sees it, and the launcher working from it
    monkeypatch.chdir(BASE_DIR)
    before = checkout_state()
    # when the Kafka jars are fetched afresh with the real mvn (the POM run with -f), an
    # artifact is unpacked (Maven without a project), and a launcher starts and stops
    dist = tmp_path / "dist"
    runtime = make_context(launcher_env(tmp_path / "state", BASE + 200) | {"SLUICE_DIST_DIR": str(dist)}).runtime
    libs = fetch.kafka_libs(runtime)
    fetch.unpack("io.netty:netty-transport-native-epoll:4.1.136.Final:jar:linux-x86_64", dist / "epoll", "a test jar")
    up = Up(tmp_path / "state", BASE + 200)
    up.kill()
    assert up.proc.returncode == 0
    # then the jars are where asked, and the checkout is as it was: no ${project.basedir}/,
    # no target/ beside the POM
    assert any(path.name.startswith("kafka_2.13-") for path in libs.iterdir())
    assert checkout_state() == before
    assert not (BASE_DIR / "${project.basedir}").exists()
    assert not (BASE_DIR / "platform" / "kafka" / "target").exists()
    shutil.rmtree(dist, ignore_errors=True)
