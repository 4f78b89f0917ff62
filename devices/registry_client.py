"""The one place that builds schema registry clients.

Django-free, like ``ingest.kafka``: the launcher (health check, global compatibility), the
web app's ``/healthz``, ``devices.registry`` and the tests all build their client here.

Apicurio listens on a Unix socket only (``Runtime.registry_socket``, owner-only), so only
processes of Sluice's own user reach it.  ``confluent_kafka``'s ``SchemaRegistryClient`` builds
its own httpx client from a URL and has no option for a Unix socket; Sluice replaces that
client with one whose transport is the socket (``_rest_client.session``, the attribute every
request goes through in confluent-kafka 2.16; the registry's integration tests fail at once
if a new version moves it).
"""

from __future__ import annotations

from confluent_kafka.schema_registry import SchemaRegistryClient

# The registry client's own HTTP library (httpx2, or httpx).
from confluent_kafka.schema_registry.common._httpx_compat import httpx as httpx  # re-exported for sluicectl

from config.env import Runtime

# Apicurio records every request's source address (its audit filter calls
# HttpServletRequest.getRemoteAddr), which a Unix socket does not have: Undertow then fails
# the request ("hostname can't be null").  The registry trusts X-Forwarded-For
# (quarkus.http.proxy.proxy-address-forwarding), and only Sluice's user can reach the socket,
# so every request names loopback as its source.  A port is required: without one Undertow
# fails again ("port out of range:-1").
FORWARDED_FOR = "127.0.0.1:0"


def registry_client_for(runtime: Runtime, *, timeout: float = 5.0, max_retries: int = 1) -> SchemaRegistryClient:
    """A Confluent API client for this runtime's registry: over Apicurio's Unix socket, or
    over http(s) to an external registry (``SLUICE_REGISTRY_URL``) with its basic credentials
    and CA file."""
    config: dict[str, object] = {
        "url": runtime.registry_url, "timeout": timeout, "max.retries": max_retries, "retries.wait.ms": 200,
    }  # fmt: skip
    external = runtime.external_registry
    if external is not None:
        if external.username is not None:
            config["basic.auth.user.info"] = f"{external.username}:{external.password}"
        if external.ca_file is not None:
            config["ssl.ca.location"] = str(external.ca_file)
        return SchemaRegistryClient(config)
    client = SchemaRegistryClient(config)
    rest = client._rest_client
    rest.session.close()
    rest.session = httpx.Client(
        # A connection per request, never a kept-alive one: a client is kept for the life of
        # a process (devices.registry.registry_client), and a connection the registry closed
        # meanwhile (a restart, its idle timeout) would fail the next request.  Connecting
        # to a Unix socket costs microseconds.
        transport=httpx.HTTPTransport(
            uds=str(runtime.registry_socket), limits=httpx.Limits(max_keepalive_connections=0)
        ),
        timeout=timeout,
        headers={"X-Forwarded-For": FORWARDED_FOR},
    )
    return client
