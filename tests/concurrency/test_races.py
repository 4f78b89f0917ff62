"""The services' concurrency guarantees, raced for real: each contender is a thread with its
own database connection and its own transaction, released together by a barrier.

They run in both passes of `sluice test`.  On PostgreSQL (READ COMMITTED, row locks) the
transactions truly overlap, so these prove the conditional UPDATEs, the row locks
(``select_for_update``) and the unique constraints, not an accident of scheduling; on SQLite
the IMMEDIATE transactions run one after the other, and the same outcomes must hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, connection

from certs import ca
from certs.models import Certificate, CertificateAuthority
from certs.rotation import pki_rotate
from certs.services import (
    certificate_collect_successor,
    certificate_issue_from_csr,
    certificate_issue_generated,
    certificate_renew,
    certificate_revoke,
    tenant_ca_create,
)
from config.env import Runtime
from config.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from devices.models import Device, DeviceGroup
from devices.services import device_create
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.oauth.models import OAuthClient
from tenants.oauth.services import oauth_client_create, oauth_client_revoke
from tests.certs.test_rotation import csr_pem, make_device, own_pki
from tests.conftest import make_tenant

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("race")
CONTENDERS = 4
# A contender waits at most this long for the others (a deadlock shows up as a failure).
RACE_TIMEOUT = 60.0

__all__ = ["own_pki"]  # the fixture, shared with the rotation tests


def race(contenders: int, attempt: Callable[[int], Any]) -> list[Any]:
    """Run ``attempt(i)`` in ``contenders`` threads released at once; each outcome is what it
    returned or the exception it raised."""
    start = threading.Barrier(contenders)
    outcomes: list[Any] = [None] * contenders

    def contender(index: int) -> None:
        try:
            start.wait(RACE_TIMEOUT)
            outcomes[index] = attempt(index)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test judges
            outcomes[index] = exc
        finally:
            connection.close()  # each thread had its own connection; give it back

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RACE_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a contender is still waiting (a deadlock?)"
    return outcomes


def test_of_concurrent_revocations_exactly_one_revokes(own_pki: Runtime) -> None:
    # given an active certificate
    device = make_device()
    issued = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    # when several operators revoke it at once
    outcomes = race(CONTENDERS, lambda _: certificate_revoke(actor=ACTOR, certificate=issued, reason="key_compromise"))
    # then one revoked it, every other was told it already was, and one audit row says so
    assert sum(isinstance(o, Certificate) for o in outcomes) == 1, outcomes
    assert all(
        isinstance(o, Conflict) and o.code == "already_revoked" for o in outcomes if not isinstance(o, Certificate)
    )
    assert AuditEvent.objects.filter(action="certificate.revoke", object_id=str(issued.pk)).count() == 1
    assert Certificate.objects.get(pk=issued.pk).status == Certificate.Status.REVOKED


def test_of_concurrent_renewals_with_one_certificate_exactly_one_issues(own_pki: Runtime) -> None:
    # given a device's active certificate, and a CSR per contender
    device = make_device()
    presented = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    csrs = [csr_pem(ca.generate_key()) for _ in range(CONTENDERS)]
    # when the device (or copies of it) renews several times at once with that certificate
    outcomes = race(CONTENDERS, lambda i: certificate_renew(presented=presented, csr_pem=csrs[i]))
    # then exactly one successor exists; the others were refused and left nothing behind
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, Conflict) and o.code == "certificate_superseded" for o in outcomes if o not in winners)
    assert Certificate.objects.filter(device=device, origin=Certificate.Origin.EST_RENEWAL).count() == 1
    assert Certificate.objects.get(pk=presented.pk).superseded_by_id == winners[0].certificate.pk


def test_concurrent_issuances_for_one_device_each_get_their_own_serial_and_principal(own_pki: Runtime) -> None:
    # given a device
    device = make_device()
    csrs = [csr_pem(ca.generate_key()) for _ in range(CONTENDERS)]
    # when several certificates are issued for it at once
    outcomes = race(CONTENDERS, lambda i: certificate_issue_from_csr(actor=ACTOR, device=device, csr_pem=csrs[i]))
    # then each got its own certificate: distinct serials and Kafka principals (unique in the database)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    issued = Certificate.objects.filter(device=device)
    assert issued.count() == CONTENDERS
    assert len(set(issued.values_list("serial", flat=True))) == CONTENDERS
    assert len(set(issued.values_list("kafka_principal", flat=True))) == CONTENDERS


def test_a_waiting_successor_key_is_handed_out_exactly_once(own_pki: Runtime) -> None:
    # given a successor with its key waiting for the device (rotation generated it)
    device = make_device(lifetime=1, window=30)
    generated = certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase").certificate
    assert len(pki_rotate().successors) == 1
    generated.refresh_from_db()
    # when several requests with the old certificate collect it at once
    outcomes = race(CONTENDERS, lambda _: certificate_collect_successor(presented=generated))
    # then exactly one got the key; the others found nothing waiting, and the key is gone
    collected = [o for o in outcomes if isinstance(o, tuple)]
    assert len(collected) == 1, outcomes
    assert all(isinstance(o, NotFound) and o.code == "no_pending_certificate" for o in outcomes if o not in collected)
    assert Certificate.objects.get(pk=generated.superseded_by_id).pending_key_encrypted == ""
    assert AuditEvent.objects.filter(action="certificate.collect").count() == 1


def test_a_tenant_never_has_two_active_issuing_cas(own_pki: Runtime) -> None:
    # given a tenant with its issuing CA
    tenant = make_device().tenant
    # when several operators rotate its CA at once
    outcomes = race(CONTENDERS, lambda _: tenant_ca_create(actor=ACTOR, tenant=tenant))
    # then every attempt either made the one active CA or collided with one that did (the
    # API answers that IntegrityError with 409 concurrent_change); never two active CAs
    assert all(isinstance(o, CertificateAuthority | IntegrityError) for o in outcomes), outcomes
    assert any(isinstance(o, CertificateAuthority) for o in outcomes)
    active = CertificateAuthority.objects.filter(tenant=tenant, status=CertificateAuthority.Status.ACTIVE)
    assert active.count() == 1


@pytest.mark.usefixtures("services")
def test_a_device_id_is_created_once_under_a_race() -> None:
    # given a tenant
    tenant = make_tenant("race-ids")
    # when several requests create the same device id at once
    outcomes = race(CONTENDERS, lambda _: device_create(actor=ACTOR, tenant=tenant, group="sensors", device_id="d1"))
    # then one device exists; each loser got the field error the API shows as a 409 on /device_id
    assert sum(isinstance(o, Device) for o in outcomes) == 1, outcomes
    losers = [o for o in outcomes if not isinstance(o, Device)]
    assert all(isinstance(o, InvalidInput) and o.fields[0]["pointer"] == "/device_id" for o in losers), losers
    assert all(o.fields[0]["code"] == "unique" for o in losers)
    assert Device.objects.filter(tenant=tenant, device_id="d1").count() == 1


@pytest.mark.usefixtures("services")
def test_concurrent_device_creates_never_pass_the_tenant_quota() -> None:
    # given a tenant with room for two more devices
    tenant = make_tenant("race-quota")
    Tenant.objects.filter(pk=tenant.pk).update(max_devices=2)
    tenant.refresh_from_db()
    contenders = 6
    # when six different devices are created at once
    outcomes = race(contenders, lambda i: device_create(actor=ACTOR, tenant=tenant, group="sensors",
                                                         device_id=f"d{i}"))  # fmt: skip
    # then exactly two were created and four refused for the quota
    assert sum(isinstance(o, Device) for o in outcomes) == 2, outcomes
    assert sum(isinstance(o, QuotaExceeded) for o in outcomes) == contenders - 2
    assert Device.objects.filter(tenant=tenant).count() == 2


@pytest.mark.usefixtures("services")
def test_of_concurrent_revocations_of_an_oauth_client_one_is_recorded() -> None:
    # given a device's OAuth client
    tenant = make_tenant("race-oauth")
    group = tenant.groups.get()
    DeviceGroup.objects.filter(pk=group.pk).update(credential_policy=DeviceGroup.CredentialPolicy.OAUTH2)
    device = Device.objects.create(tenant=tenant, group=DeviceGroup.objects.get(pk=group.pk), device_id="d1")
    client, _secret = oauth_client_create(actor=ACTOR, tenant=tenant, kind=OAuthClient.Kind.DEVICE, name="d1",
                                          scopes=["ingest:write"], device=device)  # fmt: skip
    # when several admins revoke it at once
    outcomes = race(CONTENDERS, lambda _: oauth_client_revoke(actor=ACTOR, client=client))
    # then all see it revoked, and the revocation was recorded once (the row lock serialised them)
    assert all(isinstance(o, OAuthClient) and not o.is_active for o in outcomes), outcomes
    assert AuditEvent.objects.filter(action="oauth_client.revoke", object_id=client.client_id).count() == 1
