"""The dependency contract for Redis (README, "When a part fails"): with the run's Redis
stopped, ingest refuses with 503 ``rate_limiter_unavailable`` + Retry-After (fail closed: no
unmetered traffic), the REST API keeps working, /healthz names Redis, and everything
recovers within RECOVERY_BOUND seconds of its return.  Through the real nginx, web and
ingest processes; the Redis is the one `sluice test` started, stopped and started again."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from config.env import Runtime
from sluicectl.components import Context, Redis
from tenants.hashing import hash_token
from tenants.models import ApiToken
from tests.conftest import fresh_celery_connections, make_user
from tests.integration.test_ingest import make_sender
from tests.postgres.test_database_down import https_get

__all__ = ["make_sender"]

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
RECOVERY_BOUND = 30.0
# A worker's lease of its tenant's budget lasts at most 0.25 s (ingest.ratelimit); after
# that, every request needs Redis.  The bound leaves room for a loaded machine.
REFUSED_WITHIN = 10.0
TOKEN = "slc_redisdwn_redis-down-test-token"
RECORD = {"celsius": 21.5, "site": "berlin-1"}


def _redis_pid(runtime: Runtime) -> int | None:
    try:
        state = json.loads((runtime.run_dir / "launcher.json").read_text())
        pid = int(state["components"]["redis"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def _until(condition: Callable[[], bool], bound: float, what: str) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > bound:
            pytest.fail(f"{what} within {bound:.0f} s", pytrace=False)
        time.sleep(0.25)
    return time.monotonic() - began


@pytest.fixture
def redis_outage(services: Runtime) -> Iterator[Callable[[], Any]]:
    """``with outage():`` stops the run's Redis (SIGTERM, as `systemctl stop` would) for the
    block and starts the same server again, as the launcher starts it."""
    component = Redis()
    context = Context(runtime=services, env=dict(os.environ))
    restarted: list[Any] = []

    def start() -> None:
        process = component.process(context)
        process.start()
        restarted.append(process)
        _until(lambda: component.check(context) is None, RECOVERY_BOUND, "Redis did not answer again")
        fresh_celery_connections()  # this process's pooled ones died with the old server

    class Outage:
        def __enter__(self) -> None:
            pid = _redis_pid(services)
            assert pid is not None, "the run's Redis is not running"
            os.kill(pid, signal.SIGTERM)
            _until(lambda: component.check(context) is not None, RECOVERY_BOUND, "Redis did not stop")

        def __exit__(self, *_exc: object) -> None:
            start()

    yield Outage
    if component.check(context) is not None:
        start()
    # The restarted server is this process's child: it stops when pytest ends (die with
    # parent), before the launcher stops the rest.
    for process in restarted:
        assert process.running(), f"the restarted Redis exited: see {process.log_path}"


@pytest.fixture
def operator_token(db: None) -> str:
    user = make_user("redis-down-operator", operator=True)
    ApiToken.objects.create(user=user, name="redis down", prefix="redisdwn", secret_hash=hash_token(TOKEN))
    return TOKEN


def test_ingest_refuses_closed_the_api_works_and_healthz_names_redis_then_all_recover(
    services: Runtime, redis_outage: Any, make_sender: Any, operator_token: str
) -> None:
    # given a device whose records are accepted, and an API that answers
    sender = make_sender()
    assert sender.post(RECORD)[0] == 200
    assert https_get(services, "/api/v1/tenants/", operator_token)[0] == 200
    # when Redis stops
    with redis_outage():
        # then ingest refuses once the worker's lease is spent: 503 with its code and when
        # to retry (never an unmetered 200 for long, never a 500)
        answers: list[tuple[int, Any, Any]] = []

        def refused() -> bool:
            answers.append(sender.post(RECORD))
            return answers[-1][0] != 200

        took = _until(refused, REFUSED_WITHIN, "ingest did not refuse without Redis")
        status, body, headers = answers[-1]
        assert (status, body["error"]["code"]) == (503, "rate_limiter_unavailable"), body
        assert headers["Retry-After"]
        print(f"ingest refused {took:.2f} s after Redis stopped ({len(answers) - 1} accepted before)")
        # and the REST API keeps working (it needs the database, not Redis)
        assert https_get(services, "/api/v1/tenants/", operator_token)[0] == 200
        # and /healthz says Redis is down
        status, _, report = https_get(services, "/healthz")
        assert status == 503
        assert report["components"]["redis"]["status"] == "down"
    # and once Redis is back, ingest and /healthz recover within the bound
    took = _until(lambda: sender.post(RECORD)[0] == 200, RECOVERY_BOUND, "ingest did not recover")
    print(f"ingest recovered {took:.1f} s after Redis's return")
    took = _until(
        lambda: https_get(services, "/healthz")[2]["components"]["redis"]["status"] == "ok",
        RECOVERY_BOUND,
        "/healthz did not see Redis again",
    )
    print(f"/healthz saw Redis {took:.1f} s after its return")
