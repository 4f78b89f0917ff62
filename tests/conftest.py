"""Shared fixtures.  Integration tests talk to the services ``platform/bin/sluice test``
started for this run (its state directory and ports arrive through the environment)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from certs import ca
from certs.crl_files import ROOT_CRL_NAME
from certs.platform_pki import ensure_platform_pki, load_root
from certs.principals import device_subject
from config.env import BASE_DIR, Runtime
from devices.models import DeviceGroup, Stream
from ingest.kafka import admin_config
from tenants.models import Membership, Tenant


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return settings.SLUICE_RUNTIME


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def services(runtime: Runtime) -> Runtime:
    """The real Redis, Kafka and registry of this test run; fails (never skips) without them."""
    missing = [
        name
        for name, port in (
            ("redis", runtime.ports.redis),
            ("kafka", runtime.ports.kafka),
            ("registry", runtime.ports.registry_management),  # its API is on a Unix socket
        )
        if not _listening(port)
    ]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not running on this run's ports; run the suite with: platform/bin/sluice test",
            pytrace=False,
        )
    ensure_platform_pki(runtime)
    return runtime


@pytest.fixture(scope="session")
def kafka_admin(services: Runtime) -> AdminClient:
    return AdminClient(admin_config(services))


@dataclass(frozen=True)
class ClientCredential:
    """A certificate and key from the platform CA, as a device or gateway would hold them."""

    tenant: str
    group: str
    device: str
    certificate_pem: str
    key_pem: str


def issue_device_credential(runtime: Runtime, *, tenant: str, group: str, device: str) -> ClientCredential:
    root = load_root(runtime)
    key = ca.generate_key()
    cert = ca.issue_leaf(
        issuer=root,
        subject=device_subject(tenant=tenant, group=group, device=device),
        public_key=key.public_key(),
        usage=ca.Usage.CLIENT,
        valid_days=1,
        # The broker checks revocation of every certificate (JDK CRLDP), so it needs a CRL.
        crl_urls=[runtime.crl_url(ROOT_CRL_NAME)],
    )
    return ClientCredential(
        tenant=tenant,
        group=group,
        device=device,
        certificate_pem=ca.certificate_pem(cert).decode(),
        key_pem=ca.private_key_pem(key).decode(),
    )


def unique_slug(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def kafka_topic(services: Runtime, kafka_admin: AdminClient) -> Iterator[str]:
    """A fresh topic under a fresh tenant prefix, deleted afterwards."""
    tenant = unique_slug("t")
    topic = f"iot.{tenant}.eu.temperature"
    new = NewTopic(topic, num_partitions=3, replication_factor=services.default_replication_factor)
    kafka_admin.create_topics([new])[topic].result(30)
    yield topic
    kafka_admin.delete_topics([topic])[topic].result(30)


# -- control-plane fixtures -------------------------------------------------------------


def make_tenant(slug: str) -> Tenant:
    """A tenant with one stream and one group, written directly (no Kafka side effects)."""
    tenant = Tenant.objects.create(slug=slug, name=f"{slug.title()} Inc.")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=3)
    DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature", stream=stream,
                               schema_subject=f"{stream.topic}-value")  # fmt: skip
    return tenant


def make_user(username: str, *, tenant: Tenant | None = None, role: str = Membership.Role.ADMIN,
              operator: bool = False) -> Any:  # fmt: skip
    user = get_user_model().objects.create_user(username=username, password="not-used-in-tests-123")
    if operator:
        user.is_superuser = user.is_staff = True
        user.save()
    if tenant is not None:
        Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def tenant(db: None) -> Tenant:
    return make_tenant("acme")


@pytest.fixture
def other_tenant(db: None) -> Tenant:
    return make_tenant("globex")


@pytest.fixture
def operator_client(db: None) -> APIClient:
    return client_for(make_user("operator", operator=True))


@pytest.fixture
def admin_client(tenant: Tenant) -> APIClient:
    return client_for(make_user("acme-admin", tenant=tenant))


@pytest.fixture
def viewer_client(tenant: Tenant) -> APIClient:
    return client_for(make_user("acme-viewer", tenant=tenant, role=Membership.Role.VIEWER))


def fresh_celery_connections() -> None:
    """Drop this process's pooled Celery (kombu) connections to Redis: after a test stopped
    and started the run's Redis, a pooled connection is dead, and kombu's control commands
    (ping, purge) do not reconnect ("Connection closed by server").  What Celery does after
    a fork: kombu's pools closed and forgotten, the app's references to them dropped; the
    next use builds new ones."""
    from kombu import pools

    from config.celery import app

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None  # type: ignore[attr-defined]


@pytest.fixture
def celery_worker(services: Runtime) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process on the run's Redis and database."""
    from config.celery import app

    fresh_celery_connections()
    # Tasks that earlier tests queued with no worker running name rows long gone (and a
    # backlog would delay this test's own tasks): the worker starts from an empty queue.
    app.control.purge()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--hostname", f"test-{os.getpid()}-{secrets.token_hex(3)}@localhost"],
        cwd=BASE_DIR,
        env=os.environ.copy(),
    )  # fmt: skip
    yield worker
    worker.terminate()
    worker.wait(timeout=30)
