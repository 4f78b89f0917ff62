"""Two web nodes on the real stack: the test stack's own (node 1) and a second one started by
``sluice up --node web2 --components nginx,web,ingest`` on the same state directory, database,
Redis, Kafka and registry, with its own nginx and ASGI workers on its own ports.

A change made through one node's REST API must be refused on the other node within the
bound the README gives for one node (rights reach every ingest worker within 1 s, through
Redis), and a tenant CA created through one node must be accepted by the other node's nginx
within the bound of its launcher's CRL follower (certs.crl_files.follow_nginx_inputs)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs.crl_files import FOLLOW_PERIOD, nginx_inputs_fingerprint
from certs.platform_pki import PlatformPki
from certs.services import Issued, certificate_issue_generated
from config.env import BASE_DIR, Runtime
from devices.models import Device, DeviceGroup, Stream
from devices.registry import schema_register, value_subject
from ingest.topic_sync import stream_provision
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import api_token_create
from tests.conftest import make_user, unique_slug
from tests.integration.test_ingest import topic_size
from tests.platform.test_launcher import read_until
from tests.schemas import READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")
RIGHTS_BOUND = 1.0  # seconds: the README's bound for a right's end on every ingest worker
# The README's bound for a CA or CRL change made through one node to reach another node's
# nginx: the follower's period, plus the reload (new workers up, old ones no longer accepting).
NGINX_BOUND = FOLLOW_PERIOD + 1.0
NODE_START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Node:
    name: str
    web_port: int


def _offset(runtime: Runtime) -> int:
    return runtime.ports.redis - 6379  # the run's SLUICE_PORT_OFFSET


@pytest.fixture(scope="module")
def nodes(services: Runtime) -> Iterator[tuple[Node, Node]]:
    """Node 1 is the test stack's; node 2 is started here, the way the README says, on ports
    of this run's offset, and stopped (its whole tree) afterwards."""
    web_port, crl_port = _offset(services) + 1443, _offset(services) + 1080
    env = {**os.environ, "PYTHONPATH": f"{BASE_DIR}{os.pathsep}{BASE_DIR / 'platform'}"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sluicectl", "up", "--node", "web2", "--components", "nginx,web,ingest",
         "--web-port", str(web_port), "--crl-port", str(crl_port)],
        cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # the launcher prints "ready" once the node's nginx, web app and ingest workers answer
        # and its /healthz reaches the database, Redis, Kafka and the registry
        read_until(launcher, "ready in", timeout=NODE_START_TIMEOUT)
        yield Node("web1", services.ports.web), Node("web2", web_port)
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait(timeout=10)


# -- HTTPS clients --------------------------------------------------------------------------


def _request(node: Node, path: str, *, context: ssl.SSLContext, method: str = "POST", body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    request = urllib.request.Request(
        f"https://127.0.0.1:{node.web_port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
            payload = response.read()
            return response.status, json.loads(payload) if payload else {}
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        return exc.code, json.loads(payload) if payload else {}


@dataclass
class Operator:
    """An operator's API token, used on either node's REST API."""

    secret: str
    context: ssl.SSLContext

    def call(self, node: Node, path: str, *, method: str = "POST", body: Any = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.secret}"}
        return _request(node, f"/api/v1/{path}", context=self.context, method=method, body=body, headers=headers)


@pytest.fixture
def operator(services: Runtime) -> Operator:
    user = make_user(unique_slug("operator"), operator=True)
    _, secret = api_token_create(actor=ACTOR, user=user, name="two nodes")
    return Operator(secret, ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle)))


@dataclass
class Device2:
    """A provisioned device with a client certificate, posting through either node."""

    device: Device
    issued: Issued
    topic: str
    context: ssl.SSLContext

    def post(self, node: Node, value: float = 1.0) -> tuple[int, dict[str, Any]]:
        return _request(node, "/ingest/v1/records", context=self.context, body={"celsius": value})


def _device_in(tenant: Tenant, services: Runtime, tmp_path: Path, *, provision: bool = True) -> Device2:
    stream = Stream.objects.create(tenant=tenant, region="eu", type=unique_slug("temp"), partitions=1)
    subject = value_subject(stream.topic)
    if provision:
        stream_provision(stream=stream)
        schema_register(subject=subject, schema_str=json.dumps(READING_JSON), schema_type="JSON")
    group = DeviceGroup.objects.create(tenant=tenant, slug=unique_slug("g"), region="eu", device_type="t",
                                       stream=stream, schema_subject=subject, rate_limit_per_second=100)  # fmt: skip
    device = Device.objects.create(tenant=tenant, group=group, device_id=unique_slug("meter"))
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
    (tmp_path / "device.pem").write_text(issued.chain_pem)
    (tmp_path / "device.key").write_text(issued.key_pem or "")
    context = ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle))
    context.load_cert_chain(tmp_path / "device.pem", tmp_path / "device.key")
    return Device2(device, issued, stream.topic, context)


