"""Who may act now: the one credential policy.

Whether a certificate, an OAuth client, and the device, group and tenant a credential speaks
for may act *now*, for each use Sluice has: HTTPS ingest (by certificate, by token), the TLS
client identity of EST, EST renewal and collection, certificate issuance, token issuance,
the provisioning API's re-check of a token's client, and the Kafka ACL grant.  Pure: plain
values in (statuses, times, credential policies, names for the message), a verdict out --
``None`` (allowed) or a ``Refusal`` with a stable code, the error class it is answered
with (401, 403, ...) and the message people read.  No ORM, no settings, no I/O.

Whether a credential or its device *exists* is a lookup, answered by its caller; this
module judges the facts of things that exist.  Times are compared as given: every time of
one call is an epoch float (ingest's cached rows) or every one a datetime (the ORM's rows).

The values it compares are defined once, in ``tenants.states``, which the models' choices
use too.

The uses differ, on purpose, and each difference is written here:

* ingest and the Kafka ACL accept a superseded certificate inside its overlap; EST renewal
  wants the newest certificate (a superseded one is a 409), and collecting rotation's
  successor is done *with* the superseded one;
* ingest refuses a revoked OAuth client last (a 401 with the token challenge), after the
  device's own rights; token issuance and the provisioning API refuse it first;
* certificate issuance looks at the group's policy before the device, and answers as a
  field error (the console and the bulk endpoint show it per item); the REST API's request
  to issue refuses a disabled device first, as a 409 ``device_disabled``;
* EST renewal judges the tenant, then issues (certificate issuance judges the device and
  the group); collecting judges the tenant and the device, not the group's policy now.

The hot path (ingest, per request) is plain comparisons and returns ``None`` without
allocating anything; only a refusal builds its message.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TypeVar

from config.errors import Conflict, InvalidInput, PermissionDenied, SluiceError, Unauthenticated
from tenants.oauth.scopes import KAFKA_CONSUME, KAFKA_PRODUCE
from tenants.states import (  # noqa: F401 - the values, re-exported for the policy's callers
    ACTIVE,
    BOTH,
    CERTIFICATE_POLICIES,
    DISABLED,
    MTLS,
    OAUTH2,
    OAUTH_POLICIES,
    REVOKED,
    SUPERSEDED,
    SUSPENDED,
)

Moment = TypeVar("Moment", float, dt.datetime)


class Use:
    """What a credential is about to do (plain strings: compared on every ingest request)."""

    INGEST_CERTIFICATE = "ingest_certificate"  # HTTPS ingest with a client certificate
    INGEST_TOKEN = "ingest_token"  # noqa: S105 - HTTPS ingest with an OAuth2 access token
    # A record an MQTT device published, as the bridge produces it: the credential was judged
    # at publish (ingest.mqtt_auth); the device, its tenant and its group are judged again here.
    INGEST_MQTT_BRIDGE = "ingest_mqtt_bridge"
    TLS_CLIENT = "tls_client"  # a client certificate presented to a Django endpoint (EST)
    EST_RENEWAL = "est_renewal"  # renew a certificate over EST (simplereenroll)
    EST_COLLECT = "est_collect"  # collect rotation's successor over EST (serverkeygen)
    CERTIFICATE_REQUEST = "certificate_request"  # the REST API's request to issue: the device, as a 409
    CERTIFICATE_ISSUANCE = "certificate_issuance"  # a certificate issued (REST API, console, onboarding, EST)
    TOKEN_ISSUANCE = "token_issuance"  # noqa: S105 - an access token from the token endpoint
    TOKEN_USE = "token_use"  # noqa: S105 - a token's client acting on the provisioning API
    KAFKA_CERTIFICATE = "kafka_certificate"  # a certificate's Kafka ACL (Kafka-direct groups)
    KAFKA_CLIENT = "kafka_client"  # an OAuth client's Kafka ACL (Kafka-direct groups)
    KAFKA_CONSUMER_CLIENT = "kafka_consumer_client"  # a consumer's OAuth client's Kafka ACL (kafka:consume)


# The uses by an OAuth client (the others are a certificate's): the group's policy must admit OAuth2.
CLIENT_USES = frozenset(
    {Use.INGEST_TOKEN, Use.TOKEN_ISSUANCE, Use.TOKEN_USE, Use.KAFKA_CLIENT, Use.KAFKA_CONSUMER_CLIENT}
)
# The scope a client's Kafka ACL needs, per use.
_KAFKA_SCOPE = {Use.KAFKA_CLIENT: KAFKA_PRODUCE, Use.KAFKA_CONSUMER_CLIENT: KAFKA_CONSUME}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a credential may not act now: the stable ``code`` its caller answers with, the
    error class (its HTTP status) and the message; ``fields`` for a refusal answered as
    field errors."""

    code: str
    error: type[SluiceError]
    message: str
    fields: tuple[tuple[str, str, str], ...] = ()  # (pointer, code, message)

    @property
    def status(self) -> int:
        return self.error.status

    def exception(self) -> SluiceError:
        fields = [{"pointer": p, "code": c, "message": m} for p, c, m in self.fields]
        return self.error(self.message, code=self.code, fields=fields)


