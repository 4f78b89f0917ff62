"""The agent's MQTT transport, without a broker: who it says it is, and what it refuses to start with."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sluice_agent.mqtt import MqttSluice, token_identity
from sluice_agent.transport import Credentials, Sluice


def token(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256'})}.{part(claims)}.c2ln"


def test_a_token_names_tenant_group_and_device() -> None:
    claims = {"tenant": "acme", "device": "m-1", "kafka_principal": "acme.sensors.cl_abc"}
    assert token_identity(token(claims)) == ("acme", "sensors", "m-1")


@pytest.mark.parametrize("claims", [{"tenant": "acme", "device": "m-1"}, {"kafka_principal": "acme.g.c"}, {}])
def test_a_token_that_names_no_device_is_refused_before_connecting(claims: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="does not name a device"):
        token_identity(token(claims))
    with pytest.raises(ValueError, match="does not name a device"):
        token_identity("not-a-jwt")


@pytest.mark.parametrize("address", ["localhost", "localhost:", ":8883", "localhost:mqtt", ""])
def test_the_mqtt_address_is_host_and_port(address: str) -> None:
    https = Sluice("https://localhost:8443", Credentials(ca=Path("/etc/ssl/certs/ca-certificates.crt")))
    with pytest.raises(ValueError, match="host:port"):
        MqttSluice(address, https)
