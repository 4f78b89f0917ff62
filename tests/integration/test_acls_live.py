"""Generated Kafka ACLs on the real broker (StandardAuthorizer, mTLS principals): each
credential of a Kafka-direct group produces idempotently to its group's topic and nowhere
else, and a group without Kafka-direct access gets no ACL; another tenant's credential can
neither produce to, consume from nor describe any of a tenant's topics; suspension,
resumption, group changes and tenant deletion reach the cluster; and reconcile repairs drift
without touching ACLs Sluice does not own."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import StringIO
from typing import Any, TypeVar

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from django.core.management import call_command

from certs.services import certificate_issue_generated
from config.celery import app
from config.env import Runtime
from devices import services as device_services
from devices.models import Device, DeviceGroup, Stream
from ingest.acl_sync import acls_reconcile
from ingest.acls import describe_binding, managed_tenant_slugs
from ingest.kafka import client_config
from ingest.kafka_admin import ALL_ACLS, exact_filter, existing_acls
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.services import tenant_create, tenant_delete, tenant_set_status
from tests.conftest import unique_slug

pytestmark = [pytest.mark.integration, pytest.mark.django_db]
ACTOR = Actor.system("test")
DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED
# With no ACL left at all, an idempotent producer is already refused its producer id
# (InitProducerId needs WRITE on some topic, KIP-679), which librdkafka reports this way.
DENIED_WITHOUT_ANY_GRANT = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)
T = TypeVar("T")


@contextmanager
def eager_tasks() -> Iterator[None]:
    """Run Celery tasks in-process, so on-commit hooks reach the real Kafka right away."""
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False
        app.conf.task_eager_propagates = False


@dataclass
class Provisioned:
    tenant: Tenant
    streams: dict[str, Stream]
    groups: dict[str, DeviceGroup]
    runtime: Runtime
    capture: Callable[..., Any]

    @property
    def topics(self) -> list[str]:
        return sorted({s.topic for s in self.streams.values()} | {self.tenant.dlq_topic})

    def device(self, group: str) -> Device:
        with eager_tasks(), self.capture(execute=True):
            return device_services.device_create(actor=ACTOR, tenant=self.tenant, group=self.groups[group],
                                                 device_id=f"dev-{uuid.uuid4().hex[:6]}")  # fmt: skip

    def certificate(self, group: str, device: Device | None = None) -> dict[str, Any]:
        """Client settings for a certificate Sluice issues to a (new) device of ``group``;
        its ACL is synced (eagerly) before this returns."""
        device = device or self.device(group)
        with eager_tasks(), self.capture(execute=True):
            issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
        return client_config(self.runtime, certificate_pem=issued.chain_pem, key_pem=issued.key_pem or "")


def provision(
    capture: Callable[..., Any],
    prefix: str,
    groups: dict[str, str],
    *,
    runtime: Runtime,
    kafka_direct: bool = True,
    policy: str = DeviceGroup.CredentialPolicy.BOTH,
) -> Provisioned:
    """A tenant made through the services, with one stream per device type named in
    ``groups`` (group slug -> device type), its groups Kafka-direct unless told otherwise;
    topics and ACLs provisioned on commit."""
    with eager_tasks(), capture(execute=True):
        tenant = tenant_create(actor=ACTOR, slug=unique_slug(prefix), name="ACL test")
        streams = {
            kind: device_services.stream_create(actor=ACTOR, tenant=tenant, region="eu", type=kind, partitions=1)
            for kind in sorted(set(groups.values()))
        }
    with eager_tasks(), capture(execute=True):
        made = {
            slug: device_services.group_create(actor=ACTOR, tenant=tenant, stream=streams[kind], slug=slug, region="eu",
                                               device_type=kind, schema_subject=f"{streams[kind].topic}-value",
                                               kafka_direct=kafka_direct, credential_policy=policy)
            for slug, kind in groups.items()
        }  # fmt: skip
    return Provisioned(tenant=tenant, streams=streams, groups=made, runtime=runtime, capture=capture)


def idempotent_producer(config: dict[str, Any]) -> Producer:
    # enable.idempotence implies acks=all; both are spelled out because that is the promise.
    return Producer({**config, "enable.idempotence": True, "acks": "all", "message.timeout.ms": 15000})


def send(producer: Producer, topic: str) -> KafkaError | None:
    """Produce one record and return its delivery error (None when acknowledged)."""
    outcome: list[KafkaError | None] = []
    producer.produce(topic, value=uuid.uuid4().bytes, on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(20)
    assert outcome, "the producer never reported the delivery outcome"
    return outcome[0]


def produce_one(config: dict[str, Any], topic: str) -> KafkaError | None:
    return send(idempotent_producer(config), topic)


@contextmanager
def consumer_group_granted(admin: AdminClient, principal: str, group_prefix: str) -> Iterator[None]:
    """Sluice grants devices no consumer group, which alone stops any read.  To show the
    topic ACLs refuse reads by themselves, a probe gets one for the duration."""
    grant = AclBinding(ResourceType.GROUP, group_prefix, ResourcePatternType.PREFIXED, principal, "*",
                       AclOperation.READ, AclPermissionType.ALLOW)  # fmt: skip
    for future in admin.create_acls([grant]).values():
        future.result(30)
    try:
        yield
    finally:
        for future in admin.delete_acls([exact_filter(grant)]).values():
            future.result(30)


def consume_outcome(config: dict[str, Any], topic: str, group_id: str) -> tuple[set[int], int]:
    """Try to read ``topic`` from the beginning; returns the error codes seen and the
    number of records received."""
    consumer = Consumer({**config, "group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    errors: set[int] = set()
    received = 0
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and DENIED not in errors:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                errors.add(message.error().code())
                # a refused group never gets further; a few more polls show whether the topic is refused too
                deadline = min(deadline, time.monotonic() + 3)
            else:
                received += 1
        return errors, received
    finally:
        consumer.close()


def describe_error(config: dict[str, Any], topic: str) -> KafkaError | None:
    metadata = AdminClient(config).list_topics(topic=topic, timeout=15)
    return metadata.topics[topic].error


def code(error: KafkaError | None) -> int | None:
    return None if error is None else error.code()


def eventually(check: Callable[[], T], accept: Callable[[T], bool], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if accept(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def acls_of(admin: AdminClient, principal: str) -> list[str]:
    only = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, principal, None, AclOperation.ANY, AclPermissionType.ANY
    )
    found = admin.describe_acls(only).result(30)
    return sorted(describe_binding(b) for b in found)


def namespace_acls(admin: AdminClient, slug: str) -> list[str]:
    return sorted(describe_binding(b) for b in existing_acls(admin) if slug in managed_tenant_slugs(b))


@pytest.fixture
def capture(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[..., Any]:
    return django_capture_on_commit_callbacks


def test_each_credential_produces_idempotently_to_its_own_groups_topic_only(
    services: Runtime, kafka_admin: AdminClient, capture: Callable[..., Any]
) -> None:
    # given tenant A with sensors and meters sharing the temperature stream, and cameras on video
    a = provision(capture, "a", {"sensors": "temperature", "meters": "temperature", "cameras": "video"},
                  runtime=services)  # fmt: skip
    temperature, video = a.streams["temperature"].topic, a.streams["video"].topic
    # and a certificate Sluice issued to a sensors device
    sensors = a.certificate("sensors")
    (issued,) = a.tenant.certificates.all()

    # then that certificate's own principal holds exactly one WRITE on its literal topic (nothing on the cluster)
    assert issued.kafka_principal.startswith(f"User:{a.tenant.slug}.sensors.crt_")
    assert acls_of(kafka_admin, issued.kafka_principal) == [
        f"ALLOW {issued.kafka_principal} WRITE TOPIC:LITERAL:{temperature} host=*",
    ]
    # and the broker maps the certificate (UID=<id>,CN=...,OU=sensors,O=<tenant>) to it: an
    # idempotent, acks=all producer is acknowledged (KIP-679: no IDEMPOTENT_WRITE needed)
    assert produce_one(sensors, temperature) is None
    # a group sharing the stream may write it too; another group's topic and the DLQ are refused
    assert produce_one(a.certificate("meters"), temperature) is None
    assert code(produce_one(sensors, video)) == DENIED
    assert code(produce_one(a.certificate("cameras"), temperature)) == DENIED
    assert code(produce_one(sensors, a.tenant.dlq_topic)) == DENIED
    # and devices cannot read their group's topic back
    with consumer_group_granted(kafka_admin, issued.kafka_principal, f"{a.tenant.slug}.sensors."):
        errors, received = consume_outcome(sensors, temperature, f"{a.tenant.slug}.sensors.probe")
    assert (DENIED in errors, received) == (True, 0)
    # the group principals of the old naming hold nothing, and every ACL change is audited with its tenant
    assert acls_of(kafka_admin, a.groups["sensors"].kafka_principal) == []
    assert AuditEvent.objects.filter(action="acl.create", tenant=a.tenant).count() == 3


def test_a_group_without_kafka_direct_access_gets_no_acl(
    services: Runtime, kafka_admin: AdminClient, capture: Callable[..., Any]
) -> None:
    # given a group of HTTPS-only devices (the default) with an issued certificate
    a = provision(capture, "a", {"sensors": "temperature"}, runtime=services, kafka_direct=False)
    config = a.certificate("sensors")
    # then the tenant's namespace holds no ACL and the certificate cannot produce on Kafka
    assert namespace_acls(kafka_admin, a.tenant.slug) == []
    assert code(produce_one(config, a.streams["temperature"].topic)) in DENIED_WITHOUT_ANY_GRANT
    # when the group is given Kafka-direct access, then the same certificate can
    with eager_tasks(), capture(execute=True):
        device_services.group_update(actor=ACTOR, group=a.groups["sensors"], kafka_direct=True)
    assert len(namespace_acls(kafka_admin, a.tenant.slug)) == 1
    assert produce_one(config, a.streams["temperature"].topic) is None


def test_another_tenants_credential_gets_nothing_of_a_tenants_topics(
    services: Runtime, kafka_admin: AdminClient, capture: Callable[..., Any]
) -> None:
    # given tenants A and B, each with device groups that can write their own topics
    a = provision(capture, "a", {"sensors": "temperature", "cameras": "video"}, runtime=services)
    b = provision(capture, "b", {"sensors": "temperature"}, runtime=services)
    intruder = b.certificate("sensors")
    (intruder_certificate,) = b.tenant.certificates.all()
    assert produce_one(intruder, b.streams["temperature"].topic) is None
    # and A's topics hold data worth stealing
    assert produce_one(a.certificate("sensors"), a.streams["temperature"].topic) is None

    # when B's group credential tries every topic of A (its streams and its DLQ)
    for topic in a.topics:
        # then produce, consume and describe are all refused for want of a topic ACL
        assert code(produce_one(intruder, topic)) == DENIED, topic
        errors, received = consume_outcome(intruder, topic, f"{b.tenant.slug}.sensors.probe")
        assert received == 0, topic
        assert errors, topic
        assert errors <= {DENIED, KafkaError.GROUP_AUTHORIZATION_FAILED}, (topic, errors)
        # (even with a consumer group of its own, the topic itself is refused)
        with consumer_group_granted(kafka_admin, intruder_certificate.kafka_principal, f"{b.tenant.slug}.sensors."):
            errors, received = consume_outcome(intruder, topic, f"{b.tenant.slug}.sensors.probe")
        assert (DENIED in errors, received) == (True, 0), (topic, errors)
        assert code(describe_error(intruder, topic)) == DENIED, topic
    # and listing the cluster's topics shows B none of A's
    visible = AdminClient(intruder).list_topics(timeout=15).topics
    assert not [t for t in visible if t.startswith(a.tenant.topic_prefix)]


def test_group_changes_move_and_remove_its_acls(
    services: Runtime, kafka_admin: AdminClient, capture: Callable[..., Any]
) -> None:
    # given a group on the temperature stream with a device and its certificate
    a = provision(capture, "a", {"sensors": "temperature", "cameras": "video"}, runtime=services)
    device = a.device("sensors")
    sensors = a.certificate("sensors", device)
    (issued,) = a.tenant.certificates.all()
    temperature, video = a.streams["temperature"].topic, a.streams["video"].topic

    # when it is moved to the video stream
    with eager_tasks(), capture(execute=True):
        device_services.group_update(actor=ACTOR, group=a.groups["sensors"], stream=a.streams["video"].pk)
    # then it writes video and no longer temperature
    assert produce_one(sensors, video) is None
    assert code(produce_one(sensors, temperature)) == DENIED

    # when its device goes and then the group, then its credential has no ACL left
    with eager_tasks(), capture(execute=True):
        device_services.device_delete(actor=ACTOR, device=device)
        device_services.group_delete(actor=ACTOR, group=a.groups["sensors"])
    assert acls_of(kafka_admin, issued.kafka_principal) == []
    assert code(produce_one(sensors, video)) in DENIED_WITHOUT_ANY_GRANT


@pytest.mark.django_db(transaction=True)
def test_suspension_through_a_real_worker_stops_direct_produce_at_once(
    services: Runtime, kafka_admin: AdminClient, capture: Callable[..., Any], celery_worker: subprocess.Popen[bytes]
) -> None:
    # given a device producing to its group's topic over a long-lived idempotent connection
    a = provision(capture, "a", {"sensors": "temperature"}, runtime=services)
    topic = a.streams["temperature"].topic
    config = a.certificate("sensors")
    producer = idempotent_producer(config)
    assert send(producer, topic) is None

    # when the tenant is suspended (the ACL sync goes through Redis to the worker)
    tenant_set_status(actor=ACTOR, tenant=a.tenant, status=Tenant.Status.SUSPENDED)

    # then the same producer's next record is refused, and the tenant holds no ACL
    assert code(eventually(lambda: send(producer, topic), lambda e: e is not None)) == DENIED
    assert namespace_acls(kafka_admin, a.tenant.slug) == []
    assert code(produce_one(config, topic)) in DENIED_WITHOUT_ANY_GRANT

    # when it is resumed, then the device produces again
    tenant_set_status(actor=ACTOR, tenant=a.tenant, status=Tenant.Status.ACTIVE)
    assert eventually(lambda: produce_one(config, topic), lambda e: e is None) is None
    assert celery_worker.poll() is None
    actions = set(AuditEvent.objects.filter(tenant=a.tenant).values_list("action", flat=True))
    assert {"tenant.suspend", "tenant.resume", "acl.create", "acl.delete"} <= actions


def test_tenant_deletion_removes_every_acl_of_the_tenant(
    services: Runtime, kafka_admin: AdminClient, capture: Callable[..., Any]
) -> None:
    # given a tenant whose credentials hold ACLs
    a = provision(capture, "a", {"sensors": "temperature", "cameras": "video"}, runtime=services)
    a.certificate("sensors"), a.certificate("cameras")
    principals = list(a.tenant.certificates.values_list("kafka_principal", flat=True))
    slug = a.tenant.slug
    assert len(namespace_acls(kafka_admin, slug)) == 2

    # when it is deleted
    with eager_tasks(), capture(execute=True):
        tenant_delete(actor=ACTOR, tenant=a.tenant, confirm=slug)

    # then no ACL names its principals or its topics, and each removal is audited under its slug
    for principal in principals:
        assert acls_of(kafka_admin, principal) == []
    assert namespace_acls(kafka_admin, slug) == []
    assert AuditEvent.objects.filter(action="acl.delete", tenant_slug=slug).count() == 2


def test_reconcile_repairs_drift_and_leaves_foreign_acls_alone(
    services: Runtime, kafka_admin: AdminClient, capture: Callable[..., Any]
) -> None:
    # given a tenant in sync with the cluster
    a = provision(capture, "a", {"sensors": "temperature"}, runtime=services)
    config = a.certificate("sensors")
    slug, topic = a.tenant.slug, a.streams["temperature"].topic
    principal = a.tenant.certificates.get().kafka_principal

    def acl(principal: str, name: str, operation: AclOperation = AclOperation.WRITE) -> AclBinding:
        return AclBinding(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, principal, "*", operation,
                          AclPermissionType.ALLOW)  # fmt: skip

    # when someone deletes one of its ACLs by hand and adds a stray one in its namespace, a tenant
    # that no longer exists left one behind, and an unrelated principal has its own
    removed = acl(principal, topic)
    stray = acl(f"User:{slug}.sensors.crt_ghost", topic)
    legacy = acl(f"User:{slug}.sensors", topic)  # the group principal certificates had before credential ids
    gone = unique_slug("gone")
    orphan = acl(f"User:{gone}.sensors", f"iot.{gone}.eu.temperature")
    # (the tenant existed: its deletion is in the audit log, but its ACL sync never ran)
    AuditEvent.objects.create(tenant_slug=gone, actor_label="test", action="tenant.delete", object_type="tenant")
    unrelated = acl("User:someone-else", f"someone-else.{uuid.uuid4().hex[:8]}", AclOperation.READ)
    # ACLs shaped like Sluice's but for principals and topics of no tenant Sluice ever had
    lookalike = unique_slug("connect")
    lookalikes = [acl(f"User:{lookalike}.prod", "connect-offsets", AclOperation.READ),
                  acl("User:grafana", f"iot.{lookalike}.metrics", AclOperation.READ)]  # fmt: skip
    unrelated_all = [unrelated, *lookalikes]
    for future in kafka_admin.delete_acls([exact_filter(removed)]).values():
        future.result(30)
    for future in kafka_admin.create_acls([stray, legacy, orphan, *unrelated_all]).values():
        future.result(30)
    try:
        # then a report-only reconcile names exactly that drift and changes nothing
        report = acls_reconcile(fix=False)
        assert describe_binding(removed) in report.missing
        assert {describe_binding(stray), describe_binding(legacy), describe_binding(orphan)} <= set(report.stale)
        for other in unrelated_all:
            assert describe_binding(other) not in report.stale + report.missing
        assert (report.created, report.deleted) == ([], [])
        assert removed not in set(existing_acls(kafka_admin))
        out = StringIO()
        call_command("sluice_acls", stdout=out)
        assert f"missing  {describe_binding(removed)}" in out.getvalue()

        # when it fixes, then the hand-deleted ACL is back, the stray and the orphan are gone,
        # the unrelated ACL is untouched, and the device can produce
        fixed = acls_reconcile(fix=True)
        assert describe_binding(removed) in fixed.created
        found = set(kafka_admin.describe_acls(ALL_ACLS).result(30))
        assert removed in found
        assert stray not in found
        assert legacy not in found
        assert orphan not in found
        assert set(unrelated_all) <= found
        assert produce_one(config, topic) is None
        assert AuditEvent.objects.filter(action="acl.delete", object_repr=describe_binding(stray), tenant=a.tenant)
        assert not acls_reconcile(fix=False).drift
        out = StringIO()
        call_command("sluice_acls", "--fix", stdout=out)
        assert "no drift" in out.getvalue()
    finally:
        for future in kafka_admin.delete_acls([exact_filter(b) for b in unrelated_all]).values():
            future.result(30)
