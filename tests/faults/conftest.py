"""Fault tests: the broker of this run's stack, killed and restarted under load."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.faultproof.broker import SingleBroker
from config.env import Runtime
from sluicectl.launcher import child_env, make_context


@pytest.fixture(scope="session")
def single_broker(services: Runtime) -> Iterator[SingleBroker]:
    """The stack's one broker.  A test that kills it restarts it before it ends (the rest of
    the suite needs it); the broker restarted here is this session's child, stopped at its end."""
    broker = SingleBroker.of_running_launcher(make_context(child_env()))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def quiet_tenant_tasks(monkeypatch: Any) -> None:
    # A new tenant's DLQ topic is not part of these tests (provisioning is tested elsewhere).
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
