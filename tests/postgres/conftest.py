"""The PostgreSQL-only tests (`sluice test` runs them in its PostgreSQL pass): they stop and
start the PostgreSQL the launcher started for this run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.db import connections

from config.env import Runtime
from sluicectl.components import Context, Postgres
from tests.integration.test_ingest import make_sender

__all__ = ["make_sender"]

# Every wait on the server is bounded: a stop or a start that takes longer is a failure.
SERVER_WAIT = 30.0


@pytest.fixture(scope="session")
def local_postgres(services: Runtime) -> Runtime:
    """The run's own PostgreSQL; fails (never skips) on another database."""
    if not services.starts_postgres:
        pytest.fail(
            "these tests stop and start the PostgreSQL `sluice test` starts; run them with: "
            "platform/bin/sluice test --db postgres tests/postgres",
            pytrace=False,
        )
    return services


def _postmaster_pid(runtime: Runtime) -> int | None:
    try:
        return int((runtime.postgres_data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SERVER_WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"PostgreSQL {what} within {SERVER_WAIT:.0f} s", pytrace=False)
        time.sleep(0.1)


def stop_database(runtime: Runtime) -> None:
    """A fast shutdown (SIGINT), as an operator's `pg_ctl stop` or a host going down cleanly:
    open connections are closed and new ones refused."""
    pid = _postmaster_pid(runtime)
    assert pid is not None, "PostgreSQL is not running"
    os.kill(pid, signal.SIGINT)
    # The server removes its pid file as its last act (the launcher reaps the process later).
    _wait(lambda: _postmaster_pid(runtime) is None, "did not stop")


def start_database(runtime: Runtime) -> None:
    """The same server, started again the way the launcher starts it (its own session; the
    launcher's ``after_stop`` stops it at the end of the run)."""
    component = Postgres()
    context = Context(runtime=runtime, env=dict(os.environ))
    component.process(context).start()
    _wait(lambda: component.check(context) is None, "did not accept connections again")
    # This process's own connections died with the server (the web processes open a new one
    # per request; a test holds its own across the test and its teardown).
    connections.close_all()


@pytest.fixture
def database_outage(local_postgres: Runtime) -> Iterator[Callable[[], object]]:
    """``with outage():`` stops the run's PostgreSQL for the block and starts it again; the
    teardown makes sure it runs whatever the test did."""

    @contextmanager
    def outage() -> Iterator[None]:
        stop_database(local_postgres)
        try:
            yield
        finally:
            start_database(local_postgres)

    yield outage
    if _postmaster_pid(local_postgres) is None:
        start_database(local_postgres)
