"""The broker's OAUTH listener (SASL_SSL + OAUTHBEARER) against the real Kafka started by
`sluice test`: a Sluice-minted token is the credential, its ``kafka_principal`` claim the
principal (``User:<tenant>.<group>.<client_id>``), the generated per-credential ACLs decide;
tokens the broker must not trust are refused at authentication; a rotated key is picked up
from the JWKS nginx serves."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from joserfc import jwt
from joserfc.jwk import ECKey

from config.env import Runtime
from ingest.kafka import oauth_client_config
from tenants.audit import Actor
from tenants.oauth import keys, tokens
from tenants.oauth.models import OAuthClient
from tenants.oauth.services import oauth_client_create
from tests.integration.test_acls_live import DENIED, Provisioned, code, eager_tasks, provision

pytestmark = [pytest.mark.integration, pytest.mark.django_db]
ACTOR = Actor.system("test")


@pytest.fixture
def capture(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[..., Any]:
    return django_capture_on_commit_callbacks


def gateway_client(provisioned: Provisioned, group: str) -> OAuthClient:
    """A gateway client of ``group`` with ``kafka:produce``; its ACL is synced (eagerly)."""
    with eager_tasks(), provisioned.capture(execute=True):
        client, _secret = oauth_client_create(actor=ACTOR, tenant=provisioned.tenant, kind="gateway",
                                              name=f"{group} gateway", scopes=["kafka:produce"],
                                              group=provisioned.groups[group])  # fmt: skip
    return client


def kafka_token(runtime: Runtime, client: OAuthClient, **overrides: Any) -> str:
    """A token as Sluice's authorization server issues it to ``client``."""
    values: dict[str, Any] = {
        "client_id": client.client_id,
        "tenant": client.tenant.slug,
        "scopes": ["kafka:produce"],
        "audiences": [tokens.AUD_KAFKA],
        "kafka_principal": client.kafka_principal,
    }
    values.update(overrides)
    return tokens.mint_access_token(runtime, **values)[0]


def token_config(runtime: Runtime, token: str, **extra: Any) -> dict[str, Any]:
    """Client settings for a holder of ``token``.  The expiry reported to librdkafka is
    always in the future, so whatever the token really says is judged by the broker, not
    refused locally by librdkafka."""
    return {
        **oauth_client_config(runtime, oauth_cb=lambda _config: (token, time.time() + 600)),
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": 10000,
        **extra,
    }


def produce_with(runtime: Runtime, token: str, topic: str) -> tuple[KafkaError | None, list[KafkaError]]:
    """Produce one record idempotently; returns the delivery error (None when acknowledged)
    and the client-level errors (``error_cb``: authentication failures land there)."""
    client_errors: list[KafkaError] = []
    producer = Producer(token_config(runtime, token, error_cb=client_errors.append))
    outcome: list[KafkaError | None] = []
    try:
        producer.produce(topic, value=uuid.uuid4().bytes, on_delivery=lambda err, _msg: outcome.append(err))
        producer.flush(20)
    except KafkaException as exc:
        # A principal with no WRITE anywhere is refused its producer id (KIP-679), which
        # librdkafka raises as fatal; the cause is in error_cb.
        return exc.args[0], client_errors
    assert outcome, "the producer never reported the delivery outcome"
    return outcome[0], client_errors


def authentication_failed(errors: list[KafkaError]) -> bool:
    # The broker answers SaslAuthenticate with {"status":"invalid_token"} (RFC 7628 §3.2.2),
    # which librdkafka reports through error_cb as a local authentication error.
    return any(e.code() == KafkaError._AUTHENTICATION and "SASL authentication error" in e.str() for e in errors)


def sign(claims: dict[str, Any], key: ECKey, kid: str) -> str:
    return jwt.encode({"alg": keys.ALGORITHM, "kid": kid, "typ": tokens.TOKEN_TYPE}, claims, key)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture
