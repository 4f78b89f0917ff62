"""Tenant backends read their streams from the real Kafka with their own credentials.

A consumer (``devices.models.Consumer``) gets a client certificate from its tenant CA (the
broker's mTLS listener) and an OAuth client with ``kafka:consume`` (the OAUTHBEARER
listener).  Each credential reads what the consumer is granted, joins consumer groups under
``<tenant>.<consumer>.`` and commits their offsets; everything else is refused by the
broker: the isolation matrix below tries another tenant's topics, groups and schemas, a
topic of its own tenant it is not granted, another consumer's groups, describing and
writing, on both listeners.  Every right ends for a session that is already reading when
its owner is disabled, narrowed, deleted or suspended, or its credential revoked, within
the bound the README states (``BOUND_SECONDS``), with a real Celery worker doing the sync."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from certs.models import Certificate
from certs.platform_pki import PlatformPki
from certs.services import certificate_revoke, consumer_certificate_issue
from config.env import Runtime
from devices import services as device_services
from devices.models import Consumer as ConsumerModel
from ingest.kafka import admin_config, client_config, oauth_client_config
from ingest.kafka_admin import described_quotas
from ingest.quotas import user_entity
from tenants.audit import Actor
from tenants.oauth.models import OAuthClient
from tenants.oauth.server import OAuthClientAdapter
from tenants.oauth.services import oauth_client_create, oauth_client_revoke
from tenants.services import tenant_set_status
from tests.integration.test_acls_live import Provisioned, acls_of, eager_tasks, eventually, namespace_acls, provision
from tests.integration.test_kafka_sessions import BOUND_SECONDS
from tests.integration.test_kafka_sessions import kafka_worker as kafka_worker  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")
TOPIC_DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = KafkaError.GROUP_AUTHORIZATION_FAILED
REFUSED = (TOPIC_DENIED, GROUP_DENIED)


@pytest.fixture
def capture(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[..., Any]:
    return django_capture_on_commit_callbacks


@dataclass
class Reader:
    """A consumer with a certificate and an OAuth client, and librdkafka settings for each."""

    provisioned: Provisioned
    model: ConsumerModel
    certificate: Certificate
    certificate_pem: str
    key_pem: str
    client: OAuthClient
    configs: dict[str, dict[str, Any]]  # "mtls" / "oauth" -> settings

    @property
    def group_prefix(self) -> str:
        return self.model.group_prefix


def make_reader(provisioned: Provisioned, slug: str, **grant: Any) -> Reader:
    """A consumer of ``provisioned``'s tenant with both kinds of credential, granted as
    ``grant`` says (every stream by default); its ACLs synced (eagerly) before this returns."""
    runtime = provisioned.runtime
    with eager_tasks(), provisioned.capture(execute=True):
        model = device_services.consumer_create(actor=ACTOR, tenant=provisioned.tenant, slug=slug, **grant)
    with eager_tasks(), provisioned.capture(execute=True):
        issued = consumer_certificate_issue(actor=ACTOR, consumer=model, passphrase="long passphrase")
    with eager_tasks(), provisioned.capture(execute=True):
        client, _secret = oauth_client_create(actor=ACTOR, tenant=provisioned.tenant, kind="consumer", name=slug,
                                              scopes=["kafka:consume", "registry:read"], consumer=model)  # fmt: skip
    token, lifetime = OAuthClientAdapter(OAuthClient.objects.get(pk=client.pk)).mint(["kafka:consume"])
    expires = time.time() + lifetime
    configs = {
        "mtls": client_config(runtime, certificate_pem=issued.chain_pem, key_pem=issued.key_pem or ""),
        "oauth": oauth_client_config(runtime, oauth_cb=lambda _config: (token, expires)),
    }
    return Reader(provisioned, model, issued.certificate, issued.chain_pem, issued.key_pem or "", client, configs)


def produce(runtime: Runtime, topic: str, count: int = 1) -> None:
    """Write ``count`` records as the platform (a super user)."""
    producer = Producer({**admin_config(runtime), "acks": "all"})
    for _ in range(count):
        producer.produce(topic, value=uuid.uuid4().bytes)
    assert producer.flush(20) == 0


def new_consumer(config: dict[str, Any], group_id: str) -> Consumer:
    return Consumer({**config, "group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "session.timeout.ms": 10000, "topic.metadata.refresh.interval.ms": 1000})  # fmt: skip


def read(
    config: dict[str, Any], topic: str, group_id: str, *, want: int = 1, seconds: float = 20.0
) -> tuple[int, set[int]]:
    """Read ``topic`` from the start as ``group_id``: records received (stopping at ``want``)
    and error codes seen.  A refusal ends the read a few polls later."""
    consumer = new_consumer(config, group_id)
    consumer.subscribe([topic])
    received, errors = 0, set()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and received < want:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                errors.add(message.error().code())
                deadline = min(deadline, time.monotonic() + 2)
            else:
                received += 1
        if received and not errors:
            consumer.commit(asynchronous=False)  # its own group: committing is part of reading
        return received, errors
    finally:
        consumer.close()


def describe(config: dict[str, Any], topic: str) -> int | None:
    error = AdminClient(config).list_topics(topic=topic, timeout=15).topics[topic].error
    return None if error is None else error.code()


def write(config: dict[str, Any], topic: str) -> int | None:
    """Try to produce one record (not idempotent, so the refusal is the topic's)."""
    outcome: list[KafkaError | None] = []
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 10000})
    try:
        producer.produce(topic, value=b"x", on_delivery=lambda err, _msg: outcome.append(err))
        producer.flush(15)
    except KafkaException as exc:
        return int(exc.args[0].code())
    assert outcome
    return None if outcome[0] is None else outcome[0].code()