# -- the rules, each once --------------------------------------------------------------------


def certificate_in_overlap(status: str, overlap_until: Moment | None, now: Moment) -> bool:
    """A superseded certificate still inside the overlap its renewal granted."""
    return status == SUPERSEDED and overlap_until is not None and overlap_until > now


def admits(credential_policy: str, *, certificates: bool) -> bool:
    """Whether a group's credential policy admits client certificates (or OAuth2 tokens)."""
    return credential_policy in (CERTIFICATE_POLICIES if certificates else OAUTH_POLICIES)


# -- the certificate ---------------------------------------------------------------------------


def certificate_refusal(
    use: str,
    *,
    status: str,
    not_after: Moment,
    overlap_until: Moment | None,
    now: Moment,
    not_before: Moment | None = None,
) -> Refusal | None:
    """Whether a certificate may act for ``use`` now, by its own status and validity.

    ``not_before`` is checked when given, right after revocation; Sluice's callers leave it
    to the TLS handshake (nginx, the broker), which refuses such a certificate first."""
    if status == ACTIVE and now < not_after and (not_before is None or not_before <= now):
        return None  # every use's answer for an active certificate in its validity
    if status == REVOKED:
        return _refuse(use, "certificate_revoked")
    if not_before is not None and not_before > now:
        return _refuse(use, "certificate_not_yet_valid")
    if use == Use.TLS_CLIENT or use == Use.EST_COLLECT:
        # TLS: nginx checked the chain, validity and CRLs; the row is the authority on a
        # revocation its CRL does not carry yet.  Collecting: done with the renewed one.
        return None
    if use == Use.EST_RENEWAL:
        if not_after <= now:
            return _refuse(use, "certificate_expired")
        if status == SUPERSEDED:
            return _refuse(use, "certificate_superseded")
        return None
    if status == SUPERSEDED and not certificate_in_overlap(status, overlap_until, now):
        return _refuse(use, "certificate_superseded")
    if not_after <= now:
        return _refuse(use, "certificate_expired")
    return None


# -- the OAuth client ------------------------------------------------------------------------


def client_refusal(use: str, *, status: str, scopes: frozenset[str] | None = None) -> Refusal | None:
    """Whether an OAuth client may act for ``use`` now, by its own status (and, for its
    Kafka ACL, whether it holds ``kafka:produce``, or ``kafka:consume`` for a consumer's)."""
    if status != ACTIVE:
        return _refuse(use, "client_revoked")
    needed = _KAFKA_SCOPE.get(use)
    if needed is not None and (scopes is None or needed not in scopes):
        return _refuse(use, "missing_scope")
    return None


# -- what the credential speaks for: tenant, device, group --------------------------------------


