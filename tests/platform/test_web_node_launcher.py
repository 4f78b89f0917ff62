"""``sluice up --node``: what another web node may run, and its mistakes in one clear line
(nothing is started; no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.platform.test_launcher import launcher_env, run_sluicectl

NODE = ["up", "--node", "web2", "--web-port", "23443", "--crl-port", "23080"]


@pytest.mark.parametrize("component", ["beat", "kafka"])
def test_another_node_refuses_what_runs_once_per_platform(tmp_path: Path, component: str) -> None:
    # when a second node is asked to run Celery beat (or Redis, Kafka, the registry)
    result = run_sluicectl([*NODE, "--components", f"nginx,{component}"], launcher_env(tmp_path, 23000), timeout=60)

    # then it refuses in one line that says where that runs, and starts nothing
    assert result.returncode == 1
    assert f"node web2 may run nginx, web, ingest, worker; {component} run once per platform, on the first node" in (
        result.stdout
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "nodes" / "web2" / "run" / "launcher.json").exists()


def test_a_node_without_a_platform_to_join_says_so(tmp_path: Path) -> None:
    # when a second node is started on a state directory where no first node ever ran
    result = run_sluicectl(NODE, launcher_env(tmp_path, 23000), timeout=60)

    # then it says what to start first
    assert result.returncode == 1
    assert "node web2: no platform to join" in result.stdout
    assert "start the first node there first (platform/bin/sluice up)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--node", "Web2", "--web-port", "23443", "--crl-port", "23080"], "SLUICE_NODE='Web2'"),
        (["up", "--node", "web2", "--crl-port", "23080"], "SLUICE_NODE=web2 needs SLUICE_NODE_WEB_PORT"),
        (["up", "--node", "web2", "--web-port", "nine"], "argument --web-port: 'nine' is not a port number"),
    ],
)
def test_bad_node_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_sluicectl(args, launcher_env(tmp_path, 23000), timeout=60)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