def https(
    runtime: Runtime, path: str, *, token: str = "", cert: tuple[Path, Path] | None = None, body: bytes | None = None
) -> tuple[int, bytes]:
    """GET (or POST ``body`` as JSON) through nginx with a bearer token or a client
    certificate; the status and the body."""
    context = ssl.create_default_context(cafile=str(PlatformPki(runtime.pki_dir).trust_bundle))
    if cert is not None:
        context.load_cert_chain(certfile=str(cert[0]), keyfile=str(cert[1]))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(f"https://127.0.0.1:{runtime.ports.web}{path}", headers=headers, data=body)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def registry_get(runtime: Runtime, path: str, *, token: str = "", cert: tuple[Path, Path] | None = None) -> int:
    return https(runtime, path, token=token, cert=cert)[0]


@pytest.fixture
def tenant_a(services: Runtime, capture: Callable[..., Any]) -> Provisioned:
    return provision(capture, "ca", {"sensors": "temperature", "cameras": "video"}, runtime=services)


@pytest.fixture
def tenant_b(services: Runtime, capture: Callable[..., Any]) -> Provisioned:
    return provision(capture, "cb", {"sensors": "temperature"}, runtime=services)


def test_a_consumer_reads_its_streams_on_both_listeners_and_commits_its_own_groups(tenant_a: Provisioned) -> None:
    runtime = tenant_a.runtime
    reader = make_reader(tenant_a, "analytics", dead_letters=True)
    temperature = tenant_a.streams["temperature"].topic
    # each credential holds a consumer's quota from its tenant's plan
    entities = [user_entity(reader.certificate.kafka_principal), user_entity(f"User:{reader.client.kafka_principal}")]
    plan = {"consumer_byte_rate": float(2 * 2**20), "request_percentage": 10.0}
    assert described_quotas(entities) == dict.fromkeys(entities, plan)
    produce(runtime, temperature, 3)
    produce(runtime, tenant_a.tenant.dlq_topic)
    for kind, config in reader.configs.items():
        group = f"{reader.group_prefix}{kind}"
        assert read(config, temperature, group, want=3) == (3, set()), kind
        assert read(config, tenant_a.tenant.dlq_topic, f"{group}-dlq") == (1, set()), kind
        assert describe(config, temperature) is None, kind
    # the committed offsets are each group's own: a second read of a group starts after them
    produce(runtime, temperature)
    for kind, config in reader.configs.items():
        assert read(config, temperature, f"{reader.group_prefix}{kind}", want=5, seconds=6) == (1, set()), kind


