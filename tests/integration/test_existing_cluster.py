"""Sluice on a Kafka cluster and a registry it does not start: a second Sluice (its own state
directory, ports and PKI) pointed at the cluster platform's three brokers with an admin
certificate the cluster's CA issued it, and at a registry over http(s) with basic
credentials; it provisions, ingests and the records are on the cluster."""

from __future__ import annotations

import base64
import secrets
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from certs import ca
from certs.crl_files import ROOT_CRL_NAME
from certs.platform_pki import PlatformPki, load_root
from certs.principals import PLATFORM_ADMIN, platform_subject
from devices.registry_client import FORWARDED_FOR, httpx
from sluicectl.launcher import child_env
from tests.integration.cluster import ClusterPlatform, SluiceProcess, cluster_ports
from tests.integration.test_cluster import _read_all, _topic_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
REGISTRY_USER = "sluice-b"


class RegistryOverHttp:
    """The cluster platform's Apicurio, reached over plain HTTP with basic credentials, as an
    external registry is (Apicurio itself listens on a Unix socket only): a small forwarding
    server on loopback that refuses any request without the credentials."""

    def __init__(self, socket_path: Path, port: int) -> None:
        self.password = secrets.token_urlsafe(16)
        expected = "Basic " + base64.b64encode(f"{REGISTRY_USER}:{self.password}".encode()).decode()
        upstream = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=10)

        class Forward(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                answer = upstream.request(self.command, f"http://registry{self.path}", content=body,
                                          headers={**headers, "X-Forwarded-For": FORWARDED_FOR})  # fmt: skip
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Forward)
        self.url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def admin_credential_from_the_cluster(cluster: ClusterPlatform, directory: Path) -> dict[str, str]:
    """What a cluster's operator hands Sluice: a client certificate from the cluster's CA whose
    principal is a super user (User:sluice-admin), its key, and that CA."""
    rt = cluster.runtime
    root = load_root(rt)
    key = ca.generate_key()
    cert = ca.issue_leaf(issuer=root, subject=platform_subject(PLATFORM_ADMIN), public_key=key.public_key(),
                         usage=ca.Usage.CLIENT, valid_days=1, crl_urls=[rt.crl_url(ROOT_CRL_NAME)])  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "admin.crt").write_bytes(ca.certificate_pem(cert))
    (directory / "admin.key").write_bytes(ca.private_key_pem(key))
    shutil.copy(PlatformPki(rt.pki_dir).trust_bundle, directory / "cluster-ca.pem")
    return {
        "SLUICE_KAFKA_CERT_FILE": str(directory / "admin.crt"),
        "SLUICE_KAFKA_KEY_FILE": str(directory / "admin.key"),
        "SLUICE_KAFKA_CA_FILE": str(directory / "cluster-ca.pem"),
    }


@pytest.fixture
def second_sluice(cluster_platform: ClusterPlatform, tmp_path: Path) -> Iterator[SluiceProcess]:
    offset = int(cluster_platform.runtime.environ.get("SLUICE_WEB_PORT", "0")) - 443  # the cluster's base
    base = offset + 500
    registry = RegistryOverHttp(cluster_platform.runtime.registry_socket, base + 81)
    state = cluster_platform.runtime.state_dir.parent / "cluster-b"
    shutil.rmtree(state, ignore_errors=True)
    env = child_env({
        "SLUICE_ENV": "development", "SLUICE_STATE_DIR": str(state), "SLUICE_PORT_OFFSET": "0",
        **cluster_ports(base),
        "SLUICE_KAFKA_BOOTSTRAP": cluster_platform.runtime.kafka_bootstrap,
        **admin_credential_from_the_cluster(cluster_platform, tmp_path / "from-the-operator"),
        "SLUICE_REGISTRY_URL": registry.url, "SLUICE_REGISTRY_USERNAME": REGISTRY_USER,
        "SLUICE_REGISTRY_PASSWORD": registry.password,
        "SLUICE_JWKS_URL": f"http://127.0.0.1:{cluster_ports(base)['SLUICE_CRL_PORT']}/oauth/jwks.json",
        "SLUICE_DEFAULT_PARTITIONS": "3", "SLUICE_WORKER_CONCURRENCY": "1", "SLUICE_WEB_WORKERS": "1",
        "SLUICE_INGEST_WORKERS": "1",
    })  # fmt: skip
    sluice = SluiceProcess(env)
    try:
        sluice.wait_ready(300)
        yield sluice
    finally:
        sluice.stop()
        registry.close()


def test_a_second_sluice_provisions_and_ingests_on_a_cluster_it_does_not_start(
    cluster_platform: ClusterPlatform, second_sluice: SluiceProcess, tmp_path: Path
) -> None:
    # given a Sluice that started no broker and no registry of its own
    logs = second_sluice.runtime.logs_dir
    assert not any(logs.glob("kafka*.log"))
    assert not (logs / "registry.log").exists()
    assert "(external: Sluice does not start it)" in "".join(second_sluice.output)

    # when it provisions a tenant, a stream and a device, and the device posts telemetry
    provisioned = second_sluice.provision(tmp_path / "device", kind="humidity")
    for value in (1.0, 2.0, 3.0):
        status, body = provisioned.device("POST", "/ingest/v1/records", {"records": [{"celsius": value}]})
        assert status == 200, body

    # then the topic is on the cluster with its replication, and the records are there
    replicas, min_isr = _topic_state(cluster_platform.admin(), provisioned.topic)
    assert replicas == [[1, 2, 3]] * 3
    assert min_isr == "2"
    values = _read_all(cluster_platform, provisioned.topic, 4)  # the provisioning POST and these three
    assert len(values) == 4, values
    assert all(b"celsius" in v for v in values), values
    # and its schema is in the external registry, reached over http with its credentials
    with httpx.Client(auth=(REGISTRY_USER, second_sluice.env["SLUICE_REGISTRY_PASSWORD"])) as client:
        subjects = client.get(f"{second_sluice.env['SLUICE_REGISTRY_URL']}/subjects").json()
    assert f"{provisioned.topic}-value" in subjects
