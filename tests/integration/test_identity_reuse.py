"""Identities never come back to life: a tenant deleted and created again with the same
tenant, group and device slugs gives the old certificate and the old token nothing -- not on
HTTPS ingest, not on Kafka's mTLS listener, not on its OAUTHBEARER listener, neither on a
connection opened before the deletion nor on a new one -- while the new tenant's own
credentials work.  Its schema subjects went with it."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from django.utils import timezone

from certs.services import Issued, certificate_issue_generated
from config.env import Runtime
from config.errors import Conflict
from devices import services as device_services
from devices.models import DeviceGroup
from devices.registry import registry_client, schema_register, value_subject
from ingest.kafka import client_config, oauth_client_config
from tenants.audit import Actor
from tenants.models import RetiredSlug, Tenant
from tenants.oauth.models import OAuthClient
from tenants.oauth.server import OAuthClientAdapter
from tenants.oauth.services import oauth_client_create
from tenants.services import tenant_create, tenant_delete
from tests.conftest import unique_slug
from tests.integration.test_acls_live import eager_tasks
from tests.integration.test_ingest import _post
from tests.schemas import READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")


@dataclass
class Identity:
    """One incarnation of tenant <slug> / group sensors / device dev-1 with both credentials."""

    tenant: Tenant
    topic: str
    issued: Issued
    client: OAuthClient
    client_principal: str
    token: str

    def mtls_config(self, runtime: Runtime) -> dict[str, Any]:
        return client_config(runtime, certificate_pem=self.issued.chain_pem, key_pem=self.issued.key_pem or "")

    def oauth_config(self, runtime: Runtime) -> dict[str, Any]:
        token = self.token
        return oauth_client_config(runtime, oauth_cb=lambda _config: (token, time.time() + 600))


def incarnate(runtime: Runtime, capture: Callable[..., Any], slug: str) -> Identity:
    with eager_tasks(), capture(execute=True):
        tenant = tenant_create(actor=ACTOR, slug=slug, name="Reuse test")
        stream = device_services.stream_create(
            actor=ACTOR, tenant=tenant, region="eu", type="temperature", partitions=1
        )
    schema_register(subject=value_subject(stream.topic), schema_str=json.dumps(READING_JSON), schema_type="JSON")
    with eager_tasks(), capture(execute=True):
        group = device_services.group_create(actor=ACTOR, tenant=tenant, stream=stream, slug="sensors", region="eu",
                                             device_type="temperature", kafka_direct=True,
                                             credential_policy=DeviceGroup.CredentialPolicy.BOTH)  # fmt: skip
        device = device_services.device_create(actor=ACTOR, tenant=tenant, group=group, device_id="dev-1")
        issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")
        client, _secret = oauth_client_create(actor=ACTOR, tenant=tenant, kind="device", name="dev-1",
                                              scopes=["ingest:write", "kafka:produce"], device=device)  # fmt: skip
    token, _lifetime = OAuthClientAdapter(OAuthClient.objects.get(pk=client.pk)).mint(["ingest:write", "kafka:produce"])
    principal = f"User:{OAuthClient.objects.get(pk=client.pk).kafka_principal}"
    return Identity(tenant=tenant, topic=stream.topic, issued=issued, client=client, client_principal=principal,
                    token=token)  # fmt: skip


def producer(config: dict[str, Any]) -> Producer:
    # A short message timeout: a refused handshake is retried until it runs out.
    return Producer({**config, "enable.idempotence": True, "acks": "all", "message.timeout.ms": 8000})


def produce(session: Producer, topic: str) -> KafkaError | None:
    """One record's delivery error (None when acknowledged); a producer refused its id is fatal."""
    outcome: list[KafkaError | None] = []
    try:
        session.produce(topic, value=b'{"celsius": 1.0}', on_delivery=lambda err, _msg: outcome.append(err))
        session.flush(15)
    except KafkaException as exc:
        return exc.args[0]
    assert outcome, "the producer never reported the delivery outcome"
    return outcome[0]


def https_status(post: Callable[..., Any], headers: dict[str, str] | None = None) -> int:
    """The status of one ingest POST, 0 when the TLS handshake itself was refused."""
    try:
        return post({"celsius": 21.5}, headers=headers)[0]
    except (ssl.SSLError, urllib.error.URLError, ConnectionError):
        return 0


def test_a_recreated_tenant_gives_the_old_certificate_and_token_nothing(
    services: Runtime, django_capture_on_commit_callbacks: Callable[..., Any], tmp_path: Path
) -> None:
    capture = django_capture_on_commit_callbacks
    slug = unique_slug("re")
    # given tenant <slug> with group sensors and device dev-1, whose certificate and token
    # work on HTTPS ingest and on both Kafka listeners, with a session open on each
    old = incarnate(services, capture, slug)
    (tmp_path / "old").mkdir()
    old_cert_post = _post(services, tmp_path / "old", old.issued)
    token_post = _post(services, tmp_path, None)
    assert https_status(old_cert_post) == 200
    assert https_status(token_post, {"Authorization": f"Bearer {old.token}"}) == 200
    open_mtls, open_oauth = producer(old.mtls_config(services)), producer(old.oauth_config(services))
    assert produce(open_mtls, old.topic) is None
    assert produce(open_oauth, old.topic) is None

    # when the tenant is deleted (topics with it)
    with eager_tasks(), capture(execute=True):
        tenant_delete(actor=ACTOR, tenant=old.tenant, confirm=slug)
    # then its schema subjects are gone from the registry, and its slug cannot be taken at once
    assert [s for s in registry_client().get_subjects() if s.startswith(f"iot.{slug}.")] == []
    with pytest.raises(Conflict) as refused:
        tenant_create(actor=ACTOR, slug=slug, name="Too early")
    assert refused.value.code == "slug_retired"

    # when the reservation has run out (as 24 h later) and the same slugs are created again
    RetiredSlug.objects.filter(slug=slug).update(reserved_until=timezone.now())
    new = incarnate(services, capture, slug)
    assert new.topic == old.topic
    assert new.issued.certificate.kafka_principal != old.issued.certificate.kafka_principal
    assert new.client_principal != old.client_principal
    # (the new subject starts from scratch: no version of the old tenant's schema history)
    assert registry_client().get_versions(value_subject(new.topic)) == [1]

    # then the old certificate and the old token get nothing on HTTPS ingest
    assert https_status(old_cert_post) != 200
    assert https_status(token_post, {"Authorization": f"Bearer {old.token}"}) == 401
    # nor on Kafka: the sessions opened before the deletion, and new connections of either
    assert produce(open_mtls, new.topic) is not None
    assert produce(open_oauth, new.topic) is not None
    assert produce(producer(old.mtls_config(services)), new.topic) is not None
    assert produce(producer(old.oauth_config(services)), new.topic) is not None
    # while the new tenant's own credentials work everywhere
    (tmp_path / "new").mkdir()
    assert https_status(_post(services, tmp_path / "new", new.issued)) == 200
    assert https_status(token_post, {"Authorization": f"Bearer {new.token}"}) == 200
    assert produce(producer(new.mtls_config(services)), new.topic) is None
    assert produce(producer(new.oauth_config(services)), new.topic) is None
