"""Celery through the real Redis: a worker process picks up a task and answers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from config.celery import app, ping
from config.env import BASE_DIR, Runtime

pytestmark = pytest.mark.integration


@pytest.fixture
def celery_worker(services: Runtime) -> Iterator[subprocess.Popen[bytes]]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--hostname", f"test-{os.getpid()}@localhost"],
        cwd=BASE_DIR,
        env=os.environ.copy(),
    )  # fmt: skip
    yield worker
    worker.terminate()
    worker.wait(timeout=30)


def test_task_runs_through_redis_on_a_worker(celery_worker: subprocess.Popen[bytes]) -> None:
    # given a worker connected to the run's Redis (password-protected, loopback)
    # when a task is sent
    result = ping.delay("hello from the test")
    # then a worker ran it and the result came back through Redis
    assert result.get(timeout=60) == "hello from the test"
    assert celery_worker.poll() is None
    assert any(app.control.ping(timeout=2.0))


def test_broker_is_the_redis_of_this_run(services: Runtime) -> None:
    assert app.conf.broker_url == services.redis_url(0)
    assert f":{services.ports.redis}/" in app.conf.broker_url
