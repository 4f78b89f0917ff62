"""MQTT devices on the real Mosquitto that ``sluice test`` starts (Debian's 2.0, Sluice's auth
plugin asking ingest.mqtt_auth): the same identities and rules as HTTPS.

A device publishes over mTLS to its own topic only, subscribes to nothing of another
device; a token device connects with its access token as the password; a revoked
certificate, a wrong or expired token are refused at connect; and an open session ends
within ``BOUND_SECONDS`` (the README's bound) when its certificate is revoked, its device
disabled or its tenant suspended.  Tested with paho-mqtt (MQTT 5, so a refused publish
shows as PUBACK reason 135) and with Debian's ``mosquitto_pub``/``mosquitto_sub``."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from certs.platform_pki import PlatformPki
from certs.services import certificate_revoke, tenant_cas_revoke
from config.env import Runtime
from devices.models import Device
from devices.services import device_update
from ingest.mqtt_auth import device_topic
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import tenant_set_status
from tests.integration import test_ingest, test_ingest_bearer
from tests.integration.test_ingest import Sender
from tests.integration.test_ingest_bearer import TokenDevice

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")
# The README's bound for a change of rights to end an open MQTT session.
BOUND_SECONDS = 5.0
NOT_AUTHORIZED = 135  # MQTT 5 reason code (PUBACK, SUBACK, CONNACK)
# PUBACK of an accepted publish: 0, or 16 "no matching subscribers" (accepted; nobody listens yet)
ACCEPTED = (0, 16)
BAD_CREDENTIALS = 134  # CONNACK "Bad user name or password"
BIN = "/usr/bin"

# The HTTPS ingest tests' fixtures: a device with a certificate, a device of a token group.
make_sender = test_ingest.make_sender
make_device = test_ingest_bearer.make_device


@dataclass
class Connection:
    """A paho MQTT 5 client over TLS, with what it was told."""

    client: mqtt.Client
    connack: list[int] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    disconnected_at: list[float] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)
    subacks: dict[int, list[int]] = field(default_factory=dict)

    def publish(self, topic: str, payload: bytes = b'{"celsius": 21.5}') -> int:
        """Publish at QoS 1; the PUBACK's reason code (``ACCEPTED``, or 135: not authorized)."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in self.pubacks:
            assert time.monotonic() < deadline, f"no PUBACK for {topic}"
            time.sleep(0.02)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; the SUBACK's reason code (0-2: granted, 135: not authorized)."""
        _, mid = self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 10
        while mid not in self.subacks:
            assert time.monotonic() < deadline, f"no SUBACK for {topic}"
            time.sleep(0.02)
        return self.subacks[mid][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(runtime: Runtime, client_id: str, *, port: int, chain: tuple[Path, Path] | None = None,
            password: str | None = None) -> Connection:  # fmt: skip
    """Connect and wait for the CONNACK (``connack[0]``: 0 accepted, else the refusal)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(PlatformPki(runtime.pki_dir).trust_bundle),
                   certfile=str(chain[0]) if chain else None, keyfile=str(chain[1]) if chain else None)  # fmt: skip
    if password is not None:
        client.username_pw_set("device", password)
    conn = Connection(client)

    def on_connect(_c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None) -> None:
        conn.connack.append(reason.value)

    def on_disconnect(_c: Any, _u: Any, _f: Any, _reason: ReasonCode, _p: Properties | None) -> None:
        conn.disconnected_at.append(time.monotonic())
        conn.disconnected.set()

    def on_publish(_c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None) -> None:
        conn.pubacks[mid] = reason.value

    def on_subscribe(_c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Properties | None) -> None:
        conn.subacks[mid] = [r.value for r in reasons]

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        conn.messages.append((message.topic, message.payload))

    client.on_connect, client.on_disconnect, client.on_publish = on_connect, on_disconnect, on_publish
    client.on_subscribe, client.on_message = on_subscribe, on_message
    client.reconnect_delay_set(60, 60)  # a refused or ended session is not retried during a test
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not conn.connack and not conn.disconnected.is_set():
        assert time.monotonic() < deadline, "no CONNACK"
        time.sleep(0.02)
    if not conn.connack:
        conn.connack.append(-1)  # the connection closed before any CONNACK (TLS refused)
    return conn


@pytest.fixture
def chain_of(tmp_path: Path) -> Callable[[Sender], tuple[Path, Path]]:
    def write(sender: Sender) -> tuple[Path, Path]:
        name = sender.issued.certificate.serial[:12]
        chain, key = tmp_path / f"{name}-chain.pem", tmp_path / f"{name}.key"
        chain.write_text(sender.issued.chain_pem)
        key.write_text(sender.issued.key_pem or "")
        return chain, key

    return write


@pytest.fixture
def connections() -> Iterator[list[Connection]]:
    opened: list[Connection] = []
    yield opened
    for conn in opened:
        conn.close()


def topic_of(device: Device) -> str:
    return device_topic(device.tenant.slug, device.group.slug, device.device_id)


def client_id_of(device: Device) -> str:
    return f"{device.tenant.slug}/{device.device_id}"


def device_session(services: Runtime, sender: Sender, chain: tuple[Path, Path],
                   opened: list[Connection]) -> Connection:  # fmt: skip
    conn = connect(services, client_id_of(sender.device), port=services.ports.mqtt, chain=chain)
    opened.append(conn)
    assert conn.connack == [0]
    return conn


def test_a_device_publishes_to_its_own_topic_and_nowhere_else(
    services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given two devices of two tenants, each with its certificate, connected over mTLS
    alice, bob = make_sender(), make_sender()
    a = device_session(services, alice, chain_of(alice), connections)
    device_session(services, bob, chain_of(bob), connections)

    # when alice subscribes to her own topics and publishes to her records topic
    assert a.subscribe(f"{topic_of(alice.device)[: -len('records')]}#") in (0, 1)
    # then the broker accepts it and delivers it back to her own subscription
    assert a.publish(topic_of(alice.device)) in ACCEPTED
    deadline = time.monotonic() + 10
    while not a.messages:
        assert time.monotonic() < deadline, "alice's own record never came back"
        time.sleep(0.05)
    assert a.messages == [(topic_of(alice.device), b'{"celsius": 21.5}')]

    # and publishing to bob's topic, another name under her own prefix, or outside Sluice's
    # namespace is refused by the broker (PUBACK 135)
    for topic in (topic_of(bob.device), f"{topic_of(alice.device)}/extra", "elsewhere", "sluice/records"):
        assert a.publish(topic) == NOT_AUTHORIZED, topic
    # and subscribing to bob's topics, to everything, or to a wildcard over devices is refused
    for pattern in (topic_of(bob.device), "#", f"sluice/{bob.device.tenant.slug}/+/+/records", "sluice/+/#"):
        assert a.subscribe(pattern) == NOT_AUTHORIZED, pattern


def test_a_session_a_change_touched_but_left_its_right_publishes_on(
    services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    from tenants import rights
    from tenants.rights import RightsChange

    # given a device publishing over mTLS (the plugin remembers its allowed publish)
    sender = make_sender()
    conn = device_session(services, sender, chain_of(sender), connections)
    for _ in range(5):
        assert conn.publish(topic_of(sender.device)) in ACCEPTED

    # when a change of rights touches it but leaves its right (the plugin forgets, asks again,
    # and is answered once the re-check passed)
    device = sender.device
    assert rights.publish(RightsChange(tenant_id=device.tenant_id, devices=frozenset({device.pk})))
    time.sleep(1.0)  # a poll (0.25 s) and a re-check (0.25 s) later

    # then it goes on publishing, and its session stays, as does its right to its topic only
    for _ in range(5):
        assert conn.publish(topic_of(sender.device)) in ACCEPTED
    assert conn.publish(f"{topic_of(sender.device)}/extra") == NOT_AUTHORIZED
    assert conn.publish(topic_of(sender.device)) in ACCEPTED
    assert not conn.disconnected.is_set()


def test_a_client_id_of_another_device_is_refused(
    services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device with its certificate
    alice, bob = make_sender(), make_sender()
    # when it connects under another device's client id (which would take over that session)
    conn = connect(services, client_id_of(bob.device), port=services.ports.mqtt, chain=chain_of(alice))
    connections.append(conn)
    # then it is refused; under its own id, or its own id with a suffix, it is let in
    assert conn.connack == [NOT_AUTHORIZED]
    for client_id in (client_id_of(alice.device), f"{client_id_of(alice.device)}/second"):
        ok = connect(services, client_id, port=services.ports.mqtt, chain=chain_of(alice))
        connections.append(ok)
        assert ok.connack == [0], client_id


def test_a_token_device_connects_with_its_access_token_and_a_wrong_or_expired_one_is_refused(
    services: Runtime, make_device: Any, connections: list[Connection]
) -> None:
    # given a device of an OAuth2 group with a token from Sluice's authorization server
    meter: TokenDevice = make_device()
    client_id = f"{meter.tenant}/{meter.device.device_id}"
    port = services.ports.mqtt_token

    # when it connects with the token as its MQTT password, then it is let in and may publish
    ok = connect(services, client_id, port=port, password=meter.token())
    connections.append(ok)
    assert ok.connack == [0]
    assert ok.publish(topic_of(meter.device)) in ACCEPTED

    # and a token that is tampered with, expired, without the ingest scope or of another
    # audience, or no password at all, is refused at connect
    good = meter.token()
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    expired = meter.token(lifetime=dt.timedelta(seconds=-120))
    no_scope = meter.token(scopes=["kafka:produce"])
    for password in (tampered, expired, no_scope, "not-a-token", None):
        refused = connect(services, client_id, port=port, password=password)
        connections.append(refused)
        assert refused.connack[0] in (NOT_AUTHORIZED, BAD_CREDENTIALS), password


def test_a_revoked_certificate_is_refused_at_the_next_connect_and_its_open_session_ends(
    services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device connected over mTLS, and another device connected beside it
    sender, other = make_sender(), make_sender()
    chain = chain_of(sender)
    conn = device_session(services, sender, chain, connections)
    bystander = device_session(services, other, chain_of(other), connections)

    # when its certificate is revoked
    revoked_at = time.monotonic()
    certificate_revoke(actor=ACTOR, certificate=sender.issued.certificate, reason="key_compromise")

    # then its open session ends within the bound, the other device's does not
    assert conn.disconnected.wait(BOUND_SECONDS + 5), "the revoked device's session was not ended"
    print(f"session ended {conn.disconnected_at[0] - revoked_at:.2f} s after the revocation")
    assert conn.disconnected_at[0] - revoked_at <= BOUND_SECONDS
    assert not bystander.disconnected.is_set()
    assert bystander.publish(topic_of(other.device)) in ACCEPTED
    # and it cannot connect again
    again = connect(services, client_id_of(sender.device), port=services.ports.mqtt, chain=chain)
    connections.append(again)
    assert again.connack[0] in (NOT_AUTHORIZED, -1)


def test_mosquitto_rereads_the_crl_bundle_a_revoked_tenant_ca_is_refused_at_the_handshake(
    services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device of a tenant created while Mosquitto runs: its handshake already needs
    # Mosquitto to have re-read the CRL bundle (OpenSSL's CRL check wants a CRL of the
    # device's issuing CA, the tenant CA's anchor added when the tenant was made)
    sender = make_sender()
    chain = chain_of(sender)
    device_session(services, sender, chain, connections)
    log = services.logs_dir / "mosquitto.log"
    seen = len(log.read_text().splitlines())

    # when the platform root's CRL revokes the tenant's issuing CA (what tenant deletion
    # does), while the database still holds the device and its certificate as valid
    tenant_cas_revoke(actor=ACTOR, tenant=sender.device.tenant)

    # then Mosquitto itself refuses the next handshake (OpenSSL's verification fails: no
    # CONNACK, and the plugin is never asked), because it re-read the CRL bundle (SIGHUP from
    # certs.crl_files.reload_mosquitto): the root's CRL now revokes the tenant CA, and the
    # CA's anchor CRL left the bundle with it
    publish = [f"{BIN}/mosquitto_pub", "-d", "-h", "127.0.0.1", "-p", str(services.ports.mqtt), "--cafile",
               str(PlatformPki(services.pki_dir).trust_bundle), "--cert", str(chain[0]), "--key", str(chain[1]),
               "-i", client_id_of(sender.device), "-t", topic_of(sender.device), "-m", "{}"]  # fmt: skip
    deadline = time.monotonic() + BOUND_SECONDS
    while True:
        refused = subprocess.run(publish, capture_output=True, text=True, timeout=30)
        if refused.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0, said
    assert "received CONNACK" not in said, said
    # (Mosquitto writes the refusal to its log a moment after the client gave up: read until
    # it is there, bounded)
    deadline = time.monotonic() + 10
    while True:
        new_lines = log.read_text().splitlines()[seen:]
        reloaded = next(i for i, line in enumerate(new_lines) if "Reloading config" in line)
        if any("certificate verify failed" in line for line in new_lines[reloaded:]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any("certificate verify failed" in line for line in new_lines[reloaded:]), new_lines
    assert not any("sluice: refused" in line for line in new_lines), new_lines


@pytest.mark.parametrize("change", ["device disabled", "tenant suspended"])
def test_an_open_session_ends_when_its_device_is_disabled_or_its_tenant_suspended(
    change: str, services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device connected over mTLS
    sender = make_sender()
    conn = device_session(services, sender, chain_of(sender), connections)
    assert conn.publish(topic_of(sender.device)) in ACCEPTED

    # when its device is disabled, or its tenant suspended
    changed_at = time.monotonic()
    if change == "device disabled":
        device_update(actor=ACTOR, device=sender.device, status=Device.Status.DISABLED)
    else:
        tenant_set_status(actor=ACTOR, tenant=sender.device.tenant, status=Tenant.Status.SUSPENDED)

    # then the session ends within the bound, and a new one is refused
    assert conn.disconnected.wait(BOUND_SECONDS + 5), f"{change}: the session was not ended"
    print(f"{change}: session ended {conn.disconnected_at[0] - changed_at:.2f} s after the change")
    assert conn.disconnected_at[0] - changed_at <= BOUND_SECONDS
    again = connect(services, client_id_of(sender.device), port=services.ports.mqtt, chain=chain_of(sender))
    connections.append(again)
    assert again.connack[0] in (NOT_AUTHORIZED, -1)


def test_a_token_session_ends_when_its_tenant_is_suspended(
    services: Runtime, make_device: Any, connections: list[Connection]
) -> None:
    meter: TokenDevice = make_device()
    conn = connect(services, f"{meter.tenant}/{meter.device.device_id}", port=services.ports.mqtt_token,
                   password=meter.token())  # fmt: skip
    connections.append(conn)
    assert conn.connack == [0]
    changed_at = time.monotonic()
    tenant_set_status(actor=ACTOR, tenant=meter.device.tenant, status=Tenant.Status.SUSPENDED)
    assert conn.disconnected.wait(BOUND_SECONDS + 5), "the token session was not ended"
    print(f"token session ended {conn.disconnected_at[0] - changed_at:.2f} s after the suspension")
    assert conn.disconnected_at[0] - changed_at <= BOUND_SECONDS


def test_a_token_session_ends_when_its_token_expires(
    services: Runtime, make_device: Any, connections: list[Connection]
) -> None:
    # given a token device connected with a token that expires in 3 s
    meter: TokenDevice = make_device()
    token = meter.token(lifetime=dt.timedelta(seconds=3))
    expires_at = time.monotonic() + 3
    conn = connect(services, f"{meter.tenant}/{meter.device.device_id}", port=services.ports.mqtt_token,
                   password=token)  # fmt: skip
    connections.append(conn)
    assert conn.connack == [0]
    # when the token expires, then the session ends within the bound (it connects again with a new token)
    assert conn.disconnected.wait(3 + BOUND_SECONDS + 5), "the session outlived its token"
    print(f"token session ended {conn.disconnected_at[0] - expires_at:.2f} s after the token expired")
    assert conn.disconnected_at[0] - expires_at <= BOUND_SECONDS


def test_mosquitto_pub_and_sub_over_mtls(services: Runtime, make_sender: Any, chain_of: Any) -> None:
    # given a device's certificate chain and key as files, and the platform's CA
    sender, other = make_sender(), make_sender()
    chain, key = chain_of(sender)
    cafile = PlatformPki(services.pki_dir).trust_bundle
    tls = ["-h", "127.0.0.1", "-p", str(services.ports.mqtt), "--cafile", str(cafile), "--cert", str(chain),
           "--key", str(key), "-V", "mqttv5"]  # fmt: skip
    own = topic_of(sender.device)

    # when mosquitto_sub listens on the device's own topic and mosquitto_pub publishes there
    sub = subprocess.Popen([f"{BIN}/mosquitto_sub", *tls, "-i", f"{client_id_of(sender.device)}/sub", "-t", own,
                            "-C", "1", "-W", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    time.sleep(1.0)  # let it subscribe
    pub = subprocess.run([f"{BIN}/mosquitto_pub", *tls, "-i", client_id_of(sender.device), "-t", own, "-q", "1",
                          "-m", '{"celsius": 7}'], capture_output=True, text=True, timeout=30)  # fmt: skip
    # then the publish succeeds and the subscriber receives it
    assert pub.returncode == 0, pub.stderr
    out, err = sub.communicate(timeout=30)
    assert (sub.returncode, out.strip()) == (0, '{"celsius": 7}'), err

    # and subscribing to the other device's topic is denied
    denied = subprocess.run([f"{BIN}/mosquitto_sub", *tls, "-i", f"{client_id_of(sender.device)}/peek", "-t",
                             topic_of(other.device), "-C", "1", "-W", "5"], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert denied.stdout == ""
    assert "All subscription requests were denied." in denied.stderr, denied
