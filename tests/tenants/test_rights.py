"""``tenants.rights``: a change of rights is announced on Redis after its transaction
commits, and never when it rolls back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from django.db import transaction

from config.env import Runtime
from devices.services import device_create, device_update
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.rights import CHANNEL, RightsChange
from tenants.services import tenant_set_status

ACTOR = Actor.system("test")


@pytest.fixture
def announcements(services: Runtime) -> Iterator[redis.client.PubSub]:
    subscriber = redis.Redis.from_url(services.redis_url()).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(CHANNEL)
    subscriber.get_message(timeout=1)  # the subscription's own confirmation
    yield subscriber
    subscriber.close()


def _next(subscriber: redis.client.PubSub, timeout: float = 3.0) -> RightsChange | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = subscriber.get_message(timeout=0.1)
        if message is not None:
            return RightsChange.from_message(message["data"])
    return None


def test_a_message_round_trips() -> None:
    change = RightsChange(tenant_id=3, groups=frozenset({1, 2}), certificates=frozenset({"ab"}))
    assert RightsChange.from_message(change.to_message()) == change


def test_disabling_a_device_is_announced_after_commit(
    tenant: Tenant, announcements: redis.client.PubSub, django_capture_on_commit_callbacks
) -> None:
    # given a device
    device = device_create(actor=ACTOR, tenant=tenant, group="sensors", device_id="d-1")
    # when it is disabled and the transaction commits
    with django_capture_on_commit_callbacks(execute=True):
        device_update(actor=ACTOR, device=device, status="disabled")
    # then every ingest worker hears that exactly this device changed
    change = _next(announcements)
    assert change == RightsChange(tenant_id=tenant.pk, devices=frozenset({device.pk}))


def test_a_suspension_names_the_whole_tenant(
    tenant: Tenant, announcements: redis.client.PubSub, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(actor=ACTOR, tenant=tenant, status="suspended")
    change = _next(announcements)
    assert change is not None
    assert change.tenant_id == tenant.pk
    assert change.whole_tenant


def test_nothing_is_announced_when_the_transaction_rolls_back(
    tenant: Tenant, announcements: redis.client.PubSub, django_capture_on_commit_callbacks
) -> None:
    device = device_create(actor=ACTOR, tenant=tenant, group="sensors", device_id="d-2")
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():  # noqa: PT012
        device_update(actor=ACTOR, device=device, status="disabled")
        raise RuntimeError("roll back")
    assert _next(announcements, timeout=1.0) is None
