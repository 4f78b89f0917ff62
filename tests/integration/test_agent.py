"""sluice-agent (platform/agent) against the real nginx, ingest, registry and Kafka: the agent
runs as a gateway runs it, the installed ``sluice-agent`` command, and the tests read the topic
back.  The network between the agent and nginx is a TCP link the test can cut (``Link``), as a
gateway's uplink fails; the agent itself is killed with SIGKILL."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sluice_agent.buffer import Buffer
from sluice_agent.transport import Credentials, Sluice

from certs.models import Certificate
from certs.platform_pki import PlatformPki
from certs.services import certificate_revoke
from config.env import Runtime
from tenants.audit import Actor
from tenants.oauth.services import oauth_client_create
from tests.integration.test_ingest import Sender, consume, topic_size, wire
from tests.schemas import READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")
AGENT = Path(sys.executable).parent / "sluice-agent"


class Link:
    """A TCP path from the agent to nginx that can be cut (connections reset, new ones refused)
    and restored on the same port, as a gateway's uplink goes down and comes back."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        assert self.server is not None
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.server = None
        with self.lock:
            for connection in self.open:
                # a reset, mid-request if one is under way (shutdown wakes the pump blocked in recv)
                with contextlib.suppress(OSError):
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    connection.shutdown(socket.SHUT_RDWR)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        with self.lock:
            self.open.discard(source)
        source.close()


