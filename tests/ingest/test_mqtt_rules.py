"""The MQTT rules that need no broker (ingest.mqtt_auth): which topics a device may use,
which client ids it may take, and the plugin's line protocol for what needs no database."""

from __future__ import annotations

import asyncio

import pytest

from config.env import load_runtime
from ingest.mqtt_auth import (
    MAX_KICKS_LINE,
    READ,
    SUBSCRIBE,
    UNSUBSCRIBE,
    WRITE,
    Authority,
    Session,
    acl_allows,
    client_id_allowed,
    device_prefix,
    device_topic,
    encode,
)

PREFIX = device_prefix("acme", "sensors", "m-1")


def test_the_topic_layout_names_tenant_group_and_device() -> None:
    assert device_topic("acme", "sensors", "m-1") == "sluice/acme/sensors/m-1/records"
    assert PREFIX == "sluice/acme/sensors/m-1/"


def test_a_device_publishes_only_to_its_own_records_topic() -> None:
    assert acl_allows(WRITE, "sluice/acme/sensors/m-1/records", PREFIX)
    for topic in ("sluice/acme/sensors/m-2/records", "sluice/acme/sensors/m-1/records/x",
                  "sluice/acme/sensors/m-1/other", "sluice/acme/sensors/m-1", "other"):  # fmt: skip
        assert not acl_allows(WRITE, topic, PREFIX), topic


def test_a_device_subscribes_to_and_receives_only_its_own_topics() -> None:
    for access in (SUBSCRIBE, READ):
        assert acl_allows(access, "sluice/acme/sensors/m-1/records", PREFIX)
        assert acl_allows(access, "sluice/acme/sensors/m-1/#", PREFIX)
        for topic in ("#", "sluice/#", "sluice/acme/+/m-1/records", "sluice/acme/sensors/+/records",
                      "sluice/acme/sensors/m-10/records", "sluice/acme/sensors/m-1"):  # fmt: skip
            assert not acl_allows(access, topic, PREFIX), (access, topic)
    # unsubscribing gives nothing away; an access this code does not know is refused
    assert acl_allows(UNSUBSCRIBE, "#", PREFIX)
    assert not acl_allows(16, "sluice/acme/sensors/m-1/records", PREFIX)


def test_a_client_id_is_the_devices_own_or_its_own_with_a_suffix() -> None:
    assert client_id_allowed("acme/m-1", tenant="acme", device="m-1")
    assert client_id_allowed("acme/m-1/sub", tenant="acme", device="m-1")
    for client_id in ("acme/m-10", "acme/m-2", "m-1", "other/m-1", "acme/m-1x", ""):
        assert not client_id_allowed(client_id, tenant="acme", device="m-1"), client_id


@pytest.fixture
def authority() -> Authority:
    return Authority(load_runtime({}))


def test_the_protocol_refuses_what_it_cannot_read_and_unknown_connections(authority: Authority) -> None:
    answer = lambda line: asyncio.run(authority.answer(line))  # noqa: E731
    assert answer("HELLO") == "NO bad_request"
    assert answer("ACL c1 zz 00 -") == "NO bad_request"
    # a connection that was never let in (this process restarted) may do nothing, and is ended
    assert answer(f"ACL c1 2 {encode('sluice/acme/sensors/m-1/records')} {encode('acme/m-1')}") == "NO"
    assert answer("KICKS") == f"OK {encode('acme/m-1')}"
    # no credential at all is refused before any database read
    assert answer("AUTH c1 - - - -") == "NO client_certificate_required"
    assert answer("KICKS") == "OK"


def test_a_session_marked_for_a_recheck_may_do_nothing_until_it_passed(authority: Authority) -> None:
    # given a session that was let in
    session = Session("c1", "acme/m-1", ("certificate", "ab"), lambda: None, lambda _: None, PREFIX,
                      frozenset({("device", 1)}), None, 0.0)  # fmt: skip
    authority.sessions["c1"] = session
    topic = encode("sluice/acme/sensors/m-1/records") + " " + encode("acme/m-1")
    assert asyncio.run(authority.answer(f"ACL c1 2 {topic}")) == "OK"
    # when a change of rights touches it, then it is refused until re-checked (fail closed),
    # and the plugin is told to forget the publish it allowed (it would let the next through)
    authority.mark_dirty({"c1"})
    assert asyncio.run(authority.answer(f"ACL c1 2 {topic}")) == "NO"
    assert asyncio.run(authority.answer("KICKS")) == "OK | c1"  # the re-check decides, not the ACL
    # and when the connection ends, it is forgotten
    assert asyncio.run(authority.answer("BYE c1")) == "OK"
    assert "c1" not in authority.sessions
    assert "c1" not in authority.dirty


