"""Command line: ``up``, ``test``, ``status``, ``down`` (see platform/bin/sluice)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from config.env import BASE_DIR, DATABASES, KAFKA_BROKER_COUNTS, POSTGRES, SQLITE, use_private_umask
from sluicectl.components import ALL, MQTT_COMPONENTS, TEST_COMPONENTS
from sluicectl.errors import LaunchError
from sluicectl.launcher import (
    DEFAULT_NODE_COMPONENTS,
    NODE_COMPONENTS,
    ORDER,
    RESTARTING,
    Interrupted,
    Launcher,
    banner,
    child_env,
    install_signal_handlers,
    make_context,
    manage_command,
    running_launcher,
    say,
    state_file,
)

# pytest's exit status when it collected no tests at all.
PYTEST_NO_TESTS = 5


def port_number(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def parse_components(raw: str | None, default: Sequence[str]) -> list[str]:
    if not raw:
        return list(default)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise LaunchError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    return names


# What the test command exits with when it was interrupted (as a shell reports SIGINT).
INTERRUPTED = 130


def run_platform(launcher: Launcher, on_ready: Callable[[], int] | None = None, *, interrupted: int = 0) -> int:
    install_signal_handlers()
    try:
        launcher.start()
        if on_ready is not None:
            return on_ready()
        launcher.watch()
        return 0
    except Interrupted as signame:
        say(f"{signame} received, stopping")
        return interrupted
    except LaunchError as exc:
        say(str(exc))
        return 1
    finally:
        launcher.stop()


def database_env(choice: str | None) -> dict[str, str]:
    """``--db``: the database the platform uses (the flag wins over SLUICE_DATABASE)."""
    return {} if choice is None else {"SLUICE_DATABASE": choice}


def brokers_env(args: argparse.Namespace) -> dict[str, str]:
    """``--brokers N`` is SLUICE_KAFKA_BROKERS=N for the launcher and every process it starts."""
    return {} if args.brokers is None else {"SLUICE_KAFKA_BROKERS": args.brokers}


def node_env(args: argparse.Namespace) -> dict[str, str]:
    """``--node``, ``--web-port`` and ``--crl-port`` as the environment variables the runtime
    reads (config.env), so the node's processes resolve the same node."""
    extra = {}
    if getattr(args, "node", None):
        extra["SLUICE_NODE"] = args.node
    for option, variable in (("web_port", "SLUICE_NODE_WEB_PORT"), ("crl_port", "SLUICE_NODE_CRL_PORT")):
        if getattr(args, option, None) is not None:
            extra[variable] = str(getattr(args, option))
    return extra


def cmd_up(args: argparse.Namespace) -> int:
    ctx = make_context(child_env({**database_env(args.db), **brokers_env(args), **node_env(args)}))
    names = parse_components(args.components, DEFAULT_NODE_COMPONENTS if ctx.runtime.node else ORDER)
    if args.no_prometheus:
        names = [name for name in names if name != "prometheus"]
    if args.no_mqtt:
        names = [name for name in names if name not in MQTT_COMPONENTS]
    launcher = Launcher(ctx, names)
    began = time.monotonic()
    rt = ctx.runtime

    def ready() -> int:
        if "web" in names and rt.is_first_node:
            subprocess.run(
                [
                    sys.executable,
                    str(BASE_DIR / "manage.py"),
                    "sluice_first_admin",
                    "--url",
                    f"{rt.web_url}/admin/",
                    "--manage",
                    manage_command(rt),
                ],
                env=ctx.env,
                check=False,
            )
        say(f"ready in {time.monotonic() - began:.1f} s  (state: {rt.state_dir})")
        print("\n".join(banner(ctx, names)), flush=True)
        say("press Ctrl-C to stop everything; `platform/bin/sluice status` reports each part")
        launcher.watch()
        return 0

    return run_platform(launcher, ready)


