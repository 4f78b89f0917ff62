"""HTTPS ingest with an OAuth2 access token instead of a client certificate (RFC 6750
``Authorization: Bearer``), end to end: the real nginx TLS listener, the web app, the real
registry and Kafka.  The token names a device of a tenant; everything else (topic, group,
policy) is read from the database, exactly as for a certificate."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from certs.services import certificate_issue_generated
from config.env import Runtime
from devices.models import Device, DeviceGroup, Stream
from devices.registry import schema_register, value_subject
from devices.services import device_update
from ingest.topic_sync import stream_provision
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.oauth import keys, tokens
from tenants.oauth.models import OAuthClient
from tenants.services import tenant_create, tenant_set_status
from tests.conftest import unique_slug
from tests.integration.test_ingest import _post, consume, topic_size
from tests.schemas import READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")
Policy = DeviceGroup.CredentialPolicy


@dataclass
class TokenDevice:
    """A provisioned device of a token-accepting group, and a way to POST with a token."""

    device: Device
    topic: str
    runtime: Runtime
    post: Callable[..., tuple[int, dict[str, Any], Any]]
    client: OAuthClient

    @property
    def tenant(self) -> str:
        return self.device.tenant.slug

    def token(self, **overrides: Any) -> str:
        """A token as Sluice's authorization server issues it to this device."""
        values: dict[str, Any] = {
            "client_id": self.client.client_id,
            "tenant": self.tenant,
            "scopes": ["ingest:write"],
            "audiences": [tokens.AUD_INGEST, tokens.AUD_KAFKA],
            "device": self.device.device_id,
        }
        values.update(overrides)
        # the principal the server would put in a token of that client
        values.setdefault("kafka_principal", f"{self.tenant}.{self.device.group.slug}.{values['client_id']}")
        return tokens.mint_access_token(self.runtime, **values)[0]

    def send(self, token: str, body: Any = None, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return self.post(body if body is not None else {"celsius": 21.5}, headers=headers, **kwargs)


@pytest.fixture
def make_device(services: Runtime, tmp_path: Path, monkeypatch: Any) -> Callable[..., TokenDevice]:
    # The tenant's DLQ topic is not part of these tests; provisioning is tested elsewhere.
    monkeypatch.setattr("ingest.tasks.tenant_dlq_provision_task.delay", lambda *_: None)

    def make(policy: str = Policy.OAUTH2, *, tenant: Tenant | None = None) -> TokenDevice:
        tenant = tenant or tenant_create(actor=ACTOR, slug=unique_slug("t"), name="Bearer test")
        stream = Stream.objects.create(tenant=tenant, region="eu", type=unique_slug("temp"), partitions=1)
        stream_provision(stream=stream)
        subject = value_subject(stream.topic)
        schema_register(subject=subject, schema_str=json.dumps(READING_JSON), schema_type="JSON")
        group = DeviceGroup.objects.create(
            tenant=tenant, slug=unique_slug("g"), region="eu", device_type="t", stream=stream,
            schema_subject=subject, credential_policy=policy, rate_limit_per_second=100,
        )  # fmt: skip
        device = Device.objects.create(tenant=tenant, group=group, device_id=unique_slug("meter"))
        # Written directly (not through oauth_client_create, which refuses an mTLS-only
        # group): as if the group's policy changed after the client was made.
        client = OAuthClient.objects.create(
            tenant=tenant, client_id=f"sc_{unique_slug('c')}", secret_hash="0" * 64, name="test",
            kind=OAuthClient.Kind.DEVICE, device=device, scopes=["ingest:write", "kafka:produce"],
        )  # fmt: skip
        return TokenDevice(device, stream.topic, services, _post(services, tmp_path, None), client)

    return make


def header_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))


def test_a_device_token_writes_to_its_group_topic(services: Runtime, make_device: Any) -> None:
    # given a device of an OAuth2 group holding a token for ingest
    sender = make_device()

    # when it POSTs a record with the token and no client certificate
    status, body, _ = sender.send(sender.token(), {"celsius": 21.5, "site": "oslo"})

    # then Kafka acknowledged it in the group's topic, under the device's identity
    assert status == 200, body
    assert (body["accepted"], body["topic"]) == (1, sender.topic)
    (message,) = consume(sender.topic, services, expected=1)
    assert message.key() == sender.device.device_id.encode()
    assert dict(message.headers())["sluice-tenant"] == sender.tenant.encode()
    assert dict(message.headers())["sluice-device"] == sender.device.device_id.encode()
    assert json.loads(message.value()[5:]) == {"celsius": 21.5, "site": "oslo"}
    # and a group accepting both credentials takes the token too; the scheme name is case-insensitive
    both = make_device(Policy.BOTH)
    assert both.post({"celsius": 1.0}, headers={"Authorization": f"bearer {both.token()}"})[0] == 200


