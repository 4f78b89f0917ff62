"""The 3-broker profile: replicas where a stream's records land, ingest through the loss of
a broker, and every broker's own checks of certificates and tokens."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from certs import ca
from certs.crl_files import ROOT_CRL_NAME, publish_root_crl
from certs.platform_pki import load_root
from certs.principals import device_subject
from ingest.kafka import admin_config, client_config, oauth_client_config
from tenants.oauth import tokens
from tests.integration.cluster import BROKER_COUNT, ClusterPlatform, Provisioned, eventually, forged_token

# The first test also starts the session's cluster platform (~2-4 min on a loaded 2-core
# machine), which counts against its timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def provisioned(cluster_platform: ClusterPlatform, tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    return cluster_platform.provision(tmp_path_factory.mktemp("cluster-device"))


DURABILITY = {"default.replication.factor": "3", "min.insync.replicas": "2", "unclean.leader.election.enable": "false"}


def _topic_state(admin: AdminClient, topic: str) -> tuple[list[list[int]], str]:
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    replicas = [sorted(p.replicas) for p in metadata.partitions.values()]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(10)
    return replicas, config["min.insync.replicas"].value


def test_a_stream_and_its_tenants_dlq_get_three_replicas_and_min_isr_two(
    cluster_platform: ClusterPlatform, provisioned: Provisioned
) -> None:
    # given a stream created through the REST API of a Sluice on three brokers
    admin = cluster_platform.admin()

    # when its topic and the tenant's DLQ are described
    stream_replicas, stream_min_isr = _topic_state(admin, provisioned.topic)
    dlq_replicas, dlq_min_isr = _topic_state(admin, f"iot.{provisioned.tenant}.dlq")

    # then every partition lives on all three brokers, and an acks=all write needs two
    assert stream_replicas == [[1, 2, 3]] * 3, stream_replicas
    assert dlq_replicas == [[1, 2, 3]] * 3, dlq_replicas
    assert (stream_min_isr, dlq_min_isr) == ("2", "2")
    # and one of the three leads the KRaft quorum
    assert cluster_platform.active_controller() in (1, 2, 3)
    # and every broker runs with the cluster's durability settings
    for node in range(1, BROKER_COUNT + 1):
        resource = ConfigResource(ConfigResource.Type.BROKER, str(node))
        config = admin.describe_configs([resource])[resource].result(10)
        settings = {k: config[k].value for k in DURABILITY}
        assert settings == DURABILITY, f"broker {node}: {settings}"


def _read_all(cluster_platform: ClusterPlatform, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer({**admin_config(cluster_platform.runtime), "group.id": f"read-{topic}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})  # fmt: skip
    partitions = cluster_platform.admin().list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and not message.error():
                values.append(message.value() or b"")
    finally:
        consumer.close()
    return values


def test_ingest_answers_200_with_the_leader_killed_and_the_broker_comes_back(
    cluster_platform: ClusterPlatform, provisioned: Provisioned
) -> None:
    # given the broker that leads the stream's first partition
    leader = cluster_platform.partition_leader(provisioned.topic)
    # when it is killed -9
    cluster_platform.kill_broker(leader)
    try:
        # then ingest answers 200 again once another replica leads (2 in sync >= min ISR 2)
        def post() -> tuple[bool, Any]:
            answer = provisioned.device("POST", "/ingest/v1/records", {"records": [{"celsius": 31.5}] * 5})
            return (answer[0] == 200, answer)

        eventually("a 200 from ingest with one broker down", post, timeout=60)
        accepted = 5
        for _ in range(5):
            status, body = provisioned.device("POST", "/ingest/v1/records", {"records": [{"celsius": 32.5}]})
            assert status == 200, body
            accepted += 1
        assert leader not in cluster_platform.in_sync_replicas(provisioned.topic)
    finally:
        # and the broker comes back and catches up (all three in sync again)
        cluster_platform.restart_broker(leader)

    def caught_up() -> tuple[bool, Any]:
        isr = cluster_platform.in_sync_replicas(provisioned.topic)
        return (isr == [1, 2, 3], isr)

    eventually("the restarted broker back in sync", caught_up, timeout=60)
    # and every acknowledged record is there (plus the first POST of provisioning)
    values = _read_all(cluster_platform, provisioned.topic, accepted + 1)
    assert len([v for v in values if b"31.5" in v or b"32.5" in v]) >= accepted


def _metadata_error(config: dict[str, Any]) -> str | None:
    try:
        AdminClient({**config, "socket.timeout.ms": 3000}).list_topics(timeout=6)
    except KafkaException as exc:
        return str(exc)
    return None


def _only(config: dict[str, Any], port: int) -> dict[str, Any]:
    """The same client, bootstrapped at one broker only: the first request goes there."""
    return {**config, "bootstrap.servers": f"localhost:{port}"}


def test_each_broker_refuses_a_revoked_certificate_and_a_forged_token(
    cluster_platform: ClusterPlatform, tmp_path: Path
) -> None:
    rt = cluster_platform.runtime
    # given two client certificates from the platform root CA, one of them revoked
    root = load_root(rt)

    def issue(device: str) -> tuple[Any, dict[str, Any]]:
        key = ca.generate_key()
        cert = ca.issue_leaf(issuer=root, subject=device_subject(tenant="probe", group="g", device=device),
                             public_key=key.public_key(), usage=ca.Usage.CLIENT, valid_days=1,
                             crl_urls=[rt.crl_url(ROOT_CRL_NAME)])  # fmt: skip
        config = client_config(rt, certificate_pem=ca.certificate_pem(cert).decode(),
                               key_pem=ca.private_key_pem(key).decode())  # fmt: skip
        return cert, config

    _kept, kept_config = issue("kept")
    lost, lost_config = issue("lost")
    publish_root_crl(rt, root, revoke=[ca.Revoked(serial=lost.serial_number, revoked_at=dt.datetime.now(dt.UTC))])
    # and a genuine token next to a forged one (a stranger's key under the genuine kid)
    genuine, _ = tokens.mint_access_token(rt, client_id="probe", tenant="probe", scopes=["kafka:produce"],
                                          audiences=[tokens.AUD_KAFKA], kafka_principal="probe.g.probe")  # fmt: skip
    forged = forged_token(genuine)

    def token_config(token: str) -> dict[str, Any]:
        return oauth_client_config(rt, oauth_cb=lambda _config: (token, time.time() + 600))

    for node in range(1, BROKER_COUNT + 1):
        ports = rt.broker_ports(node)
        # when each broker is asked alone; then the revoked certificate fails the handshake
        # (a broker's JDK caches a CRL ~30 s: wait that out) while the other one passes
        deadline = time.monotonic() + 75
        while _metadata_error(_only(lost_config, ports.client)) is None:
            assert time.monotonic() < deadline, f"broker {node} still accepts a revoked certificate"
            time.sleep(3)
        assert _metadata_error(_only(kept_config, ports.client)) is None, f"broker {node}"
        # and the forged token fails SASL authentication while the genuine one passes
        assert _metadata_error(_only(token_config(forged), ports.oauth)) is not None, f"broker {node}"
        assert _metadata_error(_only(token_config(genuine), ports.oauth)) is None, f"broker {node}"