def test_a_restarted_broker_resets_every_session(authority: Authority) -> None:
    authority.sessions["c1"] = Session("c1", "acme/m-1", ("certificate", "ab"), lambda: None, lambda _: None,
                                       PREFIX, frozenset(), None, 0.0)  # fmt: skip
    assert asyncio.run(authority.answer("RESET")) == "OK"
    assert authority.sessions == {}


def test_kicks_are_handed_over_in_lines_the_plugin_can_hold(authority: Authority) -> None:
    # given more sessions to end than one answer line holds (client ids of 100 bytes)
    authority.kicks = [f"acme/{index:0>95}" for index in range(400)]
    # when the plugin polls, then each answer stays within the line, and every kick comes out once
    seen: list[str] = []
    while authority.kicks:
        line = asyncio.run(authority.answer("KICKS"))
        assert len(line) <= MAX_KICKS_LINE + 2
        seen += [bytes.fromhex(field).decode() for field in line.split(" ")[1:]]
    assert seen == [f"acme/{index:0>95}" for index in range(400)]


def test_a_kick_spares_a_client_id_that_was_let_in_again(authority: Authority) -> None:
    # given a kick queued for a client id (its session ended), and another for a second one
    authority.kicks = ["acme/m-1", "acme/m-2"]
    # when m-1 connects again and is let in before the plugin polls
    authority.sessions["c2"] = Session("c2", "acme/m-1", ("certificate", "cd"), lambda: None, lambda _: None,
                                       PREFIX, frozenset(), None, 0.0)  # fmt: skip
    # then only m-2 is kicked: a kick by client id would end m-1's new session
    assert asyncio.run(authority.answer("KICKS")) == f"OK {encode('acme/m-2')}"


# -- the bridge ----------------------------------------------------------------------------


def test_the_bridge_subscribes_only_to_the_shared_records_subscription_and_publishes_nothing() -> None:
    from ingest.mqtt_auth import BRIDGE_SUBSCRIPTION, bridge_acl_allows

    assert BRIDGE_SUBSCRIPTION == "$share/sluice-bridge/sluice/+/+/+/records"
    # Mosquitto may name the filter to the check with or without its $share/<name>/
    assert bridge_acl_allows(SUBSCRIBE, BRIDGE_SUBSCRIPTION)
    assert bridge_acl_allows(SUBSCRIBE, "sluice/+/+/+/records")
    for pattern in ("#", "sluice/#", "$share/sluice-bridge/#", "$share/other/sluice/+/+/+/records",
                    "sluice/acme/+/+/records", "$SYS/#"):  # fmt: skip
        assert not bridge_acl_allows(SUBSCRIBE, pattern), pattern
    # it receives records topics only, and publishes nowhere
    assert bridge_acl_allows(READ, "sluice/acme/sensors/m-1/records")
    for topic in ("sluice/acme/sensors/m-1/other", "sluice/acme/sensors/records", "sluice//sensors/m-1/records",
                  "sluice/acme/sensors/m-1/records/x", "other/acme/sensors/m-1/records"):  # fmt: skip
        assert not bridge_acl_allows(READ, topic), topic
    # it publishes only to devices' acks topics (what became of their keyed records)
    assert not bridge_acl_allows(WRITE, "sluice/acme/sensors/m-1/records")
    assert bridge_acl_allows(WRITE, "sluice/acme/sensors/m-1/acks")
    for topic in ("sluice/acme/sensors/acks", "sluice/acme/sensors/m-1/acks/x", "other/a/g/d/acks", "#"):
        assert not bridge_acl_allows(WRITE, topic), topic


def test_a_records_topic_names_tenant_group_and_device() -> None:
    from ingest.mqtt_auth import records_topic_parts

    assert records_topic_parts(device_topic("acme", "sensors", "m-1")) == ("acme", "sensors", "m-1")
    for topic in ("sluice/acme/sensors/m-1", "sluice/acme//m-1/records", "x/acme/sensors/m-1/records", ""):
        assert records_topic_parts(topic) is None, topic


