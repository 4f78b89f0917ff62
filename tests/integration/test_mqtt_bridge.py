"""MQTT to Kafka on the real stack: a device publishes to Mosquitto, the bridge
(``ingest.mqtt_bridge``, started by ``sluice test``) writes through ingest's own path.

Valid records land in the group's stream exactly as HTTPS ingest writes them (wire format,
key, identity headers); invalid ones and those over the device's rate land in the tenant's
DLQ with their reasons; and a bridge killed with SIGKILL in the middle of a stream loses
nothing: Mosquitto keeps what it had not acknowledged, and sends it again when it is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config.env import BASE_DIR, Runtime
from devices.models import Device
from ingest.kafka import admin_config
from ingest.mqtt_auth import BRIDGE_USERNAME
from ingest.mqtt_bridge import client_id, ready_file
from tests.conftest import unique_slug
from tests.integration.test_acls_live import Provisioned, provision
from tests.integration.test_ingest import Sender, consume, topic_size, wire
from tests.integration.test_ingest_dead_letters import read_all
from tests.integration.test_kafka_consumers import capture as capture  # the fixture
from tests.integration.test_metrics_live import eventually, value
from tests.integration.test_mqtt import ACCEPTED, Connection, chain_of, connections, device_session, topic_of
from tests.integration.test_mqtt import make_sender as make_sender
from tests.schemas import READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
_ = (chain_of, connections)  # fixtures used by name

# The bridge acknowledges once Kafka did; how long a record may take to show up in a test.
ARRIVAL_SECONDS = 30.0


def headers_of(message: Any) -> dict[str, bytes]:
    return dict(message.headers() or [])


def wait_for_size(topic: str, services: Runtime, want: int, timeout: float = ARRIVAL_SECONDS) -> int:
    deadline = time.monotonic() + timeout
    size = topic_size(topic, services)
    while size < want and time.monotonic() < deadline:
        time.sleep(0.2)
        size = topic_size(topic, services)
    return size


@pytest.fixture
def tenant_a(services: Runtime, capture: Callable[..., Any]) -> Provisioned:
    """A tenant made through the services: its DLQ topic exists."""
    return provision(capture, "mqa", {"sensors": "temperature"}, runtime=services)


def test_a_published_record_reaches_the_stream_as_https_ingest_writes_it(
    services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device connected over mTLS
    sender: Sender = make_sender("JSON", READING_JSON)
    conn = device_session(services, sender, chain_of(sender), connections)

    # when it publishes three records at QoS 1 to its own topic
    for celsius in (20.5, 21.0, 21.5):
        assert conn.publish(topic_of(sender.device), json.dumps({"celsius": celsius}).encode()) in ACCEPTED

    # then the three are in the group's stream, in order, in wire format with the device's key
    # and identity headers, as HTTPS writes them
    got = consume(sender.topic, services, 3)
    assert [json.loads(wire(m.value())[2])["celsius"] for m in got] == [20.5, 21.0, 21.5]
    assert {m.key() for m in got} == {sender.device.device_id.encode()}
    first = headers_of(got[0])
    assert first["sluice-device"] == sender.device.device_id.encode()
    assert first["sluice-tenant"] == sender.device.tenant.slug.encode()
    assert first["sluice-request-id"].startswith(b"mqtt-")
    assert wire(got[0].value())[0] == 0
    # and the device is seen, as an HTTPS write makes it (the console's "last seen", silent devices)
    deadline = time.monotonic() + 15
    while Device.objects.get(pk=sender.device.pk).last_seen_at is None:
        assert time.monotonic() < deadline, "the bridge's write never marked the device as seen"
        time.sleep(0.3)


def test_invalid_records_go_to_the_tenant_dlq_with_their_reasons(
    services: Runtime, tenant_a: Provisioned, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device of a tenant with its DLQ topic
    sender: Sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    conn = device_session(services, sender, chain_of(sender), connections)
    dlq = tenant_a.tenant.dlq_topic
    before = topic_size(dlq, services)

    # when it publishes a valid record, one that breaks the schema, and one that is not JSON
    for payload in (b'{"celsius": 21.5}', b'{"celsius": "warm"}', b"not json"):
        assert conn.publish(topic_of(sender.device), payload) in ACCEPTED

    # then the valid one is in the stream and the two others in the DLQ, as sent, with why
    assert wait_for_size(sender.topic, services, 1) == 1
    assert wait_for_size(dlq, services, before + 2) == before + 2
    letters, errors = read_all(admin_config(services), dlq, unique_slug("mqtt-dlq"), before + 2)
    assert not errors
    mine = [m for m in letters if headers_of(m).get("sluice-device") == sender.device.device_id.encode()]
    by_value = {m.value(): headers_of(m) for m in mine}
    assert set(by_value) == {b'{"celsius": "warm"}', b"not json"}
    schema_break = by_value[b'{"celsius": "warm"}']
    assert schema_break["sluice-error-code"] == b"type"
    assert schema_break["sluice-error-pointer"] == b"/celsius"
    assert schema_break["sluice-topic"] == sender.topic.encode()
    assert int(schema_break["sluice-schema-id"]) > 0
    assert schema_break["sluice-received-at"].endswith(b"Z")
    assert by_value[b"not json"]["sluice-error-code"] == b"malformed_json"
    # and the metrics count them: the written record with HTTPS's, the dead letters by reason
    tenant = tenant_a.tenant.slug
    samples = eventually(services, lambda s: value(s, "sluice_ingest_dead_letters_total", tenant=tenant,
                                                   code="malformed_json", transport="mqtt") == 1)  # fmt: skip
    assert value(samples, "sluice_ingest_dead_letters_total", tenant=tenant, code="schema_validation_failed",
                 transport="mqtt") == 1  # fmt: skip
    assert value(samples, "sluice_mqtt_bridge_records_total", tenant=tenant, outcome="written") == 1
    assert value(samples, "sluice_mqtt_bridge_records_total", tenant=tenant, outcome="dead_lettered") == 2
    stream = sender.topic.removeprefix(f"iot.{tenant}.")
    assert value(samples, "sluice_ingest_records_total", tenant=tenant, stream=stream) == 1


def test_records_over_the_device_rate_go_to_the_dlq_as_rate_limited_and_none_is_lost(
    services: Runtime, tenant_a: Provisioned, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device allowed one record per second
    sender: Sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant, rate=1)
    conn = device_session(services, sender, chain_of(sender), connections)
    dlq = tenant_a.tenant.dlq_topic
    before = topic_size(dlq, services)

    # when it publishes twenty records at once
    for i in range(20):
        assert conn.publish(topic_of(sender.device), json.dumps({"celsius": float(i)}).encode()) in ACCEPTED

    # then every record is somewhere: the stream took what the rate allowed, the DLQ the rest,
    # each with the code rate_limited
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while time.monotonic() < deadline:
        written = topic_size(sender.topic, services) + topic_size(dlq, services) - before
        if written >= 20:
            break
        time.sleep(0.2)
    in_stream = topic_size(sender.topic, services)
    in_dlq = topic_size(dlq, services) - before
    assert in_stream + in_dlq == 20
    assert in_stream < 20
    assert in_dlq > 0
    letters, _ = read_all(admin_config(services), dlq, unique_slug("mqtt-rate"), before + in_dlq)
    codes = {headers_of(m)["sluice-error-code"] for m in letters
             if headers_of(m).get("sluice-device") == sender.device.device_id.encode()}  # fmt: skip
    assert codes == {b"rate_limited"}


# -- a bridge killed in the middle -------------------------------------------------------


def start_bridge(services: Runtime, number: int) -> subprocess.Popen[bytes]:
    """Another member of the bridge's shared subscription, as the launcher starts one."""
    ready_file(services, number).unlink(missing_ok=True)
    env = {**os.environ, "SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(services.state_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "ingest.mqtt_bridge", "--number", str(number)], cwd=BASE_DIR,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready_file(services, number).exists():
        assert proc.poll() is None, "the bridge exited"
        assert time.monotonic() < deadline, "the bridge never subscribed"
        time.sleep(0.1)
    return proc


def forget_session(services: Runtime, number: int) -> None:
    """End a test bridge's persistent session, so Mosquitto stops keeping messages for it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id(number), protocol=mqtt.MQTTv5,
                         transport="unix")  # fmt: skip
    client.username_pw_set(BRIDGE_USERNAME, services.mqtt_bridge_password)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect(str(services.mqtt_bridge_socket), port=1, clean_start=True, properties=properties)
    client.loop_start()
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def second_bridge(services: Runtime) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    number = 7
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(start_bridge(services, number))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    forget_session(services, number)


def test_a_bridge_killed_in_the_middle_of_a_stream_loses_no_record(
    services: Runtime, make_sender: Any, chain_of: Any, connections: list[Connection],
    second_bridge: Callable[[], subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    # given a second bridge sharing the subscription with the platform's, and a device
    bridge = second_bridge()
    sender: Sender = make_sender("JSON", READING_JSON, rate=10_000)
    conn = device_session(services, sender, chain_of(sender), connections)
    total = 400

    # when the device publishes a stream of records and the second bridge is killed (SIGKILL)
    # in the middle, then started again a little later
    def publish() -> None:
        for i in range(total):
            assert conn.publish(topic_of(sender.device), json.dumps({"celsius": float(i)}).encode()) in ACCEPTED

    publisher = threading.Thread(target=publish)
    publisher.start()
    while topic_size(sender.topic, services) < total // 4:
        time.sleep(0.05)
    bridge.send_signal(signal.SIGKILL)
    bridge.wait(timeout=10)
    time.sleep(1.0)
    second_bridge()
    publisher.join(timeout=120)

    # then every record is in the stream (at least once: a record Kafka acknowledged just
    # before the kill is written again), none is missing
    assert wait_for_size(sender.topic, services, total, timeout=60) >= total
    got = consume(sender.topic, services, topic_size(sender.topic, services))
    seen = {json.loads(wire(m.value())[2])["celsius"] for m in got}
    assert seen == {float(i) for i in range(total)}


def test_records_of_a_group_without_a_schema_go_to_the_dlq_and_hold_nobody_up(
    services: Runtime, tenant_a: Provisioned, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    # given a device of a group whose subject has no schema yet, and another device
    lost: Sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant, register=False)
    fine: Sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    a = device_session(services, lost, chain_of(lost), connections)
    b = device_session(services, fine, chain_of(fine), connections)
    dlq = tenant_a.tenant.dlq_topic
    before = topic_size(dlq, services)

    # when both publish
    assert a.publish(topic_of(lost.device), b'{"celsius": 1.0}') in ACCEPTED
    assert b.publish(topic_of(fine.device), b'{"celsius": 2.0}') in ACCEPTED

    # then the other device's record is written, and the first one is in the DLQ, saying why
    assert wait_for_size(fine.topic, services, 1) == 1
    assert wait_for_size(dlq, services, before + 1) == before + 1
    letters, _ = read_all(admin_config(services), dlq, unique_slug("mqtt-noschema"), before + 1)
    mine = [headers_of(m) for m in letters if headers_of(m).get("sluice-device") == lost.device.device_id.encode()]
    assert [h["sluice-error-code"] for h in mine] == [b"schema_not_found"]
    assert mine[0]["sluice-schema-subject"] == lost.subject.encode()
    assert topic_size(lost.topic, services) == 0


def test_a_keyed_record_is_confirmed_on_the_device_acks_topic_once_kafka_has_it(
    services: Runtime, tenant_a: Provisioned, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    from ingest.mqtt_auth import device_acks_topic

    # given a device listening on its acks topic
    sender: Sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    conn = device_session(services, sender, chain_of(sender), connections)
    device = sender.device
    acks = device_acks_topic(device.tenant.slug, device.group.slug, device.device_id)
    assert conn.subscribe(acks) in (0, 1)

    # when it publishes a valid and an invalid record, each with an idempotency key, then the
    # valid one again under its key (a resend)
    def keyed(payload: bytes, key: str) -> int:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = ("sluice-idempotency-key", key)
        info = conn.client.publish(topic_of(device), payload, qos=1, properties=properties)
        deadline = time.monotonic() + 10
        while info.mid not in conn.pubacks:
            assert time.monotonic() < deadline, "no PUBACK"
            time.sleep(0.02)
        return conn.pubacks[info.mid]

    assert keyed(b'{"celsius": 21.5}', "k-1") in ACCEPTED
    assert keyed(b'{"celsius": "warm"}', "k-2") in ACCEPTED
    told: dict[str, str] = {}
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while len(told) < 2:
        assert time.monotonic() < deadline, f"confirmations so far: {told}"
        for topic, payload in list(conn.messages):
            if topic == acks:
                told.update({key: outcome for outcome, keys in json.loads(payload).items() for key in keys})
        time.sleep(0.1)
    # then the bridge says what became of each, once Kafka had it
    assert told == {"k-1": "written", "k-2": "dead_lettered"}
    assert topic_size(sender.topic, services) == 1
    conn.messages.clear()
    assert keyed(b'{"celsius": 21.5}', "k-1") in ACCEPTED
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while not any(topic == acks for topic, _ in conn.messages):
        assert time.monotonic() < deadline, "the resend was never confirmed"
        time.sleep(0.1)
    # and the resend is confirmed with its first outcome, and not written again
    assert json.loads(conn.messages[0][1])["written"] == ["k-1"]
    assert topic_size(sender.topic, services) == 1


def test_a_device_whose_stream_kafka_refuses_goes_to_the_dlq_while_others_are_written(
    services: Runtime, tenant_a: Provisioned, make_sender: Any, chain_of: Any, connections: list[Connection]
) -> None:
    from confluent_kafka.admin import AdminClient

    from ingest.mqtt_bridge import SPILL_AFTER

    # given two devices of one tenant, the first one's stream topic deleted from Kafka after
    # it was written to (the bridge's producer knew it)
    stuck: Sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    fine: Sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    a = device_session(services, stuck, chain_of(stuck), connections)
    b = device_session(services, fine, chain_of(fine), connections)
    assert a.publish(topic_of(stuck.device), b'{"celsius": 0.0}') in ACCEPTED
    assert wait_for_size(stuck.topic, services, 1) == 1
    admin = AdminClient(admin_config(services))
    admin.delete_topics([stuck.topic])[stuck.topic].result(30)
    while stuck.topic in admin.list_topics(timeout=10).topics:
        time.sleep(0.2)
    dlq = tenant_a.tenant.dlq_topic
    before = topic_size(dlq, services)

    # when the first device publishes three records, and the other one a record a second
    for i in range(3):
        assert a.publish(topic_of(stuck.device), json.dumps({"celsius": float(i + 1)}).encode()) in ACCEPTED
    sent = 0
    deadline = time.monotonic() + SPILL_AFTER + 60
    while topic_size(dlq, services) < before + 3:
        assert time.monotonic() < deadline, "the refused stream's records never reached the DLQ"
        assert b.publish(topic_of(fine.device), json.dumps({"celsius": float(sent)}).encode()) in ACCEPTED
        sent += 1
        time.sleep(1.0)

    # then the other device was written all along, and the first one's records are in the DLQ,
    # each as sent, saying why
    assert wait_for_size(fine.topic, services, sent) == sent
    letters, _ = read_all(admin_config(services), dlq, unique_slug("mqtt-spill"), before + 3)
    mine = [m for m in letters if headers_of(m).get("sluice-device") == stuck.device.device_id.encode()]
    assert sorted(json.loads(m.value())["celsius"] for m in mine) == [1.0, 2.0, 3.0]
    assert {headers_of(m)["sluice-error-code"] for m in mine} == {b"stream_unavailable"}
    assert {headers_of(m)["sluice-topic"] for m in mine} == {stuck.topic.encode()}
