"""The one place that builds Kafka client configurations and clients.

Every client of the platform itself authenticates on the mTLS listener with the platform
admin certificate (``User:sluice-admin``, a super user).  Tenant credentials are built by
``client_config`` from PEM strings.  librdkafka verifies the broker's certificate and host
name by default (``ssl.endpoint.identification.algorithm=https``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from certs.platform_pki import PlatformPki
from config.env import Runtime

_quiet = logging.getLogger("sluice.kafka.librdkafka")
_admin_lock = threading.Lock()
_admin: dict[str, AdminClient] = {}


def admin_config(runtime: Runtime) -> dict[str, Any]:
    """librdkafka settings for the platform admin principal."""
    pki = PlatformPki(runtime.pki_dir)
    return {
        "bootstrap.servers": runtime.kafka_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.trust_bundle),
        "ssl.certificate.location": str(pki.cert("admin")),
        "ssl.key.location": str(pki.key("admin")),
        "logger": _quiet,
    }


def client_config(runtime: Runtime, *, certificate_pem: str, key_pem: str, ca_pem: str | None = None) -> dict[str, Any]:
    """librdkafka settings for a client holding its own certificate and key (PEM strings)."""
    pki = PlatformPki(runtime.pki_dir)
    return {
        "bootstrap.servers": runtime.kafka_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.pem": ca_pem if ca_pem is not None else pki.trust_bundle.read_text(),
        "ssl.certificate.pem": certificate_pem,
        "ssl.key.pem": key_pem,
        "logger": _quiet,
    }


def admin_client(runtime: Runtime) -> AdminClient:
    """A process-wide AdminClient, created lazily (so never shared across a fork)."""
    key = str(runtime.state_dir)
    with _admin_lock:
        client = _admin.get(key)
        if client is None:
            client = AdminClient(admin_config(runtime))
            _admin[key] = client
        return client


def kafka_cluster_check(runtime: Runtime, timeout: float = 3.0) -> str | None:
    """None when the cluster answers a metadata request for the admin principal."""
    try:
        metadata = AdminClient(admin_config(runtime)).list_topics(timeout=timeout)
    except KafkaException as exc:
        return str(exc.args[0]) if exc.args else "Kafka did not answer"
    if not metadata.brokers:
        return "no brokers in metadata"
    return None
