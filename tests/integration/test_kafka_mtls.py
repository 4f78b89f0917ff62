"""The broker's client listener: mTLS required, principals from certificate subjects, and
the StandardAuthorizer deciding every request (real Kafka started by `sluice test`)."""

from __future__ import annotations

import socket
import ssl
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from certs import ca
from certs.platform_pki import PlatformPki
from config.env import Runtime
from devices.principals import group_principal
from ingest.kafka import client_config
from tests.conftest import ClientCredential, issue_device_credential, unique_slug

pytestmark = pytest.mark.integration


def produce_one(config: dict, topic: str, value: bytes) -> KafkaError | None:
    """Produce idempotently and return the delivery error (None when acknowledged)."""
    producer = Producer({**config, "enable.idempotence": True, "message.timeout.ms": 15000})
    outcome: list[KafkaError | None] = []
    producer.produce(topic, value=value, on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(20)
    assert outcome, "the producer never reported the delivery outcome"
    return outcome[0]


DENIED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)
# The controller commits an ACL before every broker's authorizer has replayed it: a grant
# takes effect a moment later (milliseconds when idle, seconds on a loaded machine).
GRANT_APPLIES_WITHIN = 30.0


def produce_once_granted(config: dict, topic: str, value: bytes) -> KafkaError | None:
    """Produce after a grant: refusals are retried until the grant has reached the broker
    (bounded); any other outcome, or a refusal past the bound, is returned."""
    deadline = time.monotonic() + GRANT_APPLIES_WITHIN
    while True:
        error = produce_one(config, topic, value)
        if error is None or error.code() not in DENIED or time.monotonic() > deadline:
            return error
        time.sleep(0.2)


def grant_group(
    admin: AdminClient, *, principal: str, topic_prefix: str, consumer_group_prefix: str
) -> list[AclBinding]:
    bindings = [
        AclBinding(ResourceType.TOPIC, topic_prefix, ResourcePatternType.PREFIXED, principal, "*", operation,
                   AclPermissionType.ALLOW)
        for operation in (AclOperation.WRITE, AclOperation.READ, AclOperation.DESCRIBE)
    ] + [
        AclBinding(ResourceType.GROUP, consumer_group_prefix, ResourcePatternType.PREFIXED, principal, "*",
                   AclOperation.READ, AclPermissionType.ALLOW)
    ]  # fmt: skip
    for future in admin.create_acls(bindings).values():
        future.result(30)
    return bindings


def revoke_all(admin: AdminClient, principal: str) -> None:
    acl_filter = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        principal,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    admin.delete_acls([acl_filter])[acl_filter].result(30)


def consume_all(config: dict, topic: str, group: str, expected: int) -> list[bytes]:
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is None:
                if len(values) >= expected:
                    break
                continue
            if message.error():
                raise KafkaException(message.error())
            values.append(message.value())
            if len(values) >= expected:
                break
    finally:
        consumer.close()
    return values


def test_certificate_client_is_denied_without_acl_and_allowed_with_one(
    services: Runtime, kafka_admin: AdminClient, kafka_topic: str
) -> None:
    # given a device certificate from the platform CA, for a group with no ACLs yet
    tenant = kafka_topic.split(".")[1]
    cred = issue_device_credential(services, tenant=tenant, group="sensors", device="dev-1")
    config = client_config(services, certificate_pem=cred.certificate_pem, key_pem=cred.key_pem)
    principal = group_principal(tenant=tenant, group="sensors")

    # when it produces, then the broker refuses (the principal is not a super user)
    error = produce_one(config, kafka_topic, b"before-acl")
    assert error is not None
    assert error.code() in DENIED

    # when the admin grants the group's principal a prefixed ACL on the tenant's topics
    grant_group(kafka_admin, principal=principal, topic_prefix=f"iot.{tenant}.", consumer_group_prefix=f"{tenant}.")
    try:
        payload = f"reading-{uuid.uuid4()}".encode()
        # then produce succeeds (acks=all, idempotent) and the record can be consumed back
        assert produce_once_granted(config, kafka_topic, payload) is None
        values = consume_all(config, kafka_topic, f"{tenant}.readers", expected=1)
        assert payload in values
    finally:
        revoke_all(kafka_admin, principal)


def test_principal_comes_from_the_certificate_subject(
    services: Runtime, kafka_admin: AdminClient, kafka_topic: str
) -> None:
    # given ACLs for group "sensors" of the topic's tenant only
    tenant = kafka_topic.split(".")[1]
    allowed = issue_device_credential(services, tenant=tenant, group="sensors", device="dev-1")
    other_group = issue_device_credential(services, tenant=tenant, group="cameras", device="dev-1")
    other_tenant = issue_device_credential(services, tenant=unique_slug("t"), group="sensors", device="dev-1")
    principal = group_principal(tenant=tenant, group="sensors")
    grant_group(kafka_admin, principal=principal, topic_prefix=f"iot.{tenant}.", consumer_group_prefix=f"{tenant}.")
    try:
        # when each produces to the topic
        def outcome(cred: ClientCredential) -> KafkaError | None:
            return produce_one(
                client_config(services, certificate_pem=cred.certificate_pem, key_pem=cred.key_pem),
                kafka_topic,
                b"x",
            )

        # then only the certificate whose subject maps to the granted principal gets through
        allowed_config = client_config(services, certificate_pem=allowed.certificate_pem, key_pem=allowed.key_pem)
        assert produce_once_granted(allowed_config, kafka_topic, b"x") is None
        for denied in (other_group, other_tenant):
            error = outcome(denied)
            assert error is not None
            assert error.code() in DENIED
    finally:
        revoke_all(kafka_admin, principal)


def test_client_without_certificate_cannot_connect(services: Runtime) -> None:
    # given a TLS client that trusts the broker but presents no certificate
    pki = PlatformPki(services.pki_dir)
    admin = AdminClient(
        {
            "bootstrap.servers": services.kafka_bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(pki.trust_bundle),
            "socket.timeout.ms": 3000,
        }
    )
    # when it asks for metadata, then it never gets any
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=6)

    # and at the TLS layer the broker ends the handshake for want of a certificate
    context = ssl.create_default_context(cafile=str(pki.trust_bundle))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_exchange_without_certificate(context, services.ports.kafka)


def tls_exchange_without_certificate(context: ssl.SSLContext, port: int) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        # TLS 1.3 reports the missing certificate on the first read, not in the handshake.
        tls.sendall(b"\x00\x00\x00\x00")
        if tls.recv(1) == b"":
            raise ConnectionResetError("closed by the broker")


def test_certificate_from_a_foreign_ca_is_refused(services: Runtime) -> None:
    # given a client certificate signed by a CA the platform never trusted
    foreign_key = ca.generate_key()
    foreign_root = ca.create_root_ca(subject=ca.name(O="Evil", CN="Evil Root"), key=foreign_key, valid_days=1)
    key = ca.generate_key()
    cert = ca.issue_leaf(
        issuer=ca.Issuer(foreign_root, foreign_key),
        subject=ca.name(O="Sluice Platform", CN="sluice-admin"),  # claims to be the admin
        public_key=key.public_key(),
        usage=ca.Usage.CLIENT,
        valid_days=1,
    )
    config = client_config(
        services, certificate_pem=ca.certificate_pem(cert).decode(), key_pem=ca.private_key_pem(key).decode()
    )
    # when it connects, then the handshake fails and no metadata comes back
    with pytest.raises(KafkaException):
        AdminClient({**config, "socket.timeout.ms": 3000}).list_topics(timeout=6)