def holder_refusal(
    use: str,
    *,
    tenant_status: str,
    device_status: str | None,
    credential_policy: str | None,
    tenant: str = "",
    device: str = "",
    group: str = "",
    consumer_status: str | None = None,
) -> Refusal | None:
    """Whether the tenant, device and group a credential speaks for let it act for ``use``
    now.  ``device_status`` None: the credential has no device (a gateway, service or
    consumer client); ``credential_policy`` None: no group (a service or consumer
    credential); ``consumer_status`` None: no consumer.  ``tenant``, ``device`` and
    ``group`` name them in the message."""
    certificates = use not in CLIENT_USES
    if (
        tenant_status == ACTIVE
        and (device_status is None or device_status == ACTIVE)
        and (consumer_status is None or consumer_status == ACTIVE)
        and (
            credential_policy is None or credential_policy in (CERTIFICATE_POLICIES if certificates else OAUTH_POLICIES)
        )
    ):
        return None  # every use's answer when all three are as they should be
    if use == Use.CERTIFICATE_REQUEST:
        if device_status is not None and device_status != ACTIVE:
            return _holder(use, "device_disabled", tenant, device, device_status, group, credential_policy)
        return None  # the rest is the issuance's
    if use == Use.CERTIFICATE_ISSUANCE:
        # The group first: a group that issues no certificates is the answer to give.
        if credential_policy is not None and not admits(credential_policy, certificates=True):
            return _holder(use, "credential_not_allowed", tenant, device, device_status, group, credential_policy)
        if device_status is not None and device_status != ACTIVE:
            return _holder(use, "device_disabled", tenant, device, device_status, group, credential_policy)
        return None
    if tenant_status != ACTIVE:
        return _holder(use, "tenant_suspended", tenant, device, device_status, group, credential_policy)
    if consumer_status is not None and consumer_status != ACTIVE:
        return _refuse(use, "consumer_disabled")
    if use == Use.EST_RENEWAL:
        return None  # the device and its group: certificate issuance, which renewal is
    if device_status is not None and device_status != ACTIVE:
        return _holder(use, "device_disabled", tenant, device, device_status, group, credential_policy)
    if use == Use.EST_COLLECT:
        return None  # the successor was issued under the group's policy then
    if credential_policy is not None and not admits(credential_policy, certificates=certificates):
        return _holder(use, "credential_not_allowed", tenant, device, device_status, group, credential_policy)
    return None


def oauth_client_refusal(
    use: str,
    *,
    status: str,
    tenant_status: str,
    device_status: str | None,
    credential_policy: str | None,
    scopes: frozenset[str] | None = None,
    consumer_status: str | None = None,
) -> Refusal | None:
    """Token issuance, the provisioning API and a client's Kafka ACL: the client itself first,
    then what it speaks for (a revoked client is refused whatever its device)."""
    return client_refusal(use, status=status, scopes=scopes) or holder_refusal(
        use,
        tenant_status=tenant_status,
        device_status=device_status,
        credential_policy=credential_policy,
        consumer_status=consumer_status,
    )


# -- the words: per use, what each refusal is answered with ------------------------------------

Wording = dict[str, tuple[str, type[SluiceError], str]]  # reason -> (code, error class, message)