def tenant_a(services: Runtime, capture: Callable[..., Any]) -> Provisioned:
    return provision(capture, "a", {"sensors": "temperature", "cameras": "video"}, runtime=services)


@pytest.fixture
def sensors_gateway(tenant_a: Provisioned) -> OAuthClient:
    return gateway_client(tenant_a, "sensors")


def test_jwks_is_served_by_nginx_with_public_keys_only(services: Runtime) -> None:
    # when anyone fetches the JWKS the broker uses
    with urllib.request.urlopen(services.jwks_url, timeout=5) as response:  # noqa: S310
        content_type, cache = response.headers["Content-Type"], response.headers["Cache-Control"]
        served = json.loads(response.read())
    # then it is JSON, briefly cacheable, names every current signing key, and holds no private part
    assert content_type == "application/json"
    assert "max-age=60" in cache
    assert {k["kid"] for k in served["keys"]} == {k.kid for k in keys.signing_keys(services)}
    assert all(k["kty"] == "EC" and "d" not in k for k in served["keys"])
    # and the issuer the broker expects is the one tokens carry
    assert services.oauth_issuer == tokens.issuer(services)


def test_a_clients_token_produces_idempotently_to_its_groups_topic_only(
    services: Runtime, tenant_a: Provisioned, sensors_gateway: OAuthClient, capture: Callable[..., Any]
) -> None:
    # given a token of tenant A's sensors gateway, whose own principal's ACL was synced
    token = kafka_token(services, sensors_gateway)
    assert sensors_gateway.kafka_principal == f"{tenant_a.tenant.slug}.sensors.{sensors_gateway.client_id}"
    temperature, video = tenant_a.streams["temperature"].topic, tenant_a.streams["video"].topic

    # when it produces (SASL_SSL, OAUTHBEARER, idempotent, acks=all) to its group's topic
    error, client_errors = produce_with(services, token, temperature)

    # then Kafka acknowledges it, without any client certificate
    assert error is None, (error, client_errors)
    # and another group's topic and the tenant's DLQ are refused by the ACLs
    assert code(produce_with(services, token, video)[0]) == DENIED
    assert code(produce_with(services, token, tenant_a.tenant.dlq_topic)[0]) == DENIED
    # and a token naming the group's principal (the old naming) or another client's gets nothing
    for principal in (f"{tenant_a.tenant.slug}.sensors", f"{tenant_a.tenant.slug}.sensors.sc_0123456789abcdef"):
        error, client_errors = produce_with(services, kafka_token(services, sensors_gateway, kafka_principal=principal),
                                            temperature)  # fmt: skip
        # (refused its producer id: no WRITE anywhere, which librdkafka makes fatal)
        assert error is not None
        assert code(error) in (DENIED, KafkaError._FATAL), (str(error), [str(e) for e in client_errors])
    # and so is every topic of another tenant
    b = provision(capture, "b", {"sensors": "temperature"}, runtime=services)
    assert code(produce_with(services, token, b.streams["temperature"].topic)[0]) == DENIED
    # while B's own token writes there
    b_token = kafka_token(services, gateway_client(b, "sensors"))
    assert produce_with(services, b_token, b.streams["temperature"].topic)[0] is None


def _expired(runtime: Runtime, client: OAuthClient) -> str:
    # issued 20 min ago for 15 min: expired 5 min ago, well past the broker's 30 s skew
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    return kafka_token(runtime, client, now=past)


def _wrong_audience(runtime: Runtime, client: OAuthClient) -> str:
    return kafka_token(runtime, client, audiences=[tokens.AUD_INGEST])


def _without_principal(runtime: Runtime, client: OAuthClient) -> str:
    return kafka_token(runtime, client, kafka_principal=None)


def _unknown_key(runtime: Runtime, client: OAuthClient) -> str:
    # the same claims, signed by a key Sluice never published (its own kid)
    stranger = ECKey.generate_key("P-256")
    return sign(claims_of(kafka_token(runtime, client)), stranger, stranger.thumbprint())