# The second pass of the full suite, on PostgreSQL: what reads and writes the database through
# the services, the API, ingest, the isolation matrix, the live integration tests, the races of
# concurrent transactions, and the PostgreSQL-only tests (the database stopped and started).
# Left out (README, "Development"): the browser tests (Chromium drives the same API and console
# views the API and isolation tests cover), the launcher's own tests (they start platforms of
# their own, on SQLite), the README's walkthrough, and config/ (environment parsing and error
# pages, no database semantics).
POSTGRES_PASS = (
    "tests/tenants", "tests/devices", "tests/certs", "tests/ingest", "tests/isolation",
    "tests/integration", "tests/contract", "tests/concurrency", "tests/postgres",
)  # fmt: skip
POSTGRES_ONLY = "tests/postgres"
# Also left out of the PostgreSQL pass: the tests that start platforms of their own (three
# brokers, a second web node, every part killed in turn).  What they prove is about Kafka,
# nginx and processes, and each costs minutes; the first pass runs them.
POSTGRES_PASS_IGNORES = tuple(
    f"--ignore=tests/integration/{name}.py"
    for name in ("test_cluster", "test_cluster_faults", "test_existing_cluster", "test_supervised_faults",
                 "test_web_nodes")
)  # fmt: skip


def _names_tests(pytest_args: Sequence[str]) -> bool:
    """Whether the arguments name test files or directories (else pytest collects testpaths)."""
    return any(not arg.startswith("-") and (BASE_DIR / arg.split("::", 1)[0]).exists() for arg in pytest_args)