# Ingest's wording (the README's error table lists these codes).
_INGEST: Wording = {
    "certificate_revoked": ("certificate_revoked", PermissionDenied, "The client certificate was revoked."),
    "certificate_superseded": (
        "certificate_superseded",
        PermissionDenied,
        "The client certificate was renewed and its overlap has ended; use the newest certificate.",
    ),
    "certificate_expired": ("certificate_expired", Unauthenticated, "The client certificate has expired."),
    "certificate_not_yet_valid": (
        "certificate_not_yet_valid",
        Unauthenticated,
        "The client certificate is not valid yet.",
    ),
    "client_revoked": ("client_revoked", Unauthenticated, "The OAuth client is revoked."),
    "tenant_suspended": ("tenant_suspended", PermissionDenied, "Tenant '{tenant}' is suspended."),
    "device_disabled": ("device_disabled", PermissionDenied, "Device '{device}' is {device_status}."),
    "credential_not_allowed": (
        "credential_not_allowed",
        PermissionDenied,
        "Device group '{group}' does not accept {kind} (its credential policy is '{policy}').",
    ),
}
# What nginx's verdict on a certificate is answered with (certs.tls_identity.VERIFY_REASONS).
_TLS: Wording = {
    "certificate_revoked": ("certificate_revoked", PermissionDenied, "The client certificate is revoked."),
    "certificate_expired": ("certificate_expired", Unauthenticated, "The client certificate has expired."),
    "certificate_not_yet_valid": _INGEST["certificate_not_yet_valid"],
}
_EST: Wording = {
    "certificate_revoked": ("certificate_revoked", PermissionDenied, "This certificate is revoked."),
    "certificate_expired": ("certificate_expired", Unauthenticated, "This certificate has expired; enroll again."),
    "certificate_superseded": (
        "certificate_superseded",
        Conflict,
        "This certificate was already renewed; renew with the newest one.",
    ),
    "certificate_not_yet_valid": _INGEST["certificate_not_yet_valid"],
    "tenant_suspended": _INGEST["tenant_suspended"],
    "device_disabled": _INGEST["device_disabled"],
}
# Token issuance (as the ``invalid_grant`` description) and the provisioning API (as the
# code of a 401): the client's own words, no names (the token endpoint tells a client about
# itself only).
_CLIENT: Wording = {
    "client_revoked": ("client_revoked", Unauthenticated, "The OAuth client is revoked."),
    "tenant_suspended": ("tenant_suspended", Unauthenticated, "The client's tenant is suspended."),
    "device_disabled": ("device_disabled", Unauthenticated, "The client's device is disabled."),
    "consumer_disabled": ("consumer_disabled", Unauthenticated, "The client's consumer is disabled."),
    "credential_not_allowed": (
        "credential_policy",
        Unauthenticated,
        "The client's device group allows mTLS client certificates only, not OAuth2 tokens.",
    ),
}
# Certificate issuance answers as InvalidInput, which the API maps to a 409 when its field
# code is a state's (config.errors.STATE_FIELD_CODES).
_ISSUANCE: Wording = {
    "device_disabled": ("invalid", InvalidInput, "Device '{device}' is {device_status}; enable it first."),
    "credential_not_allowed": (
        "invalid",
        InvalidInput,
        "Device group '{group}' uses OAuth2 tokens only; it issues no certificates.",
    ),
}
_REQUEST: Wording = {
    "device_disabled": ("device_disabled", Conflict, "Device '{device}' is {device_status}; enable it first.")
}
_ISSUANCE_FIELDS = {"credential_not_allowed": (("/", "credential_policy", "The group's policy is OAuth2 only."),)}
# The Kafka ACL is never answered to anyone: its refusals say why a credential holds no grant.
_KAFKA: Wording = {
    **_INGEST,
    "tenant_suspended": ("tenant_suspended", PermissionDenied, "The tenant is suspended."),
    "device_disabled": ("device_disabled", PermissionDenied, "The device is disabled."),
    "credential_not_allowed": (
        "credential_not_allowed",
        PermissionDenied,
        "The group's credential policy does not admit this credential.",
    ),
    "missing_scope": ("insufficient_scope", PermissionDenied, f"The client does not hold '{KAFKA_PRODUCE}'."),
    # a consumer's credentials (the Kafka ACL, the scoped registry): never ingest's
    "consumer_disabled": ("consumer_disabled", PermissionDenied, "The consumer is disabled."),
}
_KAFKA_CONSUMER: Wording = {
    **_KAFKA,
    "missing_scope": ("insufficient_scope", PermissionDenied, f"The client does not hold '{KAFKA_CONSUME}'."),
}

WORDING: dict[str, Wording] = {
    Use.INGEST_CERTIFICATE: _INGEST,
    Use.INGEST_TOKEN: _INGEST,
    Use.INGEST_MQTT_BRIDGE: _INGEST,
    Use.TLS_CLIENT: _TLS,
    Use.EST_RENEWAL: _EST,
    Use.EST_COLLECT: _EST,
    Use.CERTIFICATE_REQUEST: _REQUEST,
    Use.CERTIFICATE_ISSUANCE: _ISSUANCE,
    Use.TOKEN_ISSUANCE: _CLIENT,
    Use.TOKEN_USE: _CLIENT,
    Use.KAFKA_CERTIFICATE: _KAFKA,
    Use.KAFKA_CLIENT: _KAFKA,
    Use.KAFKA_CONSUMER_CLIENT: _KAFKA_CONSUMER,
}


def _refuse(use: str, reason: str) -> Refusal:
    code, error, message = WORDING[use][reason]
    return Refusal(code, error, message)


def _holder(
    use: str, reason: str, tenant: str, device: str, device_status: str | None, group: str, policy: str | None
) -> Refusal:
    code, error, template = WORDING[use][reason]
    kind = "OAuth2 tokens" if use in CLIENT_USES else "client certificates"
    message = template.format(tenant=tenant, device=device, device_status=device_status, group=group, kind=kind,
                              policy=policy)  # fmt: skip
    fields = _ISSUANCE_FIELDS.get(reason, ()) if use == Use.CERTIFICATE_ISSUANCE else ()
    return Refusal(code, error, message, fields)
