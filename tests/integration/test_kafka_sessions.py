"""A right ends on Kafka when its owner ends, for a producer that is already connected.

Kafka checks a certificate only at the TLS handshake and a token only when a connection
authenticates, and it has no API to close a connection; it does authorize every produce
request against the ACLs.  Each test here keeps an idempotent producer connected (mTLS
and/or OAUTHBEARER, the real broker), makes one change through Sluice's services with a
real Celery worker doing the Kafka work, and measures how long until that same producer's
next record is refused with TOPIC_AUTHORIZATION_FAILED.  ``BOUND_SECONDS`` is the bound the
README states.  Credentials the change does not concern keep producing."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from certs.models import Certificate
from certs.services import certificate_revoke
from config.env import BASE_DIR, Runtime
from devices import services as device_services
from devices.models import Device, DeviceGroup
from ingest.kafka import oauth_client_config
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.oauth.models import OAuthClient
from tenants.oauth.server import OAuthClientAdapter
from tenants.oauth.services import oauth_client_create, oauth_client_revoke
from tenants.services import tenant_delete, tenant_set_status
from tests.integration.test_acls_live import DENIED, Provisioned, eager_tasks, idempotent_producer, provision, send

# Transactional: the worker process reads the same database and must see the commits.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")
# The bound the README states for a change to stop an open Kafka session, with a worker running.
BOUND_SECONDS = 10.0


@pytest.fixture(scope="module")
def kafka_worker(services: Runtime) -> Iterator[subprocess.Popen[bytes]]:
    """One real Celery worker for the module (as in production: started before any change)."""
    from config.celery import app

    app.control.purge()  # tasks earlier tests queued without a worker name rows long gone
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--hostname", f"sessions-{os.getpid()}-{secrets.token_hex(3)}@localhost"],
        cwd=BASE_DIR,
        env=os.environ.copy(),
    )  # fmt: skip
    yield worker
    worker.terminate()
    worker.wait(timeout=30)


@pytest.fixture
def capture(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[..., Any]:
    return django_capture_on_commit_callbacks


@dataclass
class Session:
    """An idempotent producer that stays connected across a change."""

    name: str
    producer: Producer
    topic: str

    def send(self) -> KafkaError | None:
        return send(self.producer, self.topic)


@dataclass
class KafkaDevice:
    """A device of a Kafka-direct group (policy "both") with a certificate and a device
    OAuth client, each producing on its own listener."""

    device: Device
    certificate: Certificate
    client: OAuthClient
    mtls: Session
    oauth: Session


def token_session(runtime: Runtime, client: OAuthClient, topic: str) -> Session:
    """A producer on the OAUTHBEARER listener holding a token exactly as the token endpoint
    mints it for ``client``."""
    token, lifetime = OAuthClientAdapter(OAuthClient.objects.get(pk=client.pk)).mint(["kafka:produce"])
    expires = time.time() + lifetime
    config = {**oauth_client_config(runtime, oauth_cb=lambda _config: (token, expires)),
              "enable.idempotence": True, "acks": "all", "message.timeout.ms": 15000}  # fmt: skip
    return Session("oauth", Producer(config), topic)


def kafka_device(provisioned: Provisioned, group: str) -> KafkaDevice:
    device = provisioned.device(group)
    config = provisioned.certificate(group, device)
    certificate = Certificate.objects.get(device=device)
    with eager_tasks(), provisioned.capture(execute=True):
        client, _secret = oauth_client_create(actor=ACTOR, tenant=provisioned.tenant, kind="device", name="dev",
                                              scopes=["kafka:produce"], device=device)  # fmt: skip
    topic = provisioned.groups[group].stream.topic
    made = KafkaDevice(device=device, certificate=certificate, client=client,
                       mtls=Session("mtls", idempotent_producer(config), topic),
                       oauth=token_session(provisioned.runtime, client, topic))  # fmt: skip
    # both sessions are connected and producing before the change
    assert made.mtls.send() is None
    assert made.oauth.send() is None
    return made


def seconds_until_refused(session: Session, bound: float = BOUND_SECONDS) -> float:
    """Produce on ``session`` until a record is refused; the seconds that took (measured
    from the change's commit, i.e. when the service returned)."""
    start = time.monotonic()
    while True:
        error = session.send()
        elapsed = time.monotonic() - start
        if error is not None:
            assert error.code() == DENIED, f"{session.name}: {error}"
            print(f"{session.name} session refused after {elapsed:.2f} s")
            return elapsed
        # a little past the bound, so a miss is reported with its figure, not as a hang
        assert elapsed < bound + 5, f"{session.name} session still produces {elapsed:.1f} s after the change"
        time.sleep(0.2)


def assert_stopped(*sessions: Session) -> None:
    for session in sessions:
        assert seconds_until_refused(session) <= BOUND_SECONDS, session.name


@pytest.fixture
def tenant_a(services: Runtime, capture: Callable[..., Any], kafka_worker: subprocess.Popen[bytes]) -> Provisioned:
    assert kafka_worker.poll() is None
    return provision(capture, "s", {"sensors": "temperature", "cameras": "video"}, runtime=services)


def test_a_revoked_certificate_stops_its_open_session_only(tenant_a: Provisioned) -> None:
    # given a device producing over mTLS and over OAUTHBEARER
    dev = kafka_device(tenant_a, "sensors")
    # when its certificate is revoked
    certificate_revoke(actor=ACTOR, certificate=dev.certificate, reason="key_compromise")
    # then the mTLS session's next record is refused within the bound; the token keeps working
    assert_stopped(dev.mtls)
    assert dev.oauth.send() is None


def test_an_oauth_client_revoked_stops_its_open_session_only(tenant_a: Provisioned) -> None:
    dev = kafka_device(tenant_a, "sensors")
    oauth_client_revoke(actor=ACTOR, client=dev.client)
    # the token is valid for another 15 minutes, but its principal has lost its grant
    assert_stopped(dev.oauth)
    assert dev.mtls.send() is None


def test_a_disabled_device_stops_on_both_listeners(tenant_a: Provisioned) -> None:
    dev = kafka_device(tenant_a, "sensors")
    other = kafka_device(tenant_a, "sensors")
    device_services.device_update(actor=ACTOR, device=dev.device, status=Device.Status.DISABLED)
    assert_stopped(dev.mtls, dev.oauth)
    # another device of the same group is not disturbed
    assert other.mtls.send() is None
    assert other.oauth.send() is None


def test_a_device_moved_to_another_group_stops_writing_as_its_old_group(tenant_a: Provisioned) -> None:
    dev = kafka_device(tenant_a, "sensors")
    device_services.device_update(actor=ACTOR, device=dev.device, group=tenant_a.groups["cameras"])
    assert_stopped(dev.mtls, dev.oauth)
    # its certificate named the old group and is revoked; its client now speaks for the new one
    assert Certificate.objects.get(pk=dev.certificate.pk).revocation_reason == "affiliation_changed"
    moved = token_session(tenant_a.runtime, dev.client, tenant_a.groups["cameras"].stream.topic)
    deadline = time.monotonic() + BOUND_SECONDS
    while moved.send() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert moved.send() is None


def test_a_deleted_device_stops_on_both_listeners(tenant_a: Provisioned) -> None:
    dev = kafka_device(tenant_a, "sensors")
    device_services.device_delete(actor=ACTOR, device=dev.device)
    assert_stopped(dev.mtls, dev.oauth)


def test_a_suspended_tenant_stops_on_both_listeners(tenant_a: Provisioned) -> None:
    dev = kafka_device(tenant_a, "sensors")
    tenant_set_status(actor=ACTOR, tenant=tenant_a.tenant, status=Tenant.Status.SUSPENDED)
    assert_stopped(dev.mtls, dev.oauth)


def test_a_deleted_tenant_stops_on_both_listeners(tenant_a: Provisioned) -> None:
    dev = kafka_device(tenant_a, "sensors")
    tenant_delete(actor=ACTOR, tenant=tenant_a.tenant, confirm=tenant_a.tenant.slug)
    assert_stopped(dev.mtls, dev.oauth)


def test_a_policy_switch_withdraws_the_credentials_it_excludes(tenant_a: Provisioned) -> None:
    # given a device with a certificate and a token, in a group that admits both
    dev = kafka_device(tenant_a, "sensors")
    group = tenant_a.groups["sensors"]

    # when the group switches to OAuth2 only
    device_services.group_update(actor=ACTOR, group=group, credential_policy=DeviceGroup.CredentialPolicy.OAUTH2)
    # then its certificates stop on Kafka and are revoked (audited, in the CRL), tokens go on
    assert_stopped(dev.mtls)
    assert dev.oauth.send() is None
    revoked = Certificate.objects.get(pk=dev.certificate.pk)
    assert (revoked.status, revoked.revocation_reason) == (Certificate.Status.REVOKED, "privilege_withdrawn")
    assert AuditEvent.objects.filter(action="certificate.revoke", object_id=str(revoked.pk)).exists()

    # when it switches to mTLS only, then its tokens stop and its OAuth clients are revoked
    device_services.group_update(actor=ACTOR, group=group, credential_policy=DeviceGroup.CredentialPolicy.MTLS)
    assert_stopped(dev.oauth)
    assert OAuthClient.objects.get(pk=dev.client.pk).status == OAuthClient.Status.REVOKED


def test_turning_kafka_direct_access_off_stops_on_both_listeners(tenant_a: Provisioned) -> None:
    dev = kafka_device(tenant_a, "sensors")
    device_services.group_update(actor=ACTOR, group=tenant_a.groups["sensors"], kafka_direct=False)
    assert_stopped(dev.mtls, dev.oauth)
    # the credentials themselves stay valid (HTTPS ingest still takes them)
    assert Certificate.objects.get(pk=dev.certificate.pk).status == Certificate.Status.ACTIVE
    assert OAuthClient.objects.get(pk=dev.client.pk).status == OAuthClient.Status.ACTIVE