def _unsigned(sender: TokenDevice) -> str:
    genuine = sender.token()
    claims = genuine.split(".")[1]
    header = base64.urlsafe_b64encode(json.dumps({**header_of(genuine), "alg": "none"}).encode()).rstrip(b"=")
    return f"{header.decode()}.{claims}."


def _foreign_key(sender: TokenDevice) -> str:
    genuine = sender.token()
    claims = json.loads(base64.urlsafe_b64decode(genuine.split(".")[1] + "==="))
    return jwt.encode(header_of(genuine), claims, ECKey.generate_key("P-256"))


INVALID_TOKENS: list[tuple[str, Callable[[TokenDevice], str], str]] = [
    ("expired", lambda s: s.token(now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)), "token_expired"),
    ("kafka-only audience", lambda s: s.token(audiences=[tokens.AUD_KAFKA]), "wrong_audience"),
    ("api audience", lambda s: s.token(audiences=[tokens.AUD_API]), "wrong_audience"),
    ("alg none", _unsigned, "invalid_token"),
    ("foreign key", _foreign_key, "invalid_token"),
    ("not a jwt", lambda _s: "not-a-token", "invalid_token"),
]


def test_invalid_tokens_are_401_with_a_bearer_challenge(services: Runtime, make_device: Any) -> None:
    sender = make_device()
    for name, make_token, code in INVALID_TOKENS:
        # when the device POSTs with a token that is not valid for ingest
        status, body, headers = sender.send(make_token(sender))

        # then it is refused as RFC 6750 §3.1 says: 401 with an invalid_token challenge
        assert (status, body["error"]["code"]) == (401, code), (name, body)
        challenge = headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="sluice-ingest", error="invalid_token"'), (name, challenge)
    # and an empty token or another scheme is refused the same way
    status, body, headers = sender.post({"celsius": 1.0}, headers={"Authorization": "Bearer "})
    assert (status, body["error"]["code"]) == (401, "invalid_token")
    status, body, headers = sender.post({"celsius": 1.0}, headers={"Authorization": "Basic ZGV2OnB3"})
    assert (status, body["error"]["code"], headers["WWW-Authenticate"]) == (
        401, "unsupported_authorization_scheme", 'Bearer realm="sluice-ingest"'
    )  # fmt: skip
    assert topic_size(sender.topic, services) == 0


def test_a_token_without_the_ingest_scope_is_403_insufficient_scope(services: Runtime, make_device: Any) -> None:
    sender = make_device()
    status, body, headers = sender.send(sender.token(scopes=["ingest:read"]))
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert 'scope="ingest:write"' in headers["WWW-Authenticate"]
    assert topic_size(sender.topic, services) == 0


def test_identity_is_checked_as_for_certificates(services: Runtime, make_device: Any) -> None:
    # given devices of an OAuth2 group and of an mTLS-only group
    sender = make_device()
    mtls_only = make_device(Policy.MTLS)

    # then a group that accepts certificates only refuses tokens
    status, body, _ = mtls_only.send(mtls_only.token())
    assert (status, body["error"]["code"]) == (403, "credential_not_allowed"), body
    # and a disabled device is refused
    device_update(actor=ACTOR, device=sender.device, status=Device.Status.DISABLED)
    status, body, _ = sender.send(sender.token())
    assert (status, body["error"]["code"]) == (403, "device_disabled")
    device_update(actor=ACTOR, device=sender.device, status=Device.Status.ACTIVE)
    # and a suspended tenant is refused at its next request, with a token issued before
    token = sender.token()
    tenant_set_status(actor=ACTOR, tenant=sender.device.tenant, status=Tenant.Status.SUSPENDED)
    status, body, _ = sender.send(token)
    assert (status, body["error"]["code"]) == (403, "tenant_suspended")
    tenant_set_status(actor=ACTOR, tenant=sender.device.tenant, status=Tenant.Status.ACTIVE)
    assert sender.send(token)[0] == 200
    # and a token whose Kafka principal is not the device's group is refused
    status, body, _ = sender.send(sender.token(kafka_principal=f"{sender.tenant}.other-group"))
    assert (status, body["error"]["code"]) == (403, "token_principal_mismatch")
    # nor one naming the right group but another client (each client is its own principal)
    group = sender.device.group.slug
    status, body, _ = sender.send(sender.token(kafka_principal=f"{sender.tenant}.{group}.sc_0123456789abcdef01234567"))
    assert (status, body["error"]["code"]) == (403, "token_principal_mismatch")
    # and a token of no device at all
    status, body, _ = sender.send(sender.token(device=None))
    assert (status, body["error"]["code"]) == (403, "not_a_device")
    assert topic_size(sender.topic, services) == 1
    assert topic_size(mtls_only.topic, services) == 0


