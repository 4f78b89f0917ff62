"""The broker's OAUTH listener (SASL_SSL + OAUTHBEARER) against the real Kafka started by
`sluice test`: a Sluice-minted token is the credential, its ``kafka_principal`` claim the
principal (``User:<tenant>.<group>``), the generated per-group ACLs decide; tokens the
broker must not trust are refused at authentication; a rotated key is picked up from the
JWKS nginx serves."""

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
from confluent_kafka import KafkaError, Producer
from joserfc import jwt
from joserfc.jwk import ECKey

from config.env import Runtime
from ingest.kafka import oauth_client_config
from tenants.oauth import keys, tokens
from tests.integration.test_acls_live import DENIED, Provisioned, code, provision

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


@pytest.fixture
def capture(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[..., Any]:
    return django_capture_on_commit_callbacks


def kafka_token(runtime: Runtime, tenant: str, group: str, **overrides: Any) -> str:
    """A token as Sluice's authorization server issues it to a gateway of ``group``."""
    values: dict[str, Any] = {
        "client_id": f"gw-{uuid.uuid4().hex[:6]}",
        "tenant": tenant,
        "scopes": ["kafka:produce"],
        "audiences": [tokens.AUD_KAFKA],
        "kafka_principal": f"{tenant}.{group}",
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
    producer.produce(topic, value=uuid.uuid4().bytes, on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(20)
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
    return provision(capture, "a", {"sensors": "temperature", "cameras": "video"})


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


def test_a_group_token_produces_idempotently_to_its_own_topic_only(
    services: Runtime, tenant_a: Provisioned, capture: Callable[..., Any]
) -> None:
    # given a token for tenant A's sensors group, whose principal's ACLs were synced
    slug = tenant_a.tenant.slug
    token = kafka_token(services, slug, "sensors")
    temperature, video = tenant_a.streams["temperature"].topic, tenant_a.streams["video"].topic

    # when it produces (SASL_SSL, OAUTHBEARER, idempotent, acks=all) to its group's topic
    error, client_errors = produce_with(services, token, temperature)

    # then Kafka acknowledges it, without any client certificate
    assert error is None, (error, client_errors)
    # and another group's topic and the tenant's DLQ are refused by the ACLs
    assert code(produce_with(services, token, video)[0]) == DENIED
    assert code(produce_with(services, token, tenant_a.tenant.dlq_topic)[0]) == DENIED
    # and so is every topic of another tenant
    b = provision(capture, "b", {"sensors": "temperature"})
    assert code(produce_with(services, token, b.streams["temperature"].topic)[0]) == DENIED
    # while B's own token writes there
    assert (
        produce_with(services, kafka_token(services, b.tenant.slug, "sensors"), b.streams["temperature"].topic)[0]
        is None
    )


def _expired(runtime: Runtime, tenant: str) -> str:
    # issued 20 min ago for 15 min: expired 5 min ago, well past the broker's 30 s skew
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    return kafka_token(runtime, tenant, "sensors", now=past)


def _wrong_audience(runtime: Runtime, tenant: str) -> str:
    return kafka_token(runtime, tenant, "sensors", audiences=[tokens.AUD_INGEST])


def _without_principal(runtime: Runtime, tenant: str) -> str:
    return kafka_token(runtime, tenant, "sensors", kafka_principal=None)


def _unknown_key(runtime: Runtime, tenant: str) -> str:
    # the same claims, signed by a key Sluice never published (its own kid)
    stranger = ECKey.generate_key("P-256")
    return sign(claims_of(kafka_token(runtime, tenant, "sensors")), stranger, stranger.thumbprint())


def _forged_with_a_published_kid(runtime: Runtime, tenant: str) -> str:
    # a stranger's key, claiming to be the current Sluice key
    genuine = kafka_token(runtime, tenant, "sensors")
    kid = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "==="))["kid"]
    return sign(claims_of(genuine), ECKey.generate_key("P-256"), kid)


def _wrong_issuer(runtime: Runtime, tenant: str) -> str:
    # signed by the genuine current key, but claiming another issuer
    claims = {**claims_of(kafka_token(runtime, tenant, "sensors")), "iss": "https://elsewhere.example/oauth"}
    signing = keys.current_signing_key(runtime)
    return sign(claims, signing.key, signing.kid)


def _unsigned(runtime: Runtime, tenant: str) -> str:
    genuine = kafka_token(runtime, tenant, "sensors")
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
    services: Runtime, tenant_a: Provisioned, forge: Callable[[Runtime, str], str]
) -> None:
    # given a token the broker must not trust, for a group that holds ACLs
    token = forge(services, tenant_a.tenant.slug)

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
    services: Runtime, tenant_a: Provisioned, rotated_key: keys.SigningKey
) -> None:
    # given a key rotation: a new key published in the JWKS nginx serves, now the signing key
    token = kafka_token(services, tenant_a.tenant.slug, "sensors")
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