@pytest.fixture
def device(services: Runtime, operator: Operator, nodes: tuple[Node, Node], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Device2:  # fmt: skip
    # The tenant's DLQ topic is not part of these tests; provisioning is tested elsewhere.
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)
    node1, _ = nodes
    slug = unique_slug("t")
    status, body = operator.call(node1, "tenants/", body={"slug": slug, "name": "Two nodes"})
    assert status == 201, body
    device = _device_in(Tenant.objects.get(slug=slug), services, tmp_path)
    wait_until_both_accept(device, nodes)
    return device


# The fixtures' wait for node 2's nginx to follow a new tenant CA: generous, the bound
# itself is what test_a_tenant_created_through_node_1_ingests_through_node_2... proves.
SETUP_BOUND = 10 * NGINX_BOUND


def wait_until_both_accept(device: Device2, nodes: tuple[Node, Node]) -> None:
    """Both nodes answer the device 200, twice each: each node's ingest worker for this
    device holds its identity in its cache before the change under test.  Node 2's nginx
    follows the new tenant CA's CRL a moment after node 1 wrote it (FOLLOW_PERIOD), which a
    fast setup can beat: its ``certificate_invalid`` is waited out, within SETUP_BOUND, and so
    is a 503 (a part that an earlier test stopped and started may still be coming back: a
    device retries after Retry-After; what these tests judge comes after the setup)."""
    began = time.monotonic()
    for node in nodes:
        for value in (1.0, 2.0):
            while True:
                status, body = device.post(node, value)
                if status != 503 and (status == 200 or body.get("error", {}).get("code") != "certificate_invalid"):
                    break
                assert time.monotonic() - began < SETUP_BOUND, (node.name, body)
                if status == 503:
                    print(f"setup: {node.name} answered 503 {body}; retrying")
                time.sleep(0.05 if status != 503 else 0.5)
            assert status == 200, (node.name, body)


def refused_within(post: Callable[[], tuple[int, dict[str, Any]]], since: float, code: str, bound: float) -> float:
    """Post until refused with ``code``; the seconds from ``since`` until then (< ``bound``)."""
    while True:
        status, body = post()
        elapsed = time.monotonic() - since
        if status != 200:
            assert status in (401, 403), body
            assert body["error"]["code"] == code, body
            return elapsed
        assert elapsed < bound, f"still accepted {elapsed:.2f} s after the change"
        time.sleep(0.02)


# -- the tests ------------------------------------------------------------------------------


def test_a_device_posts_through_both_nodes_and_every_record_reaches_its_topic(
    services: Runtime, nodes: tuple[Node, Node], device: Device2
) -> None:
    # given a device of a tenant created through node 1's API, accepted by both nodes (the fixture)
    # when it posts once more through each node
    node1, node2 = nodes
    first, second = device.post(node1, 10.0), device.post(node2, 20.0)

    # then both answered 200 and every accepted record is on the group's topic
    assert (first[0], second[0]) == (200, 200), (first, second)
    assert topic_size(device.topic, services) == 2 * 2 + 2


def test_a_certificate_revoked_through_node_1_is_refused_on_node_2_within_the_bound(
    nodes: tuple[Node, Node], device: Device2, operator: Operator
) -> None:
    # given a device that node 2 has served (its ingest worker caches the identity)
    node1, node2 = nodes
    tenant, serial = device.device.tenant.slug, device.issued.certificate.serial

    # when an operator revokes its certificate through node 1's REST API
    status, body = operator.call(node1, f"tenants/{tenant}/certificates/{serial}/revoke",
                                 body={"reason": "key_compromise"})  # fmt: skip
    answered = time.monotonic()
    assert status == 200, body

    # then node 2 refuses it within the bound, and node 1 too
    took = refused_within(lambda: device.post(node2), answered, "certificate_revoked", RIGHTS_BOUND)
    assert device.post(node1)[1]["error"]["code"] == "certificate_revoked"
    print(f"node 2 refused the revoked certificate {took:.3f} s after node 1's API answered")


def test_a_tenant_suspended_through_node_2_is_refused_on_node_1_within_the_bound(
    nodes: tuple[Node, Node], device: Device2, operator: Operator
) -> None:
    # given a device that node 1 has served
    node1, node2 = nodes

    # when an operator suspends its tenant through node 2's REST API
    status, body = operator.call(node2, f"tenants/{device.device.tenant.slug}/suspend")
    answered = time.monotonic()
    assert status == 200, body

    # then node 1 refuses it within the bound
    took = refused_within(lambda: device.post(node1), answered, "tenant_suspended", RIGHTS_BOUND)
    print(f"node 1 refused the suspended tenant {took:.3f} s after node 2's API answered")