def _forged_with_a_published_kid(runtime: Runtime, client: OAuthClient) -> str:
    # a stranger's key, claiming to be the current Sluice key
    genuine = kafka_token(runtime, client)
    kid = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "==="))["kid"]
    return sign(claims_of(genuine), ECKey.generate_key("P-256"), kid)


def _wrong_issuer(runtime: Runtime, client: OAuthClient) -> str:
    # signed by the genuine current key, but claiming another issuer
    claims = {**claims_of(kafka_token(runtime, client)), "iss": "https://elsewhere.example/oauth"}
    signing = keys.current_signing_key(runtime)
    return sign(claims, signing.key, signing.kid)


def _unsigned(runtime: Runtime, client: OAuthClient) -> str:
    genuine = kafka_token(runtime, client)
    kid = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "==="))["kid"]
    return f"{b64({'alg': 'none', 'kid': kid, 'typ': tokens.TOKEN_TYPE})}.{b64(claims_of(genuine))}."


@pytest.mark.parametrize(
    "forge",
    [
        _expired,
        _wrong_audience,
        _wrong_issuer,
        _without_principal,
        _unknown_key,
        _forged_with_a_published_kid,
        _unsigned,
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "no-kafka-principal", "unknown-key", "forged-kid", "alg-none"],
)
def test_untrustworthy_tokens_are_refused_at_authentication(
    services: Runtime, tenant_a: Provisioned, sensors_gateway: OAuthClient, forge: Callable[[Runtime, OAuthClient], str]
) -> None:
    # given a token the broker must not trust, for a client that holds an ACL
    token = forge(services, sensors_gateway)

    # when it is used to produce to that group's topic
    error, client_errors = produce_with(services, token, tenant_a.streams["temperature"].topic)

    # then the SASL exchange fails and nothing is written
    assert error is not None
    assert authentication_failed(client_errors), [e.str() for e in client_errors]


@pytest.fixture
def rotated_key(services: Runtime) -> Iterator[keys.SigningKey]:
    """A successor key that has passed its activation delay (the state ten minutes after
    ``rotate_signing_keys`` published it), published in the JWKS; removed afterwards so the
    stack's keys are as before."""
    # keys._create is the rotation's own constructor; backdate makes it sign at once.
    successor = keys._create(services, dt.datetime.now(dt.UTC), backdate=True)
    keys.publish_jwks(services)
    yield successor
    for path in keys.key_dir(services).glob(f"*_{successor.kid}.pem"):
        path.unlink()
    keys.publish_jwks(services)


def test_a_token_signed_after_key_rotation_is_accepted_once_the_broker_refetched_the_jwks(
    services: Runtime, tenant_a: Provisioned, sensors_gateway: OAuthClient, rotated_key: keys.SigningKey
) -> None:
    # given a key rotation: a new key published in the JWKS nginx serves, now the signing key
    token = kafka_token(services, sensors_gateway)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))["kid"] == rotated_key.kid
    topic = tenant_a.streams["temperature"].topic

    # when its tokens are used against the broker
    # then they are accepted within a bounded wait.  The broker re-fetches the JWKS every
    # sasl.oauthbearer.jwks.endpoint.refresh.ms (5 min, which Sluice's 10 min activation
    # delay stays ahead of in production); a token naming a kid it has not seen yet makes
    # it re-fetch at once (RefreshingHttpsJwks.maybeExpediteRefresh) and is itself refused,
    # so here the first attempt may fail and a later one must succeed.
    deadline = time.monotonic() + 30
    attempts: list[KafkaError | None] = []
    while time.monotonic() < deadline:
        attempts.append(produce_with(services, token, topic)[0])
        if attempts[-1] is None:
            break
        time.sleep(1)
    assert attempts[-1] is None, [str(a) for a in attempts]
    assert len(attempts) <= 3, [str(a) for a in attempts]