class Gateway:
    """A device's certificate and key in files, a state directory, and the agent's command line."""

    def __init__(self, services: Runtime, sender: Sender, tmp_path: Path, port: int | None = None) -> None:
        self.sender = sender
        self.cert = tmp_path / "device.crt"
        self.key = tmp_path / "device.key"
        self.cert.write_text(sender.issued.chain_pem)
        self.key.write_text(sender.issued.key_pem or "")
        self.key.chmod(0o600)
        self.state = tmp_path / "agent-state"
        self.ca = PlatformPki(services.pki_dir).trust_bundle
        self.url = f"https://127.0.0.1:{port or services.ports.web}"
        self.log = tmp_path / "agent.log"

    def command(self, *source: str, drain: bool = True, **options: Any) -> list[str]:
        extra = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
        return [str(AGENT), "run", *source, "--url", self.url, "--ca", str(self.ca), "--cert", str(self.cert),
                "--key", str(self.key), "--state", str(self.state), "--verbose",
                *(["--drain"] if drain else []), *extra]  # fmt: skip

    def start(self, *source: str, drain: bool = False, **options: Any) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(self.command(*source, drain=drain, **options), stdout=log, stderr=log)

    def run(self, records: list[dict[str, Any]], **options: Any) -> subprocess.CompletedProcess[str]:
        lines = "".join(json.dumps(r) + "\n" for r in records)
        return subprocess.run(self.command("--stdin", **options), input=lines, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip

    def status(self) -> dict[str, Any]:
        result = subprocess.run([str(AGENT), "status", "--state", str(self.state)], capture_output=True, text=True,
                                check=True)  # fmt: skip
        return json.loads(result.stdout)


def readings(start: int, count: int) -> str:
    return "".join(json.dumps({"celsius": n, "site": f"r{n}"}) + "\n" for n in range(start, start + count))


def celsius_in(topic: str, services: Runtime, expected: int) -> Counter[float]:
    return Counter(json.loads(wire(m.value())[2])["celsius"] for m in consume(topic, services, expected=expected))


def wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("transport", ["https", "mqtt"])
def test_a_cut_network_and_a_killed_agent_lose_nothing_and_write_nothing_twice(
    services: Runtime, make_sender: Any, tmp_path: Path, transport: str
) -> None:
    # given a gateway following a file of readings through an uplink the test controls: to
    # nginx (HTTPS), or to Mosquitto (--mqtt; EST and the rest stay on HTTPS)
    sender = make_sender("JSON", READING_JSON)
    over_mqtt = transport == "mqtt"
    link = Link(services.ports.mqtt if over_mqtt else services.ports.web)
    gateway = Gateway(services, sender, tmp_path, port=None if over_mqtt else link.port)
    options = {"mqtt": f"127.0.0.1:{link.port}"} if over_mqtt else {}
    file = tmp_path / "readings.ndjson"
    file.write_text(readings(0, 150))
    agent = gateway.start("--file", str(file), batch_records=10, **options)

    # when the uplink is cut once the first batches are in Kafka, while readings keep coming
    wait_for(lambda: topic_size(sender.topic, services) >= 20, "the first batches")
    link.cut()
    with file.open("a") as handle:
        handle.write(readings(150, 100))
    wait_for(lambda: "Sluice unreachable" in gateway.log.read_text(), "the agent to find the uplink down")
    # and the agent is killed (a crash, a power cut) with records still buffered
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    left = gateway.status()["buffered"]
    assert left > 0
    with file.open("a") as handle:  # written while the agent is down
        handle.write(readings(250, 50))

    # and then the uplink comes back and the agent starts again, until its buffer is empty
    link.restore()
    restarted = gateway.start("--file", str(file), drain=True, batch_records=10, **options)
    assert restarted.wait(120) == 0, gateway.log.read_text()[-3000:]

    # then Kafka holds every reading exactly once (over MQTT, a batch sent again carries the
    # same keys, which the bridge wrote once; its writes land shortly after the PUBACKs)
    wait_for(lambda: topic_size(sender.topic, services) >= 300, "every reading in Kafka")
    time.sleep(1.0 if over_mqtt else 0.0)  # anything written twice would show by now
    seen = celsius_in(sender.topic, services, expected=300)
    assert sorted(seen) == list(range(300)), gateway.log.read_text()[-3000:]
    assert set(seen.values()) == {1}
    assert topic_size(sender.topic, services) == 300
    # and nothing is left, dropped or rejected
    assert {k: v for k, v in gateway.status().items() if k != "rejected_records"} == {
        "buffered": 0, "buffered_bytes": 0, "batches_in_flight": 0, "dropped": 0, "rejected": 0}  # fmt: skip


def test_a_batch_written_before_the_agent_died_is_not_written_again(
    services: Runtime, make_sender: Any, tmp_path: Path
) -> None:
    # given an agent that sent a batch, which Sluice wrote, and died before it stored the acknowledgement
    sender = make_sender("JSON", READING_JSON)
    gateway = Gateway(services, sender, tmp_path)
    buffer = Buffer(gateway.state / "buffer.sqlite3")
    buffer.add([json.dumps({"celsius": n}) for n in range(5)])
    batch = buffer.batch_next()
    assert batch is not None
    sluice = Sluice(gateway.url, Credentials(ca=gateway.ca, cert=gateway.cert, key=gateway.key))
    assert sluice.send(batch.body, batch.key).status == 200
    sluice.close()
    buffer.close()

    # when the agent starts again
    result = gateway.run([])

    # then it sent that batch again under its key, Sluice answered with the first answer,
    # and the topic holds each record once
    assert result.returncode == 0, result.stderr
    assert f"sent batch {batch.key}: 5 records (a retry: Sluice had it already)" in result.stderr
    assert sorted(celsius_in(sender.topic, services, expected=5).elements()) == [0, 1, 2, 3, 4]
    assert topic_size(sender.topic, services) == 5
    assert gateway.status()["buffered"] == 0


def test_invalid_records_are_set_aside_and_the_others_delivered(
    services: Runtime, make_sender: Any, tmp_path: Path
) -> None:
    # given a gateway with four readings of which one breaks the schema and one is not JSON
    sender = make_sender("JSON", READING_JSON)
    gateway = Gateway(services, sender, tmp_path)
    records = [{"celsius": 1}, {"celsius": "warm"}, {"celsius": 3}]

    # when it forwards them (the broken line among them)
    lines = json.dumps(records[0]) + "\nnot json\n" + "".join(json.dumps(r) + "\n" for r in records[1:])
    result = subprocess.run(gateway.command("--stdin"), input=lines, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip

    # then it finishes, the valid ones are in Kafka, the others in its rejected table with why
    assert result.returncode == 0, result.stderr
    assert sorted(celsius_in(sender.topic, services, expected=2).elements()) == [1, 3]
    assert topic_size(sender.topic, services) == 2
    status = gateway.status()
    assert (status["buffered"], status["rejected"]) == (0, 2)
    rejected = {r["code"]: r for r in status["rejected_records"]}
    assert rejected["malformed_json"]["record"] == "not json"
    assert json.loads(rejected["type"]["record"]) == {"celsius": "warm"}
    assert "/lines/2/celsius" in rejected["type"]["detail"]
    assert "2 rejected" in result.stderr


def test_a_revoked_certificate_stops_the_agent_with_its_records_kept(
    services: Runtime, make_sender: Any, tmp_path: Path
) -> None:
    # given a device whose certificate was revoked (ingest refuses it within a second)
    sender = make_sender("JSON", READING_JSON)
    gateway = Gateway(services, sender, tmp_path)
    certificate_revoke(actor=ACTOR, certificate=sender.issued.certificate, reason="key_compromise")
    wait_for(lambda: sender.post({"celsius": 0})[0] == 403, "ingest to refuse the certificate", timeout=10)
    before = topic_size(sender.topic, services)

    # when its agent forwards readings
    result = gateway.run([{"celsius": 1}, {"celsius": 2}])

    # then it stops at once, saying why, and keeps the readings for a working identity
    assert result.returncode == 3
    assert "403 certificate_revoked" in result.stderr
    assert "2 buffered records are kept" in result.stderr
    assert gateway.status()["buffered"] == 2
    assert topic_size(sender.topic, services) == before


def test_the_agent_renews_its_certificate_over_est_before_it_expires(
    services: Runtime, make_sender: Any, tmp_path: Path
) -> None:
    # given a gateway told to renew when less than ~30 years are left (so: now)
    sender = make_sender("JSON", READING_JSON)
    gateway = Gateway(services, sender, tmp_path)
    key_before = gateway.key.read_bytes()

    # when it forwards readings
    result = gateway.run([{"celsius": 1}, {"celsius": 2}], renew_before=10**9)

    # then it renewed over EST first: its certificate file holds the new certificate and its tenant CA,
    # the old one is superseded, the key is the same, and the readings went with the new certificate
    assert result.returncode == 0, result.stderr
    assert "certificate renewed over EST" in result.stderr
    renewed = Certificate.objects.get(tenant=sender.device.tenant, origin=Certificate.Origin.EST_RENEWAL)
    assert renewed.status == Certificate.Status.ACTIVE
    assert Certificate.objects.get(serial=sender.issued.certificate.serial).status == Certificate.Status.SUPERSEDED
    chain = gateway.cert.read_text()
    assert chain.count("BEGIN CERTIFICATE") == 2
    assert chain.startswith(renewed.certificate_pem.strip().splitlines()[0])
    assert renewed.certificate_pem.strip() in chain
    assert gateway.key.read_bytes() == key_before
    assert sorted(celsius_in(sender.topic, services, expected=2).elements()) == [1, 2]


def test_a_token_device_forwards_with_client_credentials(services: Runtime, make_device: Any, tmp_path: Path) -> None:
    # given a device of a token group with an OAuth2 client, its secret in a file
    device = make_device()  # a group whose credential policy is oauth2
    client, secret = oauth_client_create(actor=ACTOR, tenant=device.device.tenant, kind="device", name="agent",
                                         scopes=["ingest:write"], device=device.device)  # fmt: skip
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(secret)
    state = tmp_path / "agent-state"
    command = [str(AGENT), "run", "--stdin", "--drain", "--url", f"https://127.0.0.1:{services.ports.web}",
               "--ca", str(PlatformPki(services.pki_dir).trust_bundle), "--client-id", client.client_id,
               "--client-secret-file", str(secret_file), "--state", str(state)]  # fmt: skip

    # when its agent forwards readings
    result = subprocess.run(command, input='{"celsius": 7}\n{"celsius": 8}\n', capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip

    # then they are in the group's topic
    assert result.returncode == 0, result.stderr
    assert sorted(celsius_in(device.topic, services, expected=2).elements()) == [7, 8]


# -- over MQTT ------------------------------------------------------------------------------


def test_over_mqtt_a_token_device_forwards_with_its_token_as_the_password(
    services: Runtime, make_device: Any, tmp_path: Path
) -> None:
    # given a device of a token group with an OAuth2 client
    device = make_device()
    client, secret = oauth_client_create(actor=ACTOR, tenant=device.device.tenant, kind="device", name="agent",
                                         scopes=["ingest:write"], device=device.device)  # fmt: skip
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(secret)
    command = [str(AGENT), "run", "--stdin", "--drain", "--url", f"https://127.0.0.1:{services.ports.web}",
               "--mqtt", f"127.0.0.1:{services.ports.mqtt_token}",
               "--ca", str(PlatformPki(services.pki_dir).trust_bundle), "--client-id", client.client_id,
               "--client-secret-file", str(secret_file), "--state", str(tmp_path / "agent-state")]  # fmt: skip

    # when its agent forwards readings over MQTT
    result = subprocess.run(command, input='{"celsius": 7}\n{"celsius": 8}\n', capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip

    # then the bridge wrote them to the group's topic
    assert result.returncode == 0, result.stderr
    wait_for(lambda: topic_size(device.topic, services) >= 2, "both readings")
    assert sorted(celsius_in(device.topic, services, expected=2).elements()) == [7, 8]


def test_over_mqtt_a_batch_written_before_the_agent_died_is_not_written_again(
    services: Runtime, make_sender: Any, tmp_path: Path
) -> None:
    from sluice_agent.mqtt import MqttSluice

    # given an agent that published a batch over MQTT, which the bridge wrote, and died before
    # it stored the acknowledgement
    sender = make_sender("JSON", READING_JSON)
    gateway = Gateway(services, sender, tmp_path)
    mqtt = f"127.0.0.1:{services.ports.mqtt}"
    buffer = Buffer(gateway.state / "buffer.sqlite3")
    buffer.add([json.dumps({"celsius": n}) for n in range(5)])
    batch = buffer.batch_next()
    assert batch is not None
    first = MqttSluice(mqtt, Sluice(gateway.url, Credentials(ca=gateway.ca, cert=gateway.cert, key=gateway.key)))
    assert first.send(batch.body, batch.key).status == 200
    first.close()
    buffer.close()
    wait_for(lambda: topic_size(sender.topic, services) >= 5, "the first sending in Kafka")

    # when the agent starts again and publishes that batch again, under the same keys
    result = gateway.run([], mqtt=mqtt)
    assert result.returncode == 0, result.stderr
    assert f"sent batch {batch.key}: 5 records" in result.stderr

    # then the bridge skipped what it had written: the topic holds each record once
    time.sleep(2.0)  # a second copy would be written by now
    assert sorted(celsius_in(sender.topic, services, expected=5).elements()) == [0, 1, 2, 3, 4]
    assert topic_size(sender.topic, services) == 5
    assert gateway.status()["buffered"] == 0


def test_over_mqtt_a_batch_stays_on_the_gateway_until_kafka_has_it(
    services: Runtime, make_sender: Any, tmp_path: Path
) -> None:
    import os

    from ingest.mqtt_bridge import ready_file

    # given the platform's MQTT bridge paused (SIGSTOP): Mosquitto takes messages, nothing
    # reaches Kafka
    sender = make_sender("JSON", READING_JSON)
    gateway = Gateway(services, sender, tmp_path)
    file = tmp_path / "readings.ndjson"
    file.write_text(readings(0, 5))
    bridge = int(ready_file(services).read_text())
    os.kill(bridge, signal.SIGSTOP)
    agent = None
    try:
        # when the agent sends its readings over MQTT (Mosquitto acknowledges each publish)
        agent = gateway.start("--file", str(file), mqtt=f"127.0.0.1:{services.ports.mqtt}")
        buffer = gateway.state / "buffer.sqlite3"
        wait_for(lambda: buffer.exists() and gateway.status()["batches_in_flight"] == 1, "the batch to be sent")
        time.sleep(3.0)
        # then the gateway still holds them: Mosquitto's PUBACK is not Kafka's acknowledgement
        assert gateway.status()["buffered"] == 5
        assert topic_size(sender.topic, services) == 0
    finally:
        os.kill(bridge, signal.SIGCONT)
    # and once the bridge wrote them and confirmed their keys, they leave the gateway
    wait_for(lambda: gateway.status()["buffered"] == 0, "the confirmation")
    assert sorted(celsius_in(sender.topic, services, expected=5).elements()) == [0, 1, 2, 3, 4]
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