def test_a_token_whose_client_is_revoked_through_one_node_is_refused_on_the_other(
    nodes: tuple[Node, Node], operator: Operator, make_device: Any
) -> None:
    # given a device holding an access token, served by both nodes
    node1, node2 = nodes
    sender = make_device()
    token = sender.token()
    context = ssl.create_default_context(cafile=str(PlatformPki(sender.runtime.pki_dir).trust_bundle))

    def post(node: Node) -> tuple[int, dict[str, Any]]:
        return _request(node, "/ingest/v1/records", context=context, body={"celsius": 1.0},
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip

    for node in nodes:
        for _ in range(2):
            assert post(node)[0] == 200

    # when its OAuth client is revoked through node 1's REST API
    status, body = operator.call(node1, f"tenants/{sender.tenant}/oauth-clients/{sender.client.client_id}/",
                                 method="DELETE")  # fmt: skip
    answered = time.monotonic()
    assert status == 204, body

    # then node 2 refuses the token it still holds within the bound
    took = refused_within(lambda: post(node2), answered, "client_revoked", RIGHTS_BOUND)
    print(f"node 2 refused the revoked client's token {took:.3f} s after node 1's API answered")


def test_a_tenant_created_through_node_1_ingests_through_node_2_within_the_nginx_bound(
    services: Runtime, nodes: tuple[Node, Node], operator: Operator, tmp_path: Path
) -> None:
    # given a device certificate ready before its tenant's CA is known to any nginx: the tenant
    # is created through node 1's API and the device's rows and certificate written at once
    # (nothing provisioned in Kafka yet, so node 2's verdict on the chain is all that is tried)
    node1, node2 = nodes
    caught_up(services)  # an earlier test's change may still be on its way to node 2's nginx
    reloads_before = reloads(services)
    slug = unique_slug("t")
    status, body = operator.call(node1, "tenants/", body={"slug": slug, "name": "New on node 1"})
    answered = time.monotonic()
    assert status == 201, body
    device = _device_in(Tenant.objects.get(slug=slug), services, tmp_path, provision=False)

    # when it posts through node 2 until node 2's nginx accepts the chain of the new CA
    while True:
        status, body = device.post(node2)
        took = time.monotonic() - answered
        if body.get("error", {}).get("code") != "certificate_invalid":
            break
        assert took < NGINX_BOUND, f"node 2's nginx still refused the new CA's chain after {took:.2f} s"
        time.sleep(0.05)
    print(f"node 2's nginx accepted the new tenant CA {took:.3f} s after node 1's API answered")

    # then the application judged it (no schema yet: the chain itself was accepted) ...
    assert (status, body["error"]["code"]) == (409, "schema_not_found"), body
    # ... and once its stream exists, node 2 writes its records
    stream_provision(stream=device.device.group.stream)
    schema_register(subject=device.device.group.schema_subject, schema_str=json.dumps(READING_JSON),
                    schema_type="JSON")  # fmt: skip
    status, body = device.post(node2)
    assert status == 200, body
    assert topic_size(device.topic, services) == 1
    # and the new CA cost each node's nginx one reload, no more (a reload ends every device's
    # keep-alive connection): node 1's by the API's process, node 2's by its launcher
    time.sleep(2 * FOLLOW_PERIOD)  # a second reload, if any, would have come by now
    assert {name: count - reloads_before[name] for name, count in reloads(services).items()} == {"web1": 1, "web2": 1}


def caught_up(services: Runtime) -> None:
    """Wait until each node's nginx has loaded the current CRL and trust bundles: a tenant an
    earlier test created reaches node 2 through its launcher's follower up to FOLLOW_PERIOD
    later, and that reload must not be counted as this test's (the clean-clone CI saw web2
    reload twice in this test's window: the earlier test's change and this one's)."""
    current = nginx_inputs_fingerprint(services)
    markers = [
        services.run_dir / "nginx-inputs.sha256",
        services.state_dir / "nodes" / "web2" / "run" / "nginx-inputs.sha256",
    ]
    deadline = time.monotonic() + SETUP_BOUND
    while any(not marker.exists() or marker.read_text() != current for marker in markers):
        assert time.monotonic() < deadline, "a node's nginx never loaded the current bundles"
        time.sleep(0.05)
    time.sleep(FOLLOW_PERIOD)  # the reload that wrote the marker has signalled nginx by now


def reloads(services: Runtime) -> dict[str, int]:
    """How many times each node's nginx has reloaded its configuration (its error log notes
    every SIGHUP)."""
    logs = {"web1": services.logs_dir, "web2": services.state_dir / "nodes" / "web2" / "logs"}
    return {name: (path / "nginx-error.log").read_text().count("(SIGHUP) received") for name, path in logs.items()}