def test_passes(choice: str, pytest_args: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(database, pytest arguments) for each pass ``--db`` asks for.  SQLite runs everything
    but the PostgreSQL-only tests; PostgreSQL runs the same tests when the arguments name
    some, else POSTGRES_PASS.  pytest-django keeps the PostgreSQL database (--reuse-db): the
    web and ingest processes hold connections to it, so it cannot be dropped at the end (the
    whole cluster goes with the state directory)."""
    passes: list[tuple[str, list[str]]] = []
    if choice in (SQLITE, "both"):
        passes.append((SQLITE, [f"--ignore={POSTGRES_ONLY}", *pytest_args]))
    if choice in (POSTGRES, "both"):
        named = _names_tests(pytest_args)
        whole = () if named else (*POSTGRES_PASS_IGNORES, *POSTGRES_PASS)
        passes.append((POSTGRES, ["--reuse-db", *pytest_args, *whole]))
    return passes


def cmd_test(args: argparse.Namespace) -> int:
    state = os.environ.get("SLUICE_TEST_STATE_DIR", str(BASE_DIR / "var" / "test"))
    if not args.no_lint:
        # mypy's plugin and makemigrations load the settings; they need no running database.
        failed = run_checks(child_env({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": state, "SLUICE_DATABASE": SQLITE}))
        if failed is not None:
            say(f"{failed} (above); fix them, then run the tests again")
            return 1
    outcomes: list[tuple[str, int, float]] = []
    for database, pytest_args in test_passes(args.db, args.pytest_args):
        began = time.monotonic()
        status = test_pass(args, database=database, state=state if database == SQLITE else f"{state}-{database}",
                           pytest_args=pytest_args)  # fmt: skip
        outcomes.append((database, status, time.monotonic() - began))
        if status == INTERRUPTED:
            return status
    for database, status, seconds in outcomes:
        say(f"{database}: {'passed' if status == 0 else f'FAILED (exit {status})'} in {seconds:.0f} s")
    return 0 if all(status == 0 for _, status, _ in outcomes) else 1


def test_pass(args: argparse.Namespace, *, database: str, state: str, pytest_args: list[str]) -> int:
    """One run of pytest against a fresh platform of its own on ``database``."""
    extra = {
        "SLUICE_ENV": "test",
        "SLUICE_STATE_DIR": state,
        "SLUICE_PORT_OFFSET": os.environ.get("SLUICE_TEST_PORT_OFFSET", "10000"),
        "SLUICE_DATABASE": database,
        **brokers_env(args),
    }
    ctx = make_context(child_env(extra))
    rt = ctx.runtime
    # Tests start from a clean slate every run, and never share the user's state.
    other = running_launcher(ctx)
    if other is not None:
        raise LaunchError(f"a test stack is already running from {rt.state_dir} (pid {other})")
    shutil.rmtree(rt.state_dir, ignore_errors=True)

    names = parse_components(args.components, TEST_COMPONENTS)
    launcher = Launcher(ctx, names)

    def run_pytest() -> int:
        say(f"services up ({', '.join(c.name for c in launcher.components)}; database: {database}); running pytest")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *pytest_args],
            env=ctx.env,
            cwd=BASE_DIR,
            check=False,
        )
        if result.returncode == PYTEST_NO_TESTS:
            say("pytest collected no tests; that is a failure, not a pass")
            return 1
        return result.returncode

    return run_platform(launcher, run_pytest, interrupted=INTERRUPTED)


# What `sluice test` checks before it starts anything (skipped with --no-lint): each command,
# and what its failure means.  lint-imports holds the layer order ([tool.importlinter] in
# pyproject.toml); mypy's plugin loads config.settings, so mypy and makemigrations run with the
# test environment ([tool.mypy] says what mypy checks, and how strictly).
def _checks() -> list[tuple[str, list[str], str]]:
    python, tools = sys.executable, os.path.dirname(sys.executable)
    return [
        ("ruff check", [python, "-m", "ruff", "check", str(BASE_DIR)], "ruff found problems"),
        ("ruff format --check", [python, "-m", "ruff", "format", "--check", str(BASE_DIR)],
         "ruff format would change these files (run ruff format)"),
        ("lint-imports", [os.path.join(tools, "lint-imports")], "lint-imports found imports against the layer order"),
        ("mypy", [python, "-m", "mypy"], "mypy found type errors"),
        ("makemigrations --check", [python, "manage.py", "makemigrations", "--check", "--dry-run"],
         "a model changed without its migration (run manage.py makemigrations)"),
    ]  # fmt: skip


def run_checks(env: dict[str, str]) -> str | None:
    """Run every check in order; the first that fails says what it found."""
    for label, argv, failure in _checks():
        say(label)
        if subprocess.run(argv, env=env, cwd=BASE_DIR, check=False).returncode != 0:
            return failure
    return None


def cmd_status(args: argparse.Namespace) -> int:
    ctx = make_context(child_env(node_env(args)))
    pid = running_launcher(ctx)
    if pid is None:
        say(f"not running (state: {ctx.runtime.state_dir})")
        return 1
    try:
        recorded = json.loads(state_file(ctx).read_text())
        pids = recorded["components"]
        supervision = recorded.get("supervision", {})
    except (OSError, ValueError, KeyError, AttributeError):
        say(f"launcher pid {pid} is starting or stopping (no readable state yet); ask again in a moment")
        return 1
    healthy = True
    print(f"launcher pid {pid}, state {ctx.runtime.state_dir}")
    for name in ORDER:
        if name not in pids:
            continue
        seen = supervision.get(name, {})
        child = seen.get("pid", pids[name])
        if seen.get("state") == RESTARTING:
            reason: str | None = "exited; the launcher restarts it after its backoff"
        else:
            try:
                os.kill(child, 0)
                reason = ALL[name].check(ctx)
            except ProcessLookupError:
                reason = "process is gone"
        healthy &= reason is None
        print(f"  {name:<9} pid {child!s:<8} {'ok' if reason is None else 'DOWN: ' + reason}{history(seen)}")
    rt = ctx.runtime
    if not rt.runs_kafka:
        from ingest.kafka import kafka_cluster_check

        reason = kafka_cluster_check(rt)
        healthy &= reason is None
        print(f"  {'kafka':<9} external     {'ok' if reason is None else 'DOWN: ' + reason}  ({rt.kafka_bootstrap})")
    return 0 if healthy else 1


def history(seen: dict[str, object]) -> str:
    """What supervision adds to a component's status line: its state since when, and its
    restarts with the last exit (nothing for a component that never exited)."""
    if not seen:
        return ""
    words = f"  ({seen.get('state')} since {seen.get('since')}"
    if seen.get("restarts"):
        words += f"; {seen['restarts']} restart(s), last exit: {seen.get('last_exit')}"
    elif seen.get("last_exit"):
        words += f"; last exit: {seen['last_exit']}"
    if seen.get("last_error") and seen.get("state") != "running":
        words += f"; its log said: {seen['last_error']}"
    if seen.get("crash_loop"):
        words += "; CRASH LOOP"
    return words + ")"


def cmd_down(args: argparse.Namespace) -> int:
    ctx = make_context(child_env(node_env(args)))
    pid = running_launcher(ctx)
    if pid is None:
        say("not running")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        say("stopped")
        return 0
    except PermissionError:
        raise LaunchError(f"the launcher (pid {pid}) belongs to another user; stop it as that user") from None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if running_launcher(ctx) is None:
            say("stopped")
            return 0
        time.sleep(0.5)
    raise LaunchError(f"launcher (pid {pid}) did not stop within 120 s")


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: every file this launcher and every process it starts creates (the state
    # directory, Kafka's log, the registry's database, Redis's dump, logs) is owner-only.
    use_private_umask()
    parser = argparse.ArgumentParser(prog="sluice", description="Run and test the Sluice platform.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring up the whole platform; Ctrl-C stops it")
    up.add_argument(
        "--components",
        help=f"comma-separated subset of {','.join(ORDER)} "
        f"(with --node: of {','.join(NODE_COMPONENTS)}; default {','.join(DEFAULT_NODE_COMPONENTS)})",
    )
    up.add_argument(
        "--node",
        help="start another web node of the platform on the same state directory (a name, "
        "e.g. web2): its own nginx, web and ingest workers; the first node runs without --node",
    )
    up.add_argument("--web-port", type=port_number, help="with --node: the HTTPS port this node listens on")
    up.add_argument("--crl-port", type=port_number, help="with --node: the plain-HTTP port (CRLs, JWKS) it listens on")
    up.add_argument("--db", choices=DATABASES,
                    help="sqlite (default; or SLUICE_DATABASE), or postgres: a PostgreSQL 15 started under the "
                         "state directory (an external one: DATABASE_URL)")  # fmt: skip
    up.add_argument("--brokers", choices=[str(n) for n in KAFKA_BROKER_COUNTS],
                    help="Kafka brokers, a KRaft quorum (default: SLUICE_KAFKA_BROKERS, else 1; "
                         "another web node names the first node's count)")  # fmt: skip
    up.add_argument(
        "--no-prometheus",
        action="store_true",
        help="do not start Prometheus (by default it scrapes every part and evaluates the alert rules)",
    )
    up.add_argument(
        "--no-mqtt",
        action="store_true",
        help="do not start Mosquitto (by default devices may also publish over MQTT) nor its auth process",
    )
    up.set_defaults(func=cmd_up)
    test = sub.add_parser("test", help="run the test suite against its own services")
    test.add_argument("--components", help=f"services to start (default: {','.join(TEST_COMPONENTS)})")
    test.add_argument("--db", choices=(*DATABASES, "both"), default="both",
                      help="the database(s) the suite runs against: both (default: SQLite, then PostgreSQL on "
                           "the database-dependent tests), sqlite or postgres")  # fmt: skip
    test.add_argument(
        "--brokers",
        choices=[str(n) for n in KAFKA_BROKER_COUNTS],
        help="how many Kafka brokers the test stack runs (default 1)",
    )
    test.add_argument("--no-lint", action="store_true",
                      help="skip `ruff check`, lint-imports and mypy (quick loops; CI always runs them)")  # fmt: skip
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    test.set_defaults(func=cmd_test)
    status = sub.add_parser("status", help="report each component")
    status.add_argument("--node", help="the web node to report (default: the first)")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop a running platform")
    down.add_argument("--node", help="stop only this web node (default: the first, which stops the platform)")
    down.set_defaults(func=cmd_down)
    # Options sluice does not know go to pytest (argparse's REMAINDER alone drops a leading
    # "-k expr" or "-x"), in their order, before any positional pytest arguments.
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "test":
        args.pytest_args = [*unknown, *args.pytest_args]
    try:
        return int(args.func(args))
    except LaunchError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # A file, directory, port or process the command needed (permissions, a full disk,
        # a vanished state file): one line naming it, never a stack trace.
        target = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        say(f"{args.command} failed: {exc.strerror or exc}{target}; check that path and the permissions of var/")
        return 1
    except Exception as exc:  # the last resort: one line, the trace only on request
        if os.environ.get("SLUICE_DEBUG"):
            raise
        say(f"{args.command} failed unexpectedly: {type(exc).__name__}: {exc} (SLUICE_DEBUG=1 shows the trace)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
