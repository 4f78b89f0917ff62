"""Celery through the real Redis: a worker process picks up a task and answers."""

from __future__ import annotations

import subprocess

import pytest

from config.celery import app, ping
from config.env import Runtime

pytestmark = pytest.mark.integration


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
