"""A separate Sluice on a 3-broker KRaft quorum, for the tests that need replicas to lose.

``cluster_platform`` (session-scoped) starts, beside this run's own stack:

* three combined broker+controller nodes from the project's files (``sluicectl.components.
  KafkaBroker``: the same properties, certificates, listeners and checks as ``sluice up
  --brokers 3``), owned by this pytest process, so a test can ``kill -9`` one and start it
  again while everything else keeps running;
* the rest of a Sluice platform (``sluice up``: Redis, nginx, the registry, the web app,
  ingest, Celery) on its own state directory, pointed at those brokers as at an external
  cluster (``SLUICE_KAFKA_BOOTSTRAP``), with the brokers' default replication (3, min ISR 2).

Ports: this run's offset + 1000 and up (``cluster_ports``); state: ``var/cluster``.
Helpers for fault tests: ``broker_pid``, ``kill_broker`` / ``start_broker`` /
``restart_broker``, ``partition_leader``, ``in_sync_replicas``, ``active_controller``,
``provision`` (a tenant, a stream, a device with a certificate) and ``https`` (its nginx).
Brokers started here die with this process (PR_SET_PDEATHSIG, taken from the thread that
starts them: call ``start_broker`` from the main thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config.env import BASE_DIR, Runtime, load_runtime
from devices.registry_client import registry_client_for
from ingest.kafka import admin_config, admin_files
from sluicectl.components import BROKERS, Context, KafkaBroker, Nginx
from sluicectl.launcher import child_env
from sluicectl.supervisor import Process
from tests.conftest import unique_slug
from tests.platform.test_state_after_a_full_run import Https, eventually

BROKER_COUNT = 3
# Small heaps: this platform runs beside the test stack on a shared machine; 320 MB each
# holds the suite's load (the README's figures are for the default 512m).
TEST_BROKER_HEAP = "320m"
BROKER_START_TIMEOUT = 180.0
PLATFORM_START_TIMEOUT = 300.0
SCHEMA = {"type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}


def cluster_ports(base: int) -> dict[str, str]:
    """Every port of a platform whose ports start at ``base`` (its brokers 2 and 3 on broker
    1's ports + 100 and + 200, config.env.BROKER_PORT_STRIDE): all within base .. base + 999."""
    return {
        "SLUICE_WEB_PORT": str(base + 443),
        "SLUICE_CRL_PORT": str(base + 80),
        "SLUICE_REDIS_PORT": str(base + 379),
        "SLUICE_REGISTRY_MANAGEMENT_PORT": str(base + 82),
        "SLUICE_KAFKA_PORT": str(base + 92),
        "SLUICE_KAFKA_CONTROLLER_PORT": str(base + 93),
        "SLUICE_KAFKA_INTERNAL_PORT": str(base + 94),
        "SLUICE_KAFKA_OAUTH_PORT": str(base + 95),
        "SLUICE_KAFKA_METRICS_PORT": str(base + 96),
        "SLUICE_PROMETHEUS_PORT": str(base + 90),
        "SLUICE_MQTT_PORT": str(base + 883),
        "SLUICE_MQTT_TOKEN_PORT": str(base + 884),
    }


@dataclass
class Provisioned:
    """A tenant with one stream and one device holding a certificate, on a platform."""

    tenant: str
    topic: str
    device: Https  # the platform's nginx, as the device (its certificate)
    admin_headers: dict[str, str]


class SluiceProcess:
    """``sluice up`` (``python -m sluicectl up``) on its own environment; output kept, and
    drained by a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runtime = load_runtime(env)
        self.output: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluicectl", "up"], env=env, cwd=BASE_DIR,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append("[password withheld]\n" if "password" in line.lower() else line)
            if "press Ctrl-C" in line:  # the last line `sluice up` prints once ready, after its banner
                self.ready.set()

    def tail(self) -> str:
        return "".join(self.output[-30:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the platform never became ready:\n{self.tail()}", pytrace=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def manage(self, *args: str) -> str:
        result = subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], env=self.env, cwd=BASE_DIR,
                                capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        return result.stdout.strip()

    def https(self, certificate: tuple[Path, Path] | None = None) -> Https:
        return Https(self.runtime, certificate)

    def provision(self, directory: Path, *, region: str = "eu", kind: str = "temp") -> Provisioned:
        """Through the platform's REST API: a tenant, a stream (its default replication), a
        group with a JSON schema and a device with a certificate; waits until ingest takes it."""
        token = self.manage("sluice_token", "admin")
        admin = {"Authorization": f"Bearer {token}"}
        api = self.https()
        tenant = unique_slug("c")
        assert api("POST", "/api/v1/tenants/", {"slug": tenant, "name": "Cluster"}, headers=admin)[0] == 201
        status, stream = api("POST", f"/api/v1/tenants/{tenant}/streams/", {"region": region, "type": kind},
                             headers=admin)  # fmt: skip
        assert status == 201, stream
        topic = f"iot.{tenant}.{region}.{kind}"
        subject = f"{topic}-value"
        registry_client_for(self.runtime).register_schema(subject, Schema(json.dumps(SCHEMA), "JSON"))
        group = {"slug": "thermo", "region": region, "device_type": kind, "stream": stream["id"],
                 "schema_subject": subject, "credential_policy": "both"}  # fmt: skip
        assert api("POST", f"/api/v1/tenants/{tenant}/groups/", group, headers=admin)[0] == 201
        body = {"device_id": "d1", "group": "thermo"}
        assert api("POST", f"/api/v1/tenants/{tenant}/devices/", body, headers=admin)[0] == 201
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                                 "x")]))  # fmt: skip
        csr_pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
        status, issued = api("POST", f"/api/v1/tenants/{tenant}/devices/d1/certificates/", {"csr": csr_pem},
                             headers=admin)  # fmt: skip
        assert status == 201, issued
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{tenant}.crt").write_text(issued["chain_pem"])
        (directory / f"{tenant}.key").write_text(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
        )
        device = self.https((directory / f"{tenant}.crt", directory / f"{tenant}.key"))

        def first_post() -> tuple[bool, Any]:
            answer = device("POST", "/ingest/v1/records", {"records": [{"celsius": 20.0}]})
            return (answer[0] == 200, answer)

        eventually("the first ingest POST (Celery creates the topic and ACLs)", first_post, timeout=90)
        return Provisioned(tenant=tenant, topic=topic, device=device, admin_headers=admin)


class ClusterPlatform(SluiceProcess):
    """A Sluice platform on 3 brokers this object starts, kills and restarts."""

    def __init__(self, state: Path, base_port: int) -> None:
        ports = cluster_ports(base_port)
        bootstrap = ",".join(f"localhost:{int(ports['SLUICE_KAFKA_PORT']) + 100 * i}" for i in range(BROKER_COUNT))
        oauth = ",".join(f"localhost:{int(ports['SLUICE_KAFKA_OAUTH_PORT']) + 100 * i}" for i in range(BROKER_COUNT))
        env = child_env({
            "SLUICE_ENV": "development", "SLUICE_STATE_DIR": str(state), "SLUICE_PORT_OFFSET": "0", **ports,
            "SLUICE_KAFKA_BROKERS": str(BROKER_COUNT), "SLUICE_KAFKA_BOOTSTRAP": bootstrap,
            "SLUICE_KAFKA_OAUTH_BOOTSTRAP": oauth, "SLUICE_KAFKA_HEAP": TEST_BROKER_HEAP,
            "SLUICE_DEFAULT_PARTITIONS": "3", "SLUICE_WORKER_CONCURRENCY": "1", "SLUICE_WEB_WORKERS": "1",
            "SLUICE_INGEST_WORKERS": "1",
        })  # fmt: skip
        self.brokers: dict[int, Process] = {}
        super().__init__(env)
        self.ctx = Context(runtime=self.runtime, env=env)

    # -- brokers ---------------------------------------------------------------------------
    def broker(self, node: int) -> KafkaBroker:
        return BROKERS[node - 1]

    def start_broker(self, node: int, *, wait: bool = True) -> None:
        """Start broker ``node`` (1-3) from the project's files; with ``wait``, until the
        cluster lists it among its live brokers."""
        broker = self.broker(node)
        broker.prepare(self.ctx)
        process = broker.process(self.ctx)
        process.start()
        self.brokers[node] = process
        if wait:
            self.wait_broker(node)

    def wait_broker(self, node: int, timeout: float = BROKER_START_TIMEOUT) -> None:
        broker, process = self.broker(node), self.brokers[node]
        deadline = time.monotonic() + timeout
        reason: str | None = "not checked yet"
        while time.monotonic() < deadline:
            if process.exit_code() is not None:
                pytest.fail(f"broker {node} exited with {process.exit_code()}; see {process.log_path}", pytrace=False)
            reason = broker.check(self.ctx)
            if reason is None:
                return
            time.sleep(1)
        pytest.fail(f"broker {node} not healthy within {timeout:.0f} s ({reason}); see {process.log_path}")

    def broker_pid(self, node: int) -> int:
        pid = self.brokers[node].pid
        assert pid is not None
        return pid

    def kill_broker(self, node: int) -> None:
        """``kill -9`` broker ``node`` and reap it."""
        process = self.brokers[node]
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.broker_pid(node), signal.SIGKILL)
        assert process.popen is not None
        process.popen.wait(timeout=30)

    def restart_broker(self, node: int, *, wait: bool = True) -> None:
        """Start a killed (or stopped) broker again, on its own log and data."""
        if self.brokers[node].running():
            self.kill_broker(node)
        self.start_broker(node, wait=wait)

    def stop_brokers(self) -> None:
        """SIGTERM them all at once (a controlled shutdown needs the quorum), SIGKILL the rest."""
        for process in self.brokers.values():
            if process.running() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.brokers.values():
            process.stop(timeout=30)

    # -- where things are ------------------------------------------------------------------
    def admin(self) -> AdminClient:
        return AdminClient(admin_config(self.runtime))

    def partition_leader(self, topic: str, partition: int = 0) -> int:
        metadata = self.admin().list_topics(topic, timeout=10)
        return int(metadata.topics[topic].partitions[partition].leader)

    def in_sync_replicas(self, topic: str, partition: int = 0) -> list[int]:
        metadata = self.admin().list_topics(topic, timeout=10)
        return sorted(metadata.topics[topic].partitions[partition].isrs)

    def active_controller(self) -> int:
        """The KRaft quorum's leader: the active controller (DescribeQuorum, KIP-595; Kafka's
        Metadata answer names a random live broker as "controller" under KRaft, KIP-590)."""
        from kafka.admin import KafkaAdminClient

        files = admin_files(self.runtime)
        client = KafkaAdminClient(bootstrap_servers=self.runtime.kafka_bootstrap, security_protocol="SSL",
                                  ssl_cafile=files.ca, ssl_certfile=files.cert, ssl_keyfile=files.key,
                                  request_timeout_ms=10_000)  # fmt: skip
        try:
            quorum = client.describe_metadata_quorum()
        finally:
            client.close()
        return int(quorum["topics"][0]["partitions"][0]["leader_id"])

    def broker_rss_kib(self) -> int:
        return sum(_rss_kib(self.broker_pid(n)) for n in self.brokers)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_cluster_platform(state: Path, base_port: int) -> ClusterPlatform:
    """Sluice first (nginx serves the CRLs and the JWKS every broker needs when it starts),
    then the three brokers, then wait for the whole platform."""
    shutil.rmtree(state, ignore_errors=True)
    platform = ClusterPlatform(state, base_port)
    try:
        deadline = time.monotonic() + 120
        while Nginx().check(platform.ctx) is not None:
            if platform.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the cluster platform's nginx never answered:\n{platform.tail()}", pytrace=False)
            time.sleep(0.5)
        for node in range(1, BROKER_COUNT + 1):
            platform.start_broker(node, wait=False)
        for node in range(1, BROKER_COUNT + 1):
            platform.wait_broker(node)
        platform.wait_ready(PLATFORM_START_TIMEOUT)
    except BaseException:
        stop_cluster_platform(platform)
        raise
    return platform


def stop_cluster_platform(platform: ClusterPlatform) -> None:
    platform.stop()
    platform.stop_brokers()


@pytest.fixture(scope="session")
def cluster_platform(runtime: Runtime) -> Iterator[ClusterPlatform]:
    """A separate Sluice on a 3-broker quorum (see the module's docstring)."""
    state = runtime.state_dir.parent / "cluster"
    offset = int(runtime.environ.get("SLUICE_PORT_OFFSET", "10000"))
    platform = start_cluster_platform(state, offset + 1000)
    try:
        yield platform
    finally:
        stop_cluster_platform(platform)


def forged_token(genuine: str) -> str:
    """``genuine``'s header and claims, signed by a stranger's key under the genuine kid."""
    import base64

    from authlib.jose import ECKey, jwt

    header = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "==="))
    payload = genuine.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return jwt.encode(header, claims, ECKey.generate_key("P-256", is_private=True)).decode()


__all__ = ["ClusterPlatform", "Provisioned", "cluster_platform", "cluster_ports", "eventually", "forged_token"]