def test_isolation_on_the_way_out(tenant_a: Provisioned, tenant_b: Provisioned, tmp_path: Path) -> None:
    # given A's consumer granted A's temperature stream only, another consumer of A, and B's consumer
    runtime = tenant_a.runtime
    mine = tenant_a.streams["temperature"]
    reader = make_reader(tenant_a, "reader", streams=[mine])
    other = make_reader(tenant_a, "other")
    theirs = make_reader(tenant_b, "reader")
    not_granted = tenant_a.streams["video"].topic
    b_topic = tenant_b.streams["temperature"].topic
    for topic in (mine.topic, not_granted, b_topic):
        produce(runtime, topic)
    # B's consumer reads B's topic, so B's group exists with committed offsets
    assert read(theirs.configs["mtls"], b_topic, f"{theirs.group_prefix}main") == (1, set())
    failures: list[str] = []
    for kind, config in reader.configs.items():
        own_group = f"{reader.group_prefix}main-{kind}"
        tries: dict[str, tuple[Any, Callable[[Any], bool]]] = {
            "reads its own granted topic": (read(config, mine.topic, own_group), lambda r: r == (1, set())),
            "reads B's topic": (read(config, b_topic, own_group), lambda r: r[0] == 0 and TOPIC_DENIED in r[1]),
            "reads A's topic it is not granted": (read(config, not_granted, own_group),
                                                  lambda r: r[0] == 0 and TOPIC_DENIED in r[1]),
            "joins B's consumer's group": (read(config, mine.topic, f"{theirs.group_prefix}main"),
                                           lambda r: r[0] == 0 and GROUP_DENIED in r[1]),
            "joins another consumer's group of A": (read(config, mine.topic, f"{other.group_prefix}main"),
                                                    lambda r: r[0] == 0 and GROUP_DENIED in r[1]),
            "joins a group outside any prefix": (read(config, mine.topic, "analytics"),
                                                 lambda r: r[0] == 0 and GROUP_DENIED in r[1]),
            "describes B's topic": (describe(config, b_topic), lambda r: r == TOPIC_DENIED),
            "describes A's topic it is not granted": (describe(config, not_granted), lambda r: r == TOPIC_DENIED),
            "writes to its own granted topic": (write(config, mine.topic), lambda r: r == TOPIC_DENIED),
            "writes to B's topic": (write(config, b_topic), lambda r: r == TOPIC_DENIED),
        }  # fmt: skip
        for what, (outcome, ok) in tries.items():
            if not ok(outcome):
                failures.append(f"{kind}: {what}: {outcome}")
    # and B's schemas through the scoped registry, with A's consumer's token and certificate
    cert, key = tmp_path / "reader.crt", tmp_path / "reader.key"
    cert.write_text(reader.certificate_pem)
    key.write_text(reader.key_pem)
    token, _ = OAuthClientAdapter(OAuthClient.objects.get(pk=reader.client.pk)).mint(["registry:read"])
    a_slug, b_slug = tenant_a.tenant.slug, tenant_b.tenant.slug
    paths = {
        "A's subjects": f"/registry/{a_slug}/subjects",
        "B's subjects": f"/registry/{b_slug}/subjects",
        "B's subject under A": f"/registry/{a_slug}/subjects/{b_topic}-value/versions",
        "B's subject": f"/registry/{b_slug}/subjects/{b_topic}-value/versions",
    }
    wanted = {"A's subjects": 200, "B's subjects": 404, "B's subject under A": 404, "B's subject": 404}
    by_token = {what: registry_get(runtime, path, token=token) for what, path in paths.items()}
    by_cert = {what: registry_get(runtime, path, cert=(cert, key)) for what, path in paths.items()}
    for name, statuses in (("token", by_token), ("certificate", by_cert)):
        if statuses != wanted:
            failures.append(f"registry by {name}: {statuses}")
    # and a consumer's credentials write nothing through ingest
    record = b'{"celsius": 1.0}'
    by_cert_post = https(runtime, "/ingest/v1/records", cert=(cert, key), body=record)
    if by_cert_post[0] != 403 or b"not_a_device_certificate" not in by_cert_post[1]:
        failures.append(f"ingest by certificate: {by_cert_post}")
    kafka_token, _ = OAuthClientAdapter(OAuthClient.objects.get(pk=reader.client.pk)).mint(["kafka:consume"])
    for name, bearer in (("registry token", token), ("kafka token", kafka_token)):
        status, _body = https(runtime, "/ingest/v1/records", token=bearer, body=record)
        if status != 401:
            failures.append(f"ingest by {name}: {status} {_body[:200]!r}")
    assert failures == [], "\n".join(failures)


# -- a right ends for a session that is already reading ------------------------------------------


@dataclass
class Session:
    """A consumer that is connected, in its group and reading, across a change."""

    name: str
    consumer: Consumer
    topic: str
    runtime: Runtime

    def seconds_until_refused(self, bound: float = BOUND_SECONDS) -> float:
        """Keep writing (as the platform) and reading until the broker refuses this session;
        the seconds that took, from the change's commit."""
        start = time.monotonic()
        while True:
            produce(self.runtime, self.topic)
            message = self.consumer.poll(0.5)
            elapsed = time.monotonic() - start
            if message is not None and message.error() and message.error().code() in REFUSED:
                print(f"{self.name} session refused after {elapsed:.2f} s: {message.error()}")
                return elapsed
            assert elapsed < bound + 5, f"{self.name} session still reads {elapsed:.1f} s after the change"

    def still_reads(self) -> None:
        produce(self.runtime, self.topic)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.5)
            if message is None:
                continue
            assert not message.error(), f"{self.name}: {message.error()}"
            return
        pytest.fail(f"{self.name} session read nothing")