def test_only_the_bridge_password_lets_the_bridge_in_under_a_bridge_client_id() -> None:
    from ingest.mqtt_auth import bridge_client_id_allowed

    authority = Authority(load_runtime({"SLUICE_MQTT_BRIDGE_PASSWORD": "the-bridge-password"}))
    answer = lambda line: asyncio.run(authority.answer(line))  # noqa: E731
    user, good, bad = encode("sluice-bridge"), encode("the-bridge-password"), encode("guess")
    # a wrong password, a device's client id, or a client certificate beside the password: refused
    assert answer(f"AUTH c1 {encode('sluice-bridge')} {user} {bad} -") == "NO bad_bridge_password"
    assert answer(f"AUTH c1 {encode('acme/m-1')} {user} {good} -") == "NO client_id_mismatch"
    assert answer(f"AUTH c1 {encode('sluice-bridge')} {user} {good} 3082") == "NO ambiguous_credentials"
    assert "c1" not in authority.bridges
    # the right one, under a bridge's client id: let in, and it may subscribe as the bridge
    assert answer(f"AUTH c1 {encode('sluice-bridge-2')} {user} {good} -") == "OK"
    subscription = encode("$share/sluice-bridge/sluice/+/+/+/records")
    assert answer(f"ACL c1 {SUBSCRIBE} {subscription} {encode('sluice-bridge-2')}") == "OK"
    assert answer(f"ACL c1 {WRITE} {encode('sluice/a/g/d/records')} {encode('sluice-bridge-2')}") == "NO"
    # a bridge's session kept while it is away still receives records (Mosquitto asks READ for it)
    assert answer("BYE c1") == "OK"
    assert answer(f"ACL c9 {READ} {encode('sluice/a/g/d/records')} {encode('sluice-bridge-2')}") == "OK"
    assert answer("KICKS") == "OK"
    for client_id in ("sluice-bridge", "sluice-bridge-1", "sluice-bridge-9999"):
        assert bridge_client_id_allowed(client_id), client_id
    for client_id in ("sluice-bridge-", "sluice-bridge-12345", "sluice-bridge/1", "acme/sluice-bridge", "x"):
        assert not bridge_client_id_allowed(client_id), client_id


def test_the_bridge_packet_limit_follows_ingest_record_limit() -> None:
    from ingest import mqtt_bridge, records

    assert mqtt_bridge.MAX_RECORD_BYTES == records.MAX_BODY_BYTES
    assert mqtt_bridge.MAX_PACKET_BYTES > records.MAX_BODY_BYTES


def session_of(conn: str, device_pk: int, tenant_pk: int = 1) -> Session:
    return Session(conn, f"acme/m-{device_pk}", ("certificate", conn), lambda: None, lambda _: None,
                   device_prefix("acme", "sensors", f"m-{device_pk}"),
                   frozenset({("tenant", tenant_pk), ("device", device_pk)}), None, 0.0)  # fmt: skip


def test_the_plugin_forgets_the_publishes_of_exactly_the_sessions_a_change_touched(authority: Authority) -> None:
    from tenants.rights import RightsChange

    # given two sessions of one tenant and one of another
    for conn, device_pk, tenant_pk in (("7f01", 1, 1), ("7f02", 2, 1), ("7f03", 3, 2)):
        authority.sessions[conn] = session_of(conn, device_pk, tenant_pk)
    # when a change touches the first device, then the next poll names its connection once
    authority.cache.apply(RightsChange(tenant_id=1, devices=frozenset({1})))
    assert asyncio.run(authority.answer("KICKS")) == "OK | 7f01"
    assert asyncio.run(authority.answer("KICKS")) == "OK"
    # when a whole tenant changes, then each of its connections, and only those
    authority.cache.apply(RightsChange(tenant_id=1, whole_tenant=True))
    assert asyncio.run(authority.answer("KICKS")) == "OK | 7f01 7f02"
    # when the rights channel is lost, then every connection ("*"), and again only once
    authority.cache.set_live(False)
    assert asyncio.run(authority.answer("KICKS")) == "OK | *"
    assert asyncio.run(authority.answer("KICKS")) == "OK"


def test_kicks_and_forgotten_connections_share_a_line_the_plugin_can_hold(authority: Authority) -> None:
    # given a full line of kicks and more touched connections than the line has room for
    authority.kicks = [f"acme/{index:0>95}" for index in range(400)]
    authority.mark_dirty({f"{index:016x}" for index in range(1000)})
    for conn in list(authority.dirty):
        authority.sessions[conn] = session_of(conn, 1)
    # when the plugin polls, then its line holds them (64 KiB), and the connections are "*"
    line = asyncio.run(authority.answer("KICKS"))
    assert len(line) + 1 < 65536
    assert line.endswith(" | *")


def test_a_restarted_broker_has_nothing_to_forget(authority: Authority) -> None:
    authority.cache.set_live(False)
    assert asyncio.run(authority.answer("RESET")) == "OK"
    assert asyncio.run(authority.answer("KICKS")) == "OK"
