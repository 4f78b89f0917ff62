"""Apicurio Registry through the Confluent API, with the client Sluice uses, and only Sluice:
its API is an owner-only Unix socket, no TCP port."""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from config.env import DEFAULT_PORTS, Runtime
from devices.registry_client import registry_client_for
from sluicectl.launcher import Launcher, child_env, make_context
from tests.conftest import unique_slug

pytestmark = pytest.mark.integration

READING_V1 = {
    "type": "record",
    "name": "Reading",
    "namespace": "io.sluice.test",
    "fields": [{"name": "celsius", "type": "double"}],
}
# The port Apicurio's API listened on before it moved to a Unix socket (8081 + the offset).
OLD_REGISTRY_PORT = 8081


def avro(schema: dict) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


def test_schema_comes_back_by_id_after_a_registry_restart(tmp_path: Path) -> None:
    # given a registry of its own, started by the launcher on its own state directory
    ctx = make_context(
        child_env({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_PORT_OFFSET": "21000"})
    )
    subject = f"{unique_slug('t')}-value"
    first = Launcher(ctx, ["registry"])
    first.start()
    try:
        schema_id = registry_client_for(ctx.runtime).register_schema(subject, avro(READING_V1))
    finally:
        first.stop()

    # when the registry is started again on the same state
    second = Launcher(ctx, ["registry"])
    second.start()
    try:
        client = registry_client_for(ctx.runtime)
        # then the schema is still there under the same id, and the compatibility rule too
        assert json.loads(client.get_schema(schema_id).schema_str) == READING_V1
        assert client.get_latest_version(subject).schema_id == schema_id
        assert client.get_compatibility() == "BACKWARD"
    finally:
        second.stop()


def test_global_compatibility_is_backward_and_enforced(services: Runtime) -> None:
    # given a subject with a first version
    client = registry_client_for(services)
    subject = f"{unique_slug('t')}-value"
    client.register_schema(subject, avro(READING_V1))

    # when a version adds a required field (old readers' data can't be read by new readers)
    breaking = {**READING_V1, "fields": [*READING_V1["fields"], {"name": "unit", "type": "string"}]}
    # then the registry refuses it with the Confluent 409 error
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, avro(breaking))
    assert refused.value.http_status_code == 409

    # and a backward-compatible change (a field with a default) is accepted as version 2
    compatible = {
        **READING_V1,
        "fields": [*READING_V1["fields"], {"name": "unit", "type": "string", "default": "C"}],
    }
    client.register_schema(subject, avro(compatible))
    assert client.get_latest_version(subject).version == 2


def registry_process(runtime: Runtime) -> psutil.Process:
    """The registry JVM of this test run (the one whose socket is this run's)."""
    for proc in psutil.process_iter(["cmdline"]):
        if f"-Dquarkus.http.domain-socket={runtime.registry_socket}" in (proc.info["cmdline"] or []):
            return proc
    pytest.fail(f"no registry process serves {runtime.registry_socket}")


def test_the_registry_listens_on_no_tcp_port_but_its_health_port(services: Runtime) -> None:
    # given the registry of this test run
    registry = registry_process(services)
    # then the only TCP port it listens on is the management port, and the API's old port answers nothing
    listening = {c.laddr.port for c in registry.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {services.ports.registry_management}
    old_port = OLD_REGISTRY_PORT + int(services.environ.get("SLUICE_PORT_OFFSET", "0"))
    assert old_port not in DEFAULT_PORTS.values()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()


def test_the_management_port_serves_health_and_no_schema(services: Runtime) -> None:
    # given a schema under a subject no one could guess
    subject = f"{unique_slug('secret-subject')}-value"
    registry_client_for(services).register_schema(subject, avro(READING_V1))
    base = f"http://127.0.0.1:{services.ports.registry_management}"

    def status(path: str, method: str = "GET", body: bytes | None = None) -> int:
        request = urllib.request.Request(f"{base}{path}", data=body, method=method,  # noqa: S310
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    # then the management port answers health
    assert status("/health/ready") == 200
    # and none of the registry's APIs, to read or to write
    for path in ("/apis/ccompat/v7/subjects", f"/apis/ccompat/v7/subjects/{subject}/versions/latest",
                 "/apis/registry/v3/groups", "/apis/registry/v3/search/artifacts"):  # fmt: skip
        assert status(path) == 404, path
    assert status("/apis/ccompat/v7/config", "PUT", b'{"compatibility": "NONE"}') == 404
    assert status(f"/apis/ccompat/v7/subjects/{subject}/versions", "POST", b'{"schema": "\\"int\\""}') == 404
    # and its metrics name request paths by template, never a subject or a schema
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:  # noqa: S310
        metrics = response.read().decode()
    assert "/apis/ccompat/v7/subjects/{subject}/versions" in metrics
    assert subject not in metrics
    assert "io.sluice.test" not in metrics
    assert registry_client_for(services).get_compatibility() == "BACKWARD"


CONNECT_AS_NOBODY = """
import errno, os, socket, sys
os.setgid(int(sys.argv[2])); os.setgroups([]); os.setuid(int(sys.argv[1]))
probe = socket.socket(socket.AF_UNIX)
try:
    probe.connect(sys.argv[3])
    print("connected")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""


def connect_as_nobody(path: Path) -> str:
    nobody = pwd.getpwnam("nobody")
    result = subprocess.run(
        [sys.executable, "-c", CONNECT_AS_NOBODY, str(nobody.pw_uid), str(nobody.pw_gid), str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="proving that another user is refused needs root to become one")
def test_only_sluices_user_can_reach_the_registry(services: Runtime) -> None:
    # given the registry's socket
    path = services.registry_socket
    info = path.lstat()
    # then it is a socket owned by Sluice's user, owner-only, in an owner-only directory
    assert stat.S_ISSOCK(info.st_mode)
    assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) & 0o077 == 0
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0

    # when a process of another user (nobody) connects, then it is refused
    assert connect_as_nobody(path) == errno.errorcode[errno.EACCES]
    # and still refused by the socket's own mode when the directory lets it pass
    directory_mode = stat.S_IMODE(path.parent.stat().st_mode)
    os.chmod(path.parent, 0o711)  # noqa: S103 - for a moment: the socket alone must refuse
    try:
        assert connect_as_nobody(path) == errno.errorcode[errno.EACCES]
    finally:
        os.chmod(path.parent, directory_mode)

    # while Sluice's own client reads and writes
    client = registry_client_for(services)
    subject = f"{unique_slug('t')}-value"
    schema_id = client.register_schema(subject, avro(READING_V1))
    assert client.get_latest_version(subject).schema_id == schema_id
    assert subject in client.get_subjects()
