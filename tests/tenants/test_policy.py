"""The one credential policy (``tenants.policy``): every status combination, per use, and
its callers answering alike.  Pure: no database, no services (model instances are built,
never saved)."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import pytest

from certs import apis as certs_apis
from certs import services as certs_services
from certs.models import Certificate, CertificateAuthority
from config.errors import Conflict, InvalidInput, PermissionDenied, SluiceError, Unauthenticated
from devices.models import Device, DeviceGroup
from ingest import acls
from ingest import services as ingest_services
from ingest.identity import CertificateGrant, ClientGrant, Identity, Writer
from tenants import policy, states
from tenants.models import Tenant
from tenants.oauth.models import OAuthClient
from tenants.oauth.server import OAuthClientAdapter
from tenants.oauth.tokens import AccessClaims

Use = policy.Use
NOW = 1_000_000.0
HOUR = 3600.0

# -- the certificate: each state, each use ------------------------------------------------------

# state -> (status, not_before, not_after, overlap_until), times relative to NOW
CERTIFICATES = {
    "active": (states.ACTIVE, None, NOW + HOUR, None),
    "revoked": (states.REVOKED, None, NOW + HOUR, None),
    "superseded-in-overlap": (states.SUPERSEDED, None, NOW + HOUR, NOW + 1),
    "superseded-after-overlap": (states.SUPERSEDED, None, NOW + HOUR, NOW),
    "superseded-without-overlap": (states.SUPERSEDED, None, NOW + HOUR, None),
    "expired": (states.ACTIVE, None, NOW, None),
    "not-yet-valid": (states.ACTIVE, NOW + 1, NOW + HOUR, None),
}
CERTIFICATE_USES = (Use.INGEST_CERTIFICATE, Use.KAFKA_CERTIFICATE, Use.TLS_CLIENT, Use.EST_RENEWAL, Use.EST_COLLECT)
# The expected verdict of each state, in the order of CERTIFICATE_USES: None is allowed,
# otherwise (code, HTTP status).
OK = None
REVOKED_403 = ("certificate_revoked", 403)
SUPERSEDED_403 = ("certificate_superseded", 403)
SUPERSEDED_409 = ("certificate_superseded", 409)
EXPIRED_401 = ("certificate_expired", 401)
NOT_YET_401 = ("certificate_not_yet_valid", 401)
CERTIFICATE_VERDICTS = {
    # state                         ingest          kafka           TLS client   EST renewal     EST collect
    "active":                      (OK,             OK,             OK,          OK,             OK),
    "revoked":                     (REVOKED_403,    REVOKED_403,    REVOKED_403, REVOKED_403,    REVOKED_403),
    "superseded-in-overlap":       (OK,             OK,             OK,          SUPERSEDED_409, OK),
    "superseded-after-overlap":    (SUPERSEDED_403, SUPERSEDED_403, OK,          SUPERSEDED_409, OK),
    "superseded-without-overlap":  (SUPERSEDED_403, SUPERSEDED_403, OK,          SUPERSEDED_409, OK),
    "expired":                     (EXPIRED_401,    EXPIRED_401,    OK,          EXPIRED_401,    OK),
    "not-yet-valid":               (NOT_YET_401,    NOT_YET_401,    NOT_YET_401, NOT_YET_401,    NOT_YET_401),
}  # fmt: skip


def verdict(refusal: policy.Refusal | None) -> tuple[str, int] | None:
    return None if refusal is None else (refusal.code, refusal.status)


def certificate_refusal(use: str, state: str, *, now: float = NOW) -> policy.Refusal | None:
    status, not_before, not_after, overlap_until = CERTIFICATES[state]
    return policy.certificate_refusal(use, status=status, not_before=not_before, not_after=not_after,
                                      overlap_until=overlap_until, now=now)  # fmt: skip


@pytest.mark.parametrize(("state", "use"), list(itertools.product(CERTIFICATES, CERTIFICATE_USES)))
def test_a_certificate_may_act_as_its_state_and_the_use_say(state: str, use: str) -> None:
    expected = CERTIFICATE_VERDICTS[state][CERTIFICATE_USES.index(use)]
    assert verdict(certificate_refusal(use, state)) == expected


def test_certificate_times_may_be_datetimes_as_the_orm_gives_them() -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    tomorrow = now + dt.timedelta(days=1)
    refusal = policy.certificate_refusal(
        Use.INGEST_CERTIFICATE, status=states.SUPERSEDED, not_after=tomorrow, overlap_until=now, now=now
    )
    assert verdict(refusal) == SUPERSEDED_403
    allowed = policy.certificate_refusal(
        Use.INGEST_CERTIFICATE, status=states.ACTIVE, not_after=tomorrow, overlap_until=None, now=now
    )
    assert allowed is None


# -- tenant x device x group policy, each use ------------------------------------------------------

HOLDER_USES = (
    Use.INGEST_CERTIFICATE,
    Use.INGEST_TOKEN,
    Use.KAFKA_CERTIFICATE,
    Use.KAFKA_CLIENT,
    Use.EST_RENEWAL,
    Use.EST_COLLECT,
    Use.CERTIFICATE_REQUEST,
    Use.CERTIFICATE_ISSUANCE,
    Use.TOKEN_ISSUANCE,
    Use.TOKEN_USE,
)
A, S, X = states.ACTIVE, states.SUSPENDED, states.DISABLED
T = ("tenant_suspended", 403)
D = ("device_disabled", 403)
P = ("credential_not_allowed", 403)
TC = ("tenant_suspended", 401)  # a token's client: 401
DC = ("device_disabled", 401)
PC = ("credential_policy", 401)
DR = ("device_disabled", 409)  # the REST API's request to issue
IG = ("invalid", 400, "credential_policy")  # issuance: the group's refusal, as a field error
ID = ("invalid", 400, None)  # issuance: the device's refusal
HOLDER_VERDICTS = {
    # tenant, device, policy   ingest:cert token  kafka:cert client  EST:renew collect  API  issue  token:issue use
    (A, A, "mtls"):               (OK,   P,       OK,    P,          OK,   OK,          OK,  OK,    PC,    PC),
    (A, A, "oauth2"):             (P,    OK,      P,     OK,         OK,   OK,          OK,  IG,    OK,    OK),
    (A, A, "both"):               (OK,   OK,      OK,    OK,         OK,   OK,          OK,  OK,    OK,    OK),
    (A, X, "mtls"):               (D,    D,       D,     D,          OK,   D,           DR,  ID,    DC,    DC),
    (A, X, "oauth2"):             (D,    D,       D,     D,          OK,   D,           DR,  IG,    DC,    DC),
    (A, X, "both"):               (D,    D,       D,     D,          OK,   D,           DR,  ID,    DC,    DC),
    (S, A, "mtls"):               (T,    T,       T,     T,          T,    T,           OK,  OK,    TC,    TC),
    (S, A, "oauth2"):             (T,    T,       T,     T,          T,    T,           OK,  IG,    TC,    TC),
    (S, A, "both"):               (T,    T,       T,     T,          T,    T,           OK,  OK,    TC,    TC),
    (S, X, "mtls"):               (T,    T,       T,     T,          T,    T,           DR,  ID,    TC,    TC),
    (S, X, "oauth2"):             (T,    T,       T,     T,          T,    T,           DR,  IG,    TC,    TC),
    (S, X, "both"):               (T,    T,       T,     T,          T,    T,           DR,  ID,    TC,    TC),
}  # fmt: skip


def holder_refusal(use: str, tenant: str, device: str, credential_policy: str) -> policy.Refusal | None:
    return policy.holder_refusal(use, tenant_status=tenant, device_status=device, credential_policy=credential_policy,
                                 tenant="acme", device="d-1", group="sensors")  # fmt: skip


def full_verdict(refusal: policy.Refusal | None) -> tuple[object, ...] | None:
    if refusal is None:
        return None
    if refusal.error is InvalidInput:
        return (refusal.code, refusal.status, refusal.fields[0][1] if refusal.fields else None)
    return (refusal.code, refusal.status)


@pytest.mark.parametrize(("holder", "use"), list(itertools.product(HOLDER_VERDICTS, HOLDER_USES)))
def test_tenant_device_and_group_let_a_credential_act_as_the_use_says(holder: tuple[str, str, str], use: str) -> None:
    expected = HOLDER_VERDICTS[holder][HOLDER_USES.index(use)]
    assert full_verdict(holder_refusal(use, *holder)) == expected


def test_a_gateway_or_service_client_has_no_device_and_a_service_client_no_group() -> None:
    for use in (Use.TOKEN_ISSUANCE, Use.TOKEN_USE, Use.KAFKA_CLIENT):
        assert (
            policy.holder_refusal(use, tenant_status="active", device_status=None, credential_policy="oauth2") is None
        )
        assert policy.holder_refusal(use, tenant_status="active", device_status=None, credential_policy=None) is None
        refused = policy.holder_refusal(use, tenant_status="active", device_status=None, credential_policy="mtls")
        assert refused is not None
        assert refused.code in ("credential_policy", "credential_not_allowed")


# -- the client, and the order of the whole ------------------------------------------------------


@pytest.mark.parametrize("use", [Use.TOKEN_ISSUANCE, Use.TOKEN_USE, Use.KAFKA_CLIENT])
@pytest.mark.parametrize("holder", list(HOLDER_VERDICTS))
def test_a_revoked_client_is_refused_first_by_issuance_the_api_and_kafka(
    use: str, holder: tuple[str, str, str]
) -> None:
    tenant, device, credential_policy = holder
    facts = {"tenant_status": tenant, "device_status": device, "credential_policy": credential_policy}
    produce = frozenset({"kafka:produce"})
    refusal = policy.oauth_client_refusal(use, status=states.REVOKED, scopes=produce, **facts)
    assert verdict(refusal) == ("client_revoked", 401)
    active = policy.oauth_client_refusal(use, status=states.ACTIVE, scopes=produce, **facts)
    assert full_verdict(active) == HOLDER_VERDICTS[holder][HOLDER_USES.index(use)]


def test_a_client_without_kafka_produce_gets_no_acl() -> None:
    refusal = policy.client_refusal(Use.KAFKA_CLIENT, status=states.ACTIVE, scopes=frozenset({"ingest:write"}))
    assert verdict(refusal) == ("insufficient_scope", 403)
    assert policy.client_refusal(Use.INGEST_TOKEN, status=states.ACTIVE) is None


@pytest.mark.parametrize(("state", "holder"), list(itertools.product(CERTIFICATES, HOLDER_VERDICTS)))
def test_ingest_by_certificate_judges_the_certificate_before_what_it_speaks_for(
    state: str, holder: tuple[str, str, str]
) -> None:
    # given a device's certificate in this state, its tenant, device and group as given
    status, _not_before, not_after, overlap_until = CERTIFICATES[state]
    tenant, device, credential_policy = holder
    writer = make_writer(tenant_status=tenant, status=device, credential_policy=credential_policy)
    grant = CertificateGrant(serial="ab", status=status, revoked_at=None, overlap_until=overlap_until,
                             not_after=not_after, tenant_id=1, device_pk=1, issuer="CN=ca")  # fmt: skip
    # when ingest decides (nginx checked not_before: ingest is never shown a not-yet-valid one)
    expected = CERTIFICATE_VERDICTS[state][0] if state != "not-yet-valid" else None
    expected = expected or HOLDER_VERDICTS[holder][0]
    # then the certificate's own refusal comes first, then the holder's
    error = refused(lambda: ingest_services.certificate_verdict(Identity(grant, writer), issuer="", now=NOW))
    assert code_of(error) == expected


@pytest.mark.parametrize("client_status", [states.ACTIVE, states.REVOKED])
@pytest.mark.parametrize("holder", list(HOLDER_VERDICTS))
def test_ingest_by_token_judges_the_client_last(client_status: str, holder: tuple[str, str, str]) -> None:
    tenant, device, credential_policy = holder
    writer = make_writer(tenant_status=tenant, status=device, credential_policy=credential_policy)
    expected = HOLDER_VERDICTS[holder][1] or (("client_revoked", 401) if client_status == states.REVOKED else None)
    error = refused(lambda: ingest_services.token_verdict(claims(), Identity(client_grant(client_status), writer)))
    assert code_of(error) == expected


# -- the callers answer alike ------------------------------------------------------------------------


def make_writer(*, tenant_status: str = "active", status: str = "active", credential_policy: str = "both") -> Writer:
    return Writer(pk=1, device_id="d-1", status=status, tenant_id=1, tenant_slug="acme", tenant_status=tenant_status,
                  tenant_max_records_per_second=10, tenant_max_bytes_per_second=10_000, group_id=1,
                  group_slug="sensors", group_tenant_id=1, credential_policy=credential_policy,
                  rate_limit_per_second=10, schema_subject="s", stream_tenant_id=1, topic="iot.acme.eu.t")  # fmt: skip


def client_grant(status: str = "active") -> ClientGrant:
    return ClientGrant(client_id="sc_1", status=status, kind="device", scopes=frozenset({"ingest:write"}), tenant_id=1,
                       tenant_slug="acme", device_pk=1)  # fmt: skip


def claims() -> AccessClaims:
    return AccessClaims(
        client_id="sc_1",
        tenant="acme",
        scopes=frozenset({"ingest:write"}),
        audiences=("sluice-ingest",),
        expires_at=dt.datetime.now(dt.UTC),
        jti="j",
        kafka_principal="acme.sensors.sc_1",
        device="d-1",
    )


def refused(call: object) -> SluiceError | None:
    try:
        call()  # type: ignore[operator]
    except SluiceError as error:
        return error
    return None


def model_device(*, tenant_status: str, device_status: str, credential_policy: str) -> Device:
    """A device, its group and its tenant as model instances (never saved)."""
    tenant = Tenant(pk=1, slug="acme", name="Acme", status=tenant_status)
    group = DeviceGroup(pk=1, tenant=tenant, slug="sensors", credential_policy=credential_policy)
    return Device(pk=1, tenant=tenant, group=group, device_id="d-1", status=device_status)


def model_certificate(device: Device, state: str) -> Certificate:
    status, not_before, not_after, overlap_until = CERTIFICATES[state]
    at = lambda t: dt.datetime.fromtimestamp(t, dt.UTC) if t is not None else None  # noqa: E731
    now = time.time()  # the services read the clock: shift the states to it
    shift = lambda t: at(t - NOW + now) if t is not None else None  # noqa: E731
    authority = CertificateAuthority(pk=1, tenant=device.tenant)
    return Certificate(pk=1, tenant=device.tenant, device=device, ca=authority, serial="ab", status=status,
                       not_before=shift(not_before or NOW - HOUR), not_after=shift(not_after),
                       overlap_until=shift(overlap_until))  # fmt: skip


def code_of(error: SluiceError | None) -> tuple[str, int] | None:
    return None if error is None else (error.code, error.status)


@pytest.mark.parametrize(
    ("holder", "ingest", "est", "token"),
    [
        (("suspended", "active", "both"), ("tenant_suspended", 403), ("tenant_suspended", 403), "tenant_suspended"),
        (("active", "disabled", "both"), ("device_disabled", 403), ("device_disabled", 403), "device_disabled"),
    ],
)
def test_the_same_combination_is_refused_alike_by_ingest_est_and_token_issuance(
    holder: tuple[str, str, str], ingest: tuple[str, int], est: tuple[str, int], token: str
) -> None:
    # given a device (and its certificate and OAuth client) whose tenant or device refuses it
    tenant, device_status, credential_policy = holder
    writer = make_writer(tenant_status=tenant, status=device_status, credential_policy=credential_policy)
    device = model_device(tenant_status=tenant, device_status=device_status, credential_policy=credential_policy)
    superseded = model_certificate(device, "superseded-in-overlap")
    client = OAuthClient(tenant=device.tenant, kind=OAuthClient.Kind.DEVICE, device=device, status=states.ACTIVE)
    grant = CertificateGrant(serial="ab", status="active", revoked_at=None, overlap_until=None, not_after=NOW + HOUR,
                             tenant_id=1, device_pk=1, issuer="CN=ca")  # fmt: skip

    # then ingest refuses it by certificate and by token with the same code
    by_certificate = refused(lambda: ingest_services.certificate_verdict(Identity(grant, writer), issuer="", now=NOW))
    by_token = refused(lambda: ingest_services.token_verdict(claims(), Identity(client_grant(), writer)))
    assert code_of(by_certificate) == code_of(by_token) == ingest
    # and EST's collection of a renewed certificate says the same
    assert code_of(refused(lambda: certs_services.certificate_collect_successor(presented=superseded))) == est
    # and the token endpoint refuses the client with that code's message
    refusal = OAuthClientAdapter(client).refusal()
    assert refusal is not None
    assert refusal.code == token
    assert policy.oauth_client_refusal(Use.TOKEN_USE, **client.policy_facts()) == refusal
    # and the client gets no Kafka ACL
    group = acls.GroupSnapshot(slug="sensors", topic="iot.acme.t", kafka_direct=True, credential_policy="both")
    facts = acls.ClientFacts(client_id="sc_1", active=True, scopes=frozenset({"kafka:produce"}),
                             device_active=device_status == "active")  # fmt: skip
    assert not acls.client_usable(facts, group=group, tenant_active=tenant == "active")


def test_a_suspended_tenant_stops_est_renewal_and_ingest_alike() -> None:
    device = model_device(tenant_status="suspended", device_status="active", credential_policy="mtls")
    presented = model_certificate(device, "active")
    renewal = refused(lambda: certs_services.certificate_renew(presented=presented, csr_pem=b""))
    assert code_of(renewal) == ("tenant_suspended", 403)
    assert renewal is not None
    assert renewal.message == "Tenant 'acme' is suspended."
    writer = make_writer(tenant_status="suspended", credential_policy="mtls")
    grant = CertificateGrant(serial="ab", status="active", revoked_at=None, overlap_until=None, not_after=NOW + HOUR,
                             tenant_id=1, device_pk=1, issuer="CN=ca")  # fmt: skip
    by_ingest = refused(lambda: ingest_services.certificate_verdict(Identity(grant, writer), issuer="", now=NOW))
    assert by_ingest is not None
    assert (by_ingest.code, by_ingest.message) == (renewal.code, renewal.message)


@pytest.mark.parametrize("state", list(CERTIFICATES))
def test_est_renewal_answers_each_certificate_state_as_the_policy_says(state: str) -> None:
    device = model_device(tenant_status="active", device_status="active", credential_policy="mtls")
    presented = model_certificate(device, state)
    error = refused(lambda: certs_services.certificate_renew(presented=presented, csr_pem=b"not a csr"))
    expected = CERTIFICATE_VERDICTS[state][CERTIFICATE_USES.index(Use.EST_RENEWAL)]
    if state == "not-yet-valid":
        expected = None  # EST leaves not_before to nginx: the services are never told it
    if expected is None:
        assert isinstance(error, InvalidInput)  # allowed: the next refusal is the CSR's
    else:
        assert code_of(error) == expected


def test_certificate_issuance_refuses_as_the_policy_says_in_the_api_and_the_service() -> None:
    # given a disabled device in a group that allows OAuth2 only
    device = model_device(tenant_status="active", device_status="disabled", credential_policy="oauth2")
    # then the REST API's request refuses the device first, as a 409
    error = refused(lambda: certs_apis._issuable(device))
    assert isinstance(error, Conflict)
    assert (error.code, error.message) == ("device_disabled", "Device 'd-1' is disabled; enable it first.")
    # and the service (console, bulk, EST renewal) refuses the group first, as a field error
    error = refused(lambda: certs_services._usable_group(device))
    assert isinstance(error, InvalidInput)
    assert error.message == "Device group 'sensors' uses OAuth2 tokens only; it issues no certificates."
    assert error.fields == [
        {"pointer": "/", "code": "credential_policy", "message": "The group's policy is OAuth2 only."}
    ]


def test_a_revoked_certificate_is_refused_by_the_tls_identity_and_ingest() -> None:
    tls = policy.certificate_refusal(
        Use.TLS_CLIENT, status="revoked", not_after=NOW + HOUR, overlap_until=None, now=NOW
    )
    assert tls is not None
    assert isinstance(tls.exception(), PermissionDenied)
    grant = CertificateGrant(serial="ab", status="revoked", revoked_at=NOW, overlap_until=None, not_after=NOW + HOUR,
                             tenant_id=1, device_pk=1, issuer="CN=ca")  # fmt: skip
    by_ingest = refused(lambda: ingest_services.certificate_verdict(Identity(grant, make_writer()), issuer="", now=NOW))
    assert code_of(by_ingest) == verdict(tls) == REVOKED_403


def test_an_expired_certificate_is_a_401_everywhere() -> None:
    for use in (Use.INGEST_CERTIFICATE, Use.EST_RENEWAL, Use.KAFKA_CERTIFICATE):
        refusal = certificate_refusal(use, "expired")
        assert refusal is not None
        assert isinstance(refusal.exception(), Unauthenticated)


def test_the_models_choices_are_the_policys_values() -> None:
    assert set(Tenant.Status.values) == {states.ACTIVE, states.SUSPENDED}
    assert set(Device.Status.values) == {states.ACTIVE, states.DISABLED}
    assert set(DeviceGroup.CredentialPolicy.values) == {states.MTLS, states.OAUTH2, states.BOTH}
    assert set(Certificate.Status.values) == {states.ACTIVE, states.SUPERSEDED, states.REVOKED}
    assert set(OAuthClient.Status.values) == {states.ACTIVE, states.REVOKED}
    assert set(DeviceGroup.CredentialPolicy.values) == states.CERTIFICATE_POLICIES | states.OAUTH_POLICIES