@pytest.fixture
def sessions(
    tenant_a: Provisioned, kafka_worker: subprocess.Popen[bytes]
) -> Iterator[tuple[Reader, dict[str, Session]]]:
    """A's consumer reading the temperature stream on both listeners, each session already
    past its first record; changes made after this go through the real worker."""
    assert kafka_worker.poll() is None
    reader = make_reader(tenant_a, "live")
    topic = tenant_a.streams["temperature"].topic
    made = {}
    for kind, config in reader.configs.items():
        consumer = new_consumer(config, f"{reader.group_prefix}{kind}")
        consumer.subscribe([topic])
        made[kind] = Session(kind, consumer, topic, tenant_a.runtime)
    for session in made.values():
        session.still_reads()
    yield reader, made
    for session in made.values():
        session.consumer.close()


def assert_stopped(*sessions: Session) -> None:
    for session in sessions:
        assert session.seconds_until_refused() <= BOUND_SECONDS, session.name


def test_a_disabled_consumer_stops_on_both_listeners(sessions: tuple[Reader, dict[str, Session]]) -> None:
    reader, live = sessions
    device_services.consumer_update(actor=ACTOR, consumer=reader.model, status="disabled")
    assert_stopped(live["mtls"], live["oauth"])


def test_a_revoked_certificate_stops_its_session_only(sessions: tuple[Reader, dict[str, Session]]) -> None:
    reader, live = sessions
    certificate_revoke(actor=ACTOR, certificate=reader.certificate, reason="key_compromise")
    assert_stopped(live["mtls"])
    live["oauth"].still_reads()


def test_a_revoked_client_stops_its_session_only(sessions: tuple[Reader, dict[str, Session]]) -> None:
    reader, live = sessions
    oauth_client_revoke(actor=ACTOR, client=reader.client)
    assert_stopped(live["oauth"])
    live["mtls"].still_reads()


def test_a_stream_taken_out_of_the_grant_stops_its_reading(
    sessions: tuple[Reader, dict[str, Session]], tenant_a: Provisioned
) -> None:
    reader, live = sessions
    device_services.consumer_update(actor=ACTOR, consumer=reader.model, streams=[tenant_a.streams["video"]])
    assert_stopped(live["mtls"], live["oauth"])


def test_a_deleted_consumer_stops_on_both_listeners(sessions: tuple[Reader, dict[str, Session]]) -> None:
    reader, live = sessions
    device_services.consumer_delete(actor=ACTOR, consumer=reader.model)
    assert_stopped(live["mtls"], live["oauth"])
    assert Certificate.objects.get(pk=reader.certificate.pk).status == "revoked"


def test_a_suspended_tenant_stops_its_consumers(
    sessions: tuple[Reader, dict[str, Session]], tenant_a: Provisioned
) -> None:
    _reader, live = sessions
    tenant_set_status(actor=ACTOR, tenant=tenant_a.tenant, status="suspended")
    assert_stopped(live["mtls"], live["oauth"])
    # and no grant of the tenant is left: its consumers' group grants went with the topics'
    admin = AdminClient(admin_config(tenant_a.runtime))
    assert eventually(lambda: namespace_acls(admin, tenant_a.tenant.slug), lambda left: not left) == []


def test_a_stream_created_is_read_by_all_stream_consumers_and_a_deleted_ones_grants_go(
    tenant_a: Provisioned, kafka_admin: AdminClient
) -> None:
    # given a consumer of every stream and one of the temperature stream only
    every = make_reader(tenant_a, "every")
    narrow = make_reader(tenant_a, "narrow", streams=[tenant_a.streams["temperature"]])
    # when a stream is added, then the all-streams consumer's credentials read it at once
    with eager_tasks(), tenant_a.capture(execute=True):
        added = device_services.stream_create(actor=ACTOR, tenant=tenant_a.tenant, region="us", type="vibration",
                                              partitions=1)  # fmt: skip
    grant = f"READ TOPIC:LITERAL:{added.topic} "
    for principal in (every.certificate.kafka_principal, f"User:{every.client.kafka_principal}"):
        assert any(grant in line for line in acls_of(kafka_admin, principal)), principal
    assert not any(grant in line for line in acls_of(kafka_admin, narrow.certificate.kafka_principal))
    produce(tenant_a.runtime, added.topic)
    assert read(every.configs["oauth"], added.topic, f"{every.group_prefix}vib") == (1, set())
    # when it is deleted, then no grant on its topic is left (a stream re-created under the
    # same name would be granted afresh, not inherit these)
    with eager_tasks(), tenant_a.capture(execute=True):
        device_services.stream_delete(actor=ACTOR, stream=added)
    left = [line for line in namespace_acls(kafka_admin, tenant_a.tenant.slug) if added.topic in line]
    assert left == []