def test_a_token_never_writes_into_another_tenants_topic(services: Runtime, make_device: Any) -> None:
    # given tenants A and B, each with a device of an OAuth2 group
    a = make_device()
    b = make_device()

    # when B's token names A's device (a token of tenant B for a device id only A has)
    status, body, _ = b.send(b.token(device=a.device.device_id))
    # then there is no such device in B
    assert (status, body["error"]["code"]) == (403, "unknown_device")
    # and when B's token names A's tenant and topic in the body and headers
    status, body, _ = b.send(
        b.token(),
        {"celsius": 1.0, "topic": a.topic, "tenant": a.tenant},
        headers={"X-Sluice-Tenant": a.tenant},
    )
    # then its record went to B's own topic
    assert (status, body["topic"]) == (200, b.topic), body
    # and naming them in the query is refused: the query holds one option, never a destination
    status, body, _ = b.send(b.token(), {"celsius": 1.0}, query=f"?topic={a.topic}&tenant={a.tenant}")
    assert (status, body["error"]["code"]) == (400, "unknown_parameter")
    # and a token claiming tenant A for A's device, signed by anyone but Sluice, is refused
    forged = _foreign_key(a)
    assert b.send(forged)[0] == 401
    # and nothing reached A's topic
    assert topic_size(a.topic, services) == 0
    assert topic_size(b.topic, services) == 1


def test_a_certificate_and_a_token_together_are_refused(services: Runtime, make_device: Any, tmp_path: Path) -> None:
    # given a device of a group accepting both, holding a certificate and a token
    sender = make_device(Policy.BOTH)
    issued = certificate_issue_generated(actor=ACTOR, device=sender.device, passphrase="long passphrase")
    with_certificate = _post(services, tmp_path, issued)
    assert with_certificate({"celsius": 1.0})[0] == 200

    # when it presents both at once, then it is refused rather than one silently preferred
    status, body, _ = with_certificate({"celsius": 2.0}, headers={"Authorization": f"Bearer {sender.token()}"})
    assert (status, body["error"]["code"]) == (400, "ambiguous_credentials")
    assert topic_size(sender.topic, services) == 1


def test_no_credential_at_all_is_401_with_a_bare_bearer_challenge(services: Runtime, tmp_path: Path) -> None:
    status, body, headers = _post(services, tmp_path, None)({"celsius": 1.0})
    assert (status, body["error"]["code"]) == (401, "client_certificate_required")
    # RFC 6750 §3: no error code when the request carried no credential
    assert headers["WWW-Authenticate"] == 'Bearer realm="sluice-ingest"'


def test_the_signing_key_of_the_token_is_the_published_one(services: Runtime, make_device: Any) -> None:
    # the web app verifies against the keys the JWKS publishes (the broker's view, too)
    sender = make_device()
    published = {k["kid"] for k in json.loads(keys.jwks_path(services).read_text())["keys"]}
    assert header_of(sender.token())["kid"] in published


def test_a_revoked_clients_tokens_stop_at_once(services: Runtime, make_device: Any) -> None:
    # given a device client with a token that is valid for another 15 minutes
    from tenants.oauth.services import oauth_client_revoke

    sender = make_device()
    token = sender.token()
    assert sender.send(token)[0] == 200
    # when its client is revoked, then the very next request with that token is refused
    oauth_client_revoke(actor=ACTOR, client=sender.client)
    status, body, headers = sender.send(token)
    assert (status, body["error"]["code"]) == (401, "client_revoked"), body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    # and another device's client cannot lend its token to this device
    other = make_device(tenant=sender.device.tenant)
    status, body, _ = other.send(other.token(client_id=make_device(tenant=sender.device.tenant).client.client_id))
    assert (status, body["error"]["code"]) == (403, "not_a_device")
    assert topic_size(sender.topic, services) == 1


def test_a_token_from_the_token_endpoint_writes_end_to_end(services: Runtime, make_device: Any,
                                                           tmp_path: Path) -> None:  # fmt: skip
    # given a device client made through the service, with its secret shown once
    import subprocess

    from certs.platform_pki import PlatformPki
    from tenants.oauth.services import oauth_client_create

    sender = make_device()
    client, secret = oauth_client_create(actor=ACTOR, tenant=sender.device.tenant, kind="device", name="meter",
                                         scopes=["ingest:write"], device=sender.device)  # fmt: skip
    # when the device asks the token endpoint (through nginx) with HTTP Basic, as a device would with curl
    issued = subprocess.run(
        ["curl", "-s", "--cacert", str(PlatformPki(services.pki_dir).root_cert), "-u", f"{client.client_id}:{secret}",
         "-d", "grant_type=client_credentials", f"{services.web_url}/oauth/token"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    answer = json.loads(issued.stdout)
    assert (answer["token_type"], answer["scope"]) == ("Bearer", "ingest:write"), answer
    # then that token writes a record, which Kafka acknowledged
    status, body, _ = sender.send(answer["access_token"], {"celsius": 19.5})
    assert (status, body["accepted"]) == (200, 1), body
    assert topic_size(sender.topic, services) == 1
