"""The state directory is private: the launcher refuses to start on state that is open to other
users, names the path and the fix, and opens only the short public list itself."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from config.env import load_runtime
from sluicectl.errors import LaunchError
from sluicectl.private_state import make_state_dir, open_public_paths, refuse_open_state, too_open
from tests.platform.test_launcher import launcher_env, run_sluicectl


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_tree(root: Path) -> Path:
    """A state directory as this version leaves it: owner-only, public paths opened."""
    state = root / "state"
    for directory in ("secrets", "kafka/data", "crl", "static/admin", "oauth-public", "pki"):
        (state / directory).mkdir(parents=True, exist_ok=True)
    for file in ("db.sqlite3", "secrets/kek", "kafka/data/meta.properties", "crl/platform-root.crl",
                 "static/admin/base.css", "oauth-public/jwks.json", "pki/root-ca.key", "pki/root-ca.crt"):  # fmt: skip
        (state / file).write_text("x")
    for path in (state, *state.rglob("*")):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    open_public_paths(load_runtime({"SLUICE_STATE_DIR": str(state)}))
    return state


def test_owner_only_state_and_the_public_list_pass(tmp_path: Path) -> None:
    # given a state tree whose only open paths are the public ones (and a certificate, public by nature)
    state = private_tree(tmp_path)
    os.chmod(state / "pki" / "root-ca.crt", 0o644)
    # then nothing is too open, and the public paths are open as listed
    assert too_open(load_runtime({"SLUICE_STATE_DIR": str(state)})) == []
    assert (mode(state), mode(state / "crl"), mode(state / "crl" / "platform-root.crl")) == (0o711, 0o755, 0o644)
    assert (mode(state / "static" / "admin"), mode(state / "static" / "admin" / "base.css")) == (0o755, 0o644)
    assert mode(state / "oauth-public" / "jwks.json") == 0o644
    # and private paths were left alone
    assert (mode(state / "secrets"), mode(state / "secrets" / "kek"), mode(state / "pki")) == (0o700, 0o600, 0o700)


def test_one_open_file_is_named_with_its_fix(tmp_path: Path) -> None:
    # given the database left world-readable by an earlier version
    state = private_tree(tmp_path)
    os.chmod(state / "db.sqlite3", 0o644)
    # when the state is checked, then one line names it and the exact command
    with pytest.raises(LaunchError) as refused:
        refuse_open_state(load_runtime({"SLUICE_STATE_DIR": str(state)}))
    assert str(refused.value) == (
        f"{state / 'db.sqlite3'} (mode 0644) is open to other users, but Sluice's state is private; "
        f"make the file owner-only with: chmod 600 {state / 'db.sqlite3'}"
    )
    # and nothing was changed behind the user's back
    assert mode(state / "db.sqlite3") == 0o644


@pytest.mark.parametrize(
    ("relative", "open_mode", "fixed"),
    [
        ("kafka/data", 0o755, "chmod 700"),  # a private directory anyone may list
        (".", 0o755, "chmod 711"),  # the state directory may be passed through, not listed
        ("static/admin/base.css", 0o666, "chmod 644"),  # a public file others could rewrite
        ("pki/root-ca.key", 0o640, "chmod 600"),  # a key readable by the group
    ],
)
def test_every_kind_of_open_path_is_found(tmp_path: Path, relative: str, open_mode: int, fixed: str) -> None:
    state = private_tree(tmp_path)
    os.chmod(state / relative, open_mode)
    with pytest.raises(LaunchError, match=f"make the (file|directory) owner-only with: {fixed} "):
        refuse_open_state(load_runtime({"SLUICE_STATE_DIR": str(state)}))


def test_many_open_paths_get_one_command_that_fixes_them_all(tmp_path: Path) -> None:
    # given a state directory created by an earlier version: everything 0644/0755, which is
    # too open for 9 of its paths (the state directory, db.sqlite3, and secrets/, kafka/ and
    # pki/ with what they hold but the certificate)
    state = private_tree(tmp_path)
    for path in (state, *state.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    runtime = load_runtime({"SLUICE_STATE_DIR": str(state)})
    with pytest.raises(LaunchError) as refused:
        refuse_open_state(runtime)
    message = str(refused.value)
    assert message.startswith(f"9 paths under {state} are open to other users (e.g. ")
    assert f"make them owner-only with: chmod -R go-rwx {state} " in message
    # when the user runs that command and the launcher opens its public paths again
    for path in (state, *state.rglob("*")):
        os.chmod(path, mode(path) & ~0o077)
    open_public_paths(runtime)
    # then the state passes
    refuse_open_state(runtime)


def test_the_launcher_refuses_open_state_before_starting_anything(tmp_path: Path) -> None:
    # given a state directory holding a world-readable database
    state = private_tree(tmp_path)
    os.chmod(state / "db.sqlite3", 0o644)
    # when the platform is started, then it stops in one line, having started and written nothing
    result = run_sluicectl(["up", "--components", "redis"], launcher_env(state, 23600), timeout=60)
    assert result.returncode == 1
    assert result.stdout == (
        f"sluice: {state / 'db.sqlite3'} (mode 0644) is open to other users, but Sluice's state is private; "
        f"make the file owner-only with: chmod 600 {state / 'db.sqlite3'}\n"
    )
    assert not (state / "logs").exists()
    assert not (state / "run").exists()


def test_missing_parents_of_the_state_directory_can_be_passed_through(tmp_path: Path) -> None:
    # given a state directory whose parents do not exist yet, created under umask 077
    old = os.umask(0o077)
    try:
        state = tmp_path / "var" / "data"
        make_state_dir(load_runtime({"SLUICE_STATE_DIR": str(state)}))
    finally:
        os.umask(old)
    # then nginx's workers may pass through the parent Sluice created, and the state directory
    assert (mode(tmp_path / "var"), mode(state)) == (0o755, 0o711)


def test_another_nodes_public_paths_are_opened_and_its_private_ones_stay_closed(tmp_path: Path) -> None:
    # given a second web node's directories beside the first node's state
    state = private_tree(tmp_path)
    node = state / "nodes" / "web2"
    for directory in ("static/admin", "public-sockets", "nginx/tmp/body", "run", "logs"):
        (node / directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    for file in ("static/admin/base.css", "run/nginx.pid", "logs/web.log", "nginx/nginx.conf"):
        (node / file).write_text("x")
        os.chmod(node / file, 0o600)

    # when the public paths are opened
    open_public_paths(load_runtime({"SLUICE_STATE_DIR": str(state)}))

    # then nginx's workers can pass to that node's static files and sockets, and nothing is too open
    assert (mode(state / "nodes"), mode(node), mode(node / "nginx"), mode(node / "nginx" / "tmp")) == (0o711,) * 4
    assert (mode(node / "static" / "admin" / "base.css"), mode(node / "public-sockets")) == (0o644, 0o755)
    assert too_open(load_runtime({"SLUICE_STATE_DIR": str(state)})) == []
    # while its run directory, logs and nginx configuration (the proxy secret) stay owner-only
    assert (mode(node / "run"), mode(node / "logs"), mode(node / "nginx" / "nginx.conf")) == (0o700, 0o700, 0o600)
    # and its run directory opened by hand is found (nodes/* opens only the node's own public paths)
    os.chmod(node / "run", 0o755)  # noqa: S103 - the mistake under test
    assert [p.path for p in too_open(load_runtime({"SLUICE_STATE_DIR": str(state)}))] == [node / "run"]


def test_mosquittos_bridge_socket_may_be_0770_inside_the_private_run_directory(tmp_path: Path) -> None:
    import socket

    # given the run directory with Mosquitto's bridge socket as Mosquitto leaves it (0770), and
    # another socket just as open
    state = private_tree(tmp_path)
    run = state / "run"
    run.mkdir(mode=0o700)
    sockets = []
    for name in ("mqtt-bridge.sock", "other.sock"):
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(run / name))
        os.chmod(run / name, 0o770)  # noqa: S103 - what Mosquitto does, under test
        sockets.append(server)
    try:
        # then only the other one is too open
        assert [p.path for p in too_open(load_runtime({"SLUICE_STATE_DIR": str(state)}))] == [run / "other.sock"]
    finally:
        for server in sockets:
            server.close()
