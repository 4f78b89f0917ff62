"""The launcher as a user meets it: it starts, reports, refuses clearly, and stops its
whole process tree."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from config.env import BASE_DIR
from ingest.kafka import admin_config
from sluicectl.components import Component, Context
from sluicectl.errors import LaunchError
from sluicectl.launcher import Launcher, child_env, make_context
from sluicectl.supervisor import Process

SLUICECTL = [sys.executable, "-m", "sluicectl"]


def launcher_env(state: Path, offset: int, **extra: str) -> dict[str, str]:
    return child_env({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(state), "SLUICE_PORT_OFFSET": str(offset), **extra})


def run_sluicectl(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SLUICECTL, *args], env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=timeout, check=False
    )


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """What the launcher printed up to the line with ``marker`` (and whatever came in the same
    read).  Read from the file descriptor itself: a buffered ``readline`` after ``select`` can
    leave lines that arrived together in its buffer, where ``select`` never sees them."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk and proc.poll() is not None:
                break
            seen += chunk.decode(errors="replace")
            if marker in seen:
                return seen
    pytest.fail(f"launcher never printed {marker!r}; it printed:\n{seen}")


@pytest.fixture
def running_platform(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    env = launcher_env(tmp_path, 22000, SLUICE_WORKER_CONCURRENCY="2")
    proc = subprocess.Popen(
        [*SLUICECTL, "up", "--components", "redis,worker,beat"],
        env=env,
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    read_until(proc, "ready in", timeout=90)
    yield proc, env
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_ctrl_c_stops_the_whole_process_tree(running_platform: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    # given a running launcher with Redis and a prefork Celery worker (which has children)
    proc, env = running_platform
    deadline = time.monotonic() + 60
    tree = psutil.Process(proc.pid).children(recursive=True)
    while len(tree) < 4 and time.monotonic() < deadline:  # the worker forks its pool after boot
        time.sleep(0.5)
        tree = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "redis-server" in names
    assert "celery" in names
    assert len(tree) >= 4, names  # redis, worker + its pool processes, beat
    # and the data plane's parts run at the launcher's priority, the background ones below it
    from sluicectl.components import BACKGROUND_NICE

    base = psutil.Process(proc.pid).nice()
    nices = {" ".join(p.cmdline()[:4]): p.nice() for p in tree}
    assert all(n == base for c, n in nices.items() if "redis-server" in c), nices
    assert all(n == base + BACKGROUND_NICE for c, n in nices.items() if "celery" in c), nices

    # and status reports each component
    status = run_sluicectl(["status"], env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "redis" in status.stdout
    assert "ok" in status.stdout

    # when a second launcher is started on the same state, then it refuses
    second = run_sluicectl(["up", "--components", "redis"], env, timeout=60)
    assert second.returncode == 1
    assert "already running" in second.stdout
    assert "Traceback" not in second.stdout + second.stderr

    # when Ctrl-C reaches the launcher
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0

    # then every process it started is gone
    survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == []
    assert run_sluicectl(["status"], env).returncode == 1


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    env = launcher_env(tmp_path, 23000)
    port = 6379 + 23000
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = run_sluicectl(["up", "--components", "redis"], env, timeout=60)
    assert result.returncode == 1
    assert f"port {port} (redis) is already in use" in result.stdout
    assert "SLUICE_REDIS_PORT" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unusable_state_directory_is_one_clear_line(tmp_path: Path) -> None:
    # given a state directory that cannot be created (a file is in the way)
    (tmp_path / "file").write_text("not a directory")
    env = launcher_env(tmp_path / "file" / "state", 23050)
    # when the platform is started, then one line names the path and nothing hangs
    result = run_sluicectl(["up", "--components", "redis"], env, timeout=60)
    assert result.returncode == 1
    assert "up failed: Not a directory" in result.stdout, result.stdout + result.stderr
    assert str(tmp_path / "file") in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import sluicectl.__main__ as cli

    def broken(_args: object) -> int:
        raise RuntimeError("redis answered garbage")

    monkeypatch.setattr(cli, "cmd_status", broken)
    monkeypatch.delenv("SLUICE_DEBUG", raising=False)
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().out == (
        "sluice: status failed unexpectedly: RuntimeError: redis answered garbage (SLUICE_DEBUG=1 shows the trace)\n"
    )
    monkeypatch.setenv("SLUICE_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["status"])


def test_missing_maven_is_named(tmp_path: Path) -> None:
    # given a machine whose PATH has no mvn, and no jars fetched yet
    env = launcher_env(tmp_path / "state", 23100, SLUICE_DIST_DIR=str(tmp_path / "dist"))
    env["PATH"] = str(Path(sys.executable).parent)
    result = run_sluicectl(["up", "--components", "kafka"], env, timeout=60)
    assert result.returncode == 1
    assert "Maven (mvn) is not installed; install it with: apt-get install maven" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_configured_java_is_named(tmp_path: Path) -> None:
    env = launcher_env(tmp_path, 23200, SLUICE_KAFKA_JAVA="/nonexistent/bin/java")
    result = run_sluicectl(["up", "--components", "kafka"], env, timeout=120)
    assert result.returncode == 1
    assert "the configured Java /nonexistent/bin/java does not exist" in result.stdout


def test_a_component_that_dies_at_start_is_reported_with_its_reason(tmp_path: Path) -> None:
    # given a registry JVM that cannot start (a heap too small to boot)
    env = launcher_env(tmp_path, 23300, SLUICE_REGISTRY_HEAP="1k")
    started = time.monotonic()
    result = run_sluicectl(["up", "--components", "registry"], env, timeout=120)
    # then one line says which component, its exit status and the JVM's own reason
    assert result.returncode == 1
    assert "registry exited with status 1 while starting: Error occurred during initialization of VM" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert time.monotonic() - started < 60


class NeverHealthy(Component):
    name = "never"
    startup_timeout = 1.5

    def process(self, ctx: Context) -> Process:
        return Process(self.name, ["sleep", "30"], ctx.log(self.name))

    def check(self, ctx: Context) -> str | None:
        return "still warming up"


def test_a_component_that_never_becomes_healthy_times_out(tmp_path: Path) -> None:
    ctx = make_context(launcher_env(tmp_path, 23400))
    launcher = Launcher(ctx, [])
    component = NeverHealthy()
    process = component.process(ctx)
    process.start()
    launcher.processes[component.name] = process
    try:
        with pytest.raises(
            LaunchError, match=r"never did not become healthy within 2 s \(last check: still warming up\)"
        ):
            launcher.wait_healthy(component)
    finally:
        process.stop(timeout=5)
    assert not process.running()


def test_kafka_storage_is_formatted_once_and_kept(tmp_path: Path) -> None:
    # given Kafka started by the launcher on a fresh state directory, with a topic
    ctx = make_context(launcher_env(tmp_path, 24000))
    topic = "iot.keep.eu.raw"
    first = Launcher(ctx, ["kafka"])
    first.start()
    try:
        cluster_id = (tmp_path / "kafka" / "cluster-id").read_text()
        admin = AdminClient(admin_config(ctx.runtime))
        admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    finally:
        first.stop()
    meta = (ctx.runtime.kafka_data_dir / "meta.properties").read_text()

    # when it is started again
    second = Launcher(ctx, ["kafka"])
    second.start()
    try:
        # then the storage was not formatted again and the topic is still there
        assert (tmp_path / "kafka" / "cluster-id").read_text() == cluster_id
        assert (ctx.runtime.kafka_data_dir / "meta.properties").read_text() == meta
        topics = AdminClient(admin_config(ctx.runtime)).list_topics(timeout=10).topics
        assert len(topics[topic].partitions) == 2
    finally:
        second.stop()
    assert os.listdir(ctx.runtime.logs_dir)


def test_production_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    # given a production environment that sets no key-encryption key (nor other secrets)
    env = launcher_env(tmp_path, 23500, SLUICE_ENV="production")
    for name in ("SLUICE_KEK", "SLUICE_SECRET_KEY", "SLUICE_REDIS_PASSWORD", "SLUICE_PROXY_SECRET"):
        env.pop(name, None)
    # when the platform is started, then it refuses in one line and invents nothing
    result = run_sluicectl(["up", "--components", "redis"], env, timeout=60)
    assert result.returncode == 1
    assert "must be set when SLUICE_ENV=production" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "secrets").exists()


def test_pytest_options_pass_through_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import sluicectl.__main__ as cli

    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "cmd_test", lambda args: seen.append(args.pytest_args) or 0)
    cli.main(["test", "-k", "kafka", "-x"])
    cli.main(["test", "--no-lint", "tests/devices", "-q"])
    assert seen == [["-k", "kafka", "-x"], ["tests/devices", "-q"]]
    with pytest.raises(SystemExit):
        cli.main(["status", "-x"])


def test_a_registry_socket_path_too_long_is_one_clear_line(tmp_path: Path) -> None:
    # given a state directory so deep that the registry's socket path cannot fit a sockaddr_un
    state = tmp_path / ("d" * 60) / ("e" * 60)
    # when the registry is started, then one line says so before any JVM starts
    result = run_sluicectl(["up", "--components", "registry"], launcher_env(state, 23700), timeout=120)
    assert result.returncode == 1
    assert f"the registry's socket path {state / 'run' / 'registry.sock'} is longer than" in result.stdout
    assert "choose a shorter SLUICE_STATE_DIR" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_the_test_command_runs_sqlite_then_postgresql_on_the_database_tests() -> None:
    from sluicectl.__main__ import POSTGRES_ONLY, POSTGRES_PASS, POSTGRES_PASS_IGNORES, test_passes

    # given no test named, then SQLite runs all but the PostgreSQL-only tests, PostgreSQL its
    # share without the tests that start platforms of their own
    assert test_passes("both", ["-x"]) == [
        ("sqlite", [f"--ignore={POSTGRES_ONLY}", "-x"]),
        ("postgres", ["--reuse-db", "-x", *POSTGRES_PASS_IGNORES, *POSTGRES_PASS]),
    ]
    assert "--ignore=tests/integration/test_cluster_faults.py" in POSTGRES_PASS_IGNORES
    # given named tests, then PostgreSQL runs those same tests
    assert test_passes("postgres", ["tests/devices/test_devices_api.py::test_device_quota", "-k", "quota"]) == [
        ("postgres", ["--reuse-db", "tests/devices/test_devices_api.py::test_device_quota", "-k", "quota"]),
    ]
    assert [database for database, _ in test_passes("sqlite", [])] == ["sqlite"]


@pytest.mark.parametrize(
    ("extra", "with_postgres"),
    [({}, False), ({"SLUICE_DATABASE": "postgres"}, True),
     ({"DATABASE_URL": "postgres://u:p@db.example:5432/sluice"}, False)],
)  # fmt: skip
def test_postgresql_comes_with_what_uses_the_database(tmp_path: Path, extra: dict[str, str],
                                                      with_postgres: bool) -> None:  # fmt: skip
    ctx = make_context(launcher_env(tmp_path, 0, **{"SLUICE_DATABASE": "sqlite", **extra}))
    # when the web app is asked for, then PostgreSQL starts first only when Sluice owns it
    names = [c.name for c in Launcher(ctx, ["web"]).components]
    assert names == (["postgres", "web"] if with_postgres else ["web"])
    # and Redis alone needs no database
    assert [c.name for c in Launcher(ctx, ["redis"]).components] == ["redis"]


def test_postgresql_runs_private_unprivileged_and_stops_with_the_platform() -> None:
    # given a state directory under the checkout (its parents are open to the server's user)
    state = BASE_DIR / "var" / f"launch-pg-{os.getpid()}"
    offset = int(os.environ.get("SLUICE_PORT_OFFSET", "10000")) + 600
    env = launcher_env(state, offset, SLUICE_ENV="development", SLUICE_DATABASE="postgres")
    proc = subprocess.Popen([*SLUICECTL, "up", "--components", "postgres"], env=env, cwd=BASE_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        # when it is up
        read_until(proc, "ready in", timeout=120)
        ctx = make_context(env)
        rt = ctx.runtime
        status = run_sluicectl(["status"], env)
        assert status.returncode == 0, status.stdout
        assert "postgres" in status.stdout
        # then its directory is owner-only, and owned by the unprivileged user when we are root
        info = rt.postgres_dir.stat()
        assert info.st_mode & 0o777 == 0o700
        postmaster = psutil.Process(int((rt.postgres_data_dir / "postmaster.pid").read_text().split()[0]))
        assert postmaster.username() == ("postgres" if os.geteuid() == 0 else psutil.Process().username())
        # and the application's role reaches its database through the socket, and is no superuser
        import psycopg

        socket_dir = str(rt.postgres_socket_dir)
        with psycopg.connect(host=socket_dir, port=rt.ports.postgres, user="sluice", password=rt.database_password,
                             dbname="sluice", connect_timeout=5) as connection:  # fmt: skip
            row = connection.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
            assert row.fetchone() == ("sluice", False)
        # and without the password it is refused
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host=str(rt.postgres_socket_dir), port=rt.ports.postgres, user="sluice",
                            password="wrong", dbname="sluice", connect_timeout=5)  # fmt: skip
        # when the platform stops, then the server is gone with it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not postmaster.is_running()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        run_sluicectl(["down"], env)
        subprocess.run(["rm", "-rf", str(state)], check=False)


def test_a_printed_manage_command_aims_at_the_started_postgresql(tmp_path: Path) -> None:
    from config.env import load_runtime
    from sluicectl.launcher import manage_command

    # given a platform on the PostgreSQL it started, then its commands say so (else: SQLite)
    on_postgres = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_DATABASE": "postgres"})
    assert "SLUICE_DATABASE=postgres " in manage_command(on_postgres, "sluice_token", "admin")
    assert "SLUICE_DATABASE" not in manage_command(load_runtime({"SLUICE_STATE_DIR": str(tmp_path)}))
