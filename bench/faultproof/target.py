"""What the fault load writes to, provisioned through Sluice's services on the platform's
database (Django must be set up), and the credentials of the load and of the verifier.

The stream's devices send over HTTPS; their group is also Kafka-direct, so one more device's
certificate (its own credential, with the ACL ``tenant_acls_sync`` grants it) is the direct
producer: both write to the same topic through the product's own paths.

The verifier is not a tenant's credential: it reads as ``User:sluice-fault-verifier``, a
platform certificate (``CN=...,O=Sluice Platform``) with a READ grant on the prefix ``iot.``
(every tenant's topics: an auditor's grant).  A grant on the tenant's own topic would lie in
the tenant's namespace, and the next ACL reconcile would delete it as Sluice's own drift."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from config.env import Runtime

VERIFIER = "sluice-fault-verifier"
PRODUCER = "sluice-fault-producer"
READING_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"celsius": {"type": "number"}, "seq": {"type": "integer"}},
    "required": ["celsius"],
}
QUOTA = 2_000_000_000  # never the limit in a fault run


@dataclass(frozen=True)
class HttpsDevice:
    device_id: str
    chain: Path  # leaf + tenant CA
    key: Path


@dataclass(frozen=True)
class KafkaCredential:
    """A client certificate for the broker's mTLS listener, as PEM strings."""

    principal: str
    certificate_pem: str
    key_pem: str


@dataclass(frozen=True)
class Target:
    tenant: str
    topic: str
    partitions: int
    devices: list[HttpsDevice]
    direct: KafkaCredential
    verifier: KafkaCredential
    ca_file: Path  # the platform trust bundle: nginx's and the broker's certificates chain to it
    web_port: int
    hostname: str
    bootstrap: str


def provision(workdir: Path, *, devices: int, partitions: int) -> Target:
    """A fresh tenant with one stream, its schema and topic, ``devices`` HTTPS devices, the
    direct producer's credential (its ACL synced and waited for) and the verifier's."""
    from django.conf import settings

    from certs.platform_pki import PlatformPki
    from certs.services import certificate_issue_generated, certificates_issue_bulk
    from devices.models import Device, Stream
    from devices.services import device_bulk_import, group_create, stream_with_schema_create
    from ingest.acl_sync import tenant_acls_sync
    from ingest.topic_sync import stream_provision
    from tenants.audit import Actor
    from tenants.services import tenant_create

    runtime = settings.SLUICE_RUNTIME
    actor = Actor.system("faults")
    tenant = tenant_create(actor=actor, slug=f"faults-{secrets.token_hex(3)}", name="Fault proof",
                           max_records_per_second=QUOTA, max_bytes_per_second=QUOTA)  # fmt: skip
    stream, subject, _ = stream_with_schema_create(actor=actor, tenant=tenant, schema_type="JSON",
                                                   schema=json.dumps(READING_SCHEMA), region="eu",
                                                   type="temperature", partitions=partitions)  # fmt: skip
    stream_provision(stream=stream)  # the worker does it after commit too; idempotent
    stream = Stream.objects.get(pk=stream.pk)
    group = group_create(actor=actor, tenant=tenant, stream=stream, slug="sensors", schema_subject=subject,
                         rate_limit_per_second=QUOTA, kafka_direct=True)  # fmt: skip
    ids = [f"sensor-{i:03d}" for i in range(devices)]
    device_bulk_import(
        actor=actor, tenant=tenant, rows=[{"device_id": d, "group": group.slug} for d in [*ids, "direct"]]
    )
    https = []
    workdir.mkdir(parents=True, exist_ok=True)
    for issued in certificates_issue_bulk(actor=actor, tenant=tenant, items=[{"device_id": d} for d in ids]):
        device_id = issued.certificate.device_ref
        chain, key = workdir / f"{device_id}.pem", workdir / f"{device_id}.key"
        chain.write_text(issued.chain_pem)
        key.write_text(issued.key_pem or "")
        key.chmod(0o600)
        https.append(HttpsDevice(device_id, chain, key))
    issued = certificate_issue_generated(actor=actor, device=Device.objects.get(tenant=tenant, device_id="direct"),
                                         passphrase=secrets.token_hex(8))  # fmt: skip
    # The grant the Kafka-direct credential holds, made now (and waited for) rather than by
    # the Celery worker after commit: the load starts at once.
    tenant_acls_sync(tenant_slug=tenant.slug, actor=actor)
    direct = KafkaCredential(issued.certificate.kafka_principal, issued.chain_pem, issued.key_pem or "")
    return Target(
        tenant=tenant.slug,
        topic=stream.topic,
        partitions=stream.partitions,
        devices=https,
        direct=direct,
        verifier=verifier_credential(),
        ca_file=PlatformPki(runtime.pki_dir).trust_bundle,
        web_port=runtime.ports.web,
        hostname=runtime.public_hostnames[0],
        bootstrap=runtime.kafka_bootstrap,
    )


def verifier_credential(runtime: Runtime | None = None) -> KafkaCredential:
    """A certificate from the platform root for ``User:sluice-fault-verifier``, and its grants:
    READ and DESCRIBE on topics prefixed ``iot.``, READ on consumer groups prefixed with its
    name (it commits nothing, but a consumer joins a group).  Idempotent."""
    from confluent_kafka.admin import AclOperation

    return platform_credential(runtime, VERIFIER, topic_operations=(AclOperation.READ, AclOperation.DESCRIBE),
                               group_read=True)  # fmt: skip


def producer_credential(runtime: Runtime | None = None) -> KafkaCredential:
    """``User:sluice-fault-producer``: WRITE on topics prefixed ``iot.``.  For a platform
    whose database this process cannot reach (the 3-broker test platform), where a tenant's
    Kafka-direct credential cannot be made here; the principal lies outside every tenant's
    namespace, so no ACL reconcile removes its grant."""
    from confluent_kafka.admin import AclOperation

    return platform_credential(runtime, PRODUCER, topic_operations=(AclOperation.WRITE, AclOperation.DESCRIBE))


def platform_credential(runtime: Runtime | None, name: str, *, topic_operations: tuple[Any, ...],
                        group_read: bool = False) -> KafkaCredential:  # fmt: skip
    """A platform certificate (``CN=<name>,O=Sluice Platform`` -> ``User:<name>``) from
    ``runtime``'s root CA (default: this process's platform) and PREFIXED grants on ``iot.``."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )
    from django.conf import settings

    from certs import ca
    from certs.crl_files import ROOT_CRL_NAME
    from certs.platform_pki import load_root
    from certs.principals import platform_subject
    from ingest.kafka import admin_config

    runtime = runtime or settings.SLUICE_RUNTIME
    root = load_root(runtime)
    key = ca.generate_key()
    cert = ca.issue_leaf(issuer=root, subject=platform_subject(name), public_key=key.public_key(),
                         usage=ca.Usage.CLIENT, valid_days=1,
                         crl_urls=[runtime.crl_url(ROOT_CRL_NAME)])  # fmt: skip
    principal = f"User:{name}"
    allow, prefixed = AclPermissionType.ALLOW, ResourcePatternType.PREFIXED
    bindings = [AclBinding(ResourceType.TOPIC, "iot.", prefixed, principal, "*", op, allow) for op in topic_operations]
    if group_read:
        bindings.append(AclBinding(ResourceType.GROUP, name, prefixed, principal, "*", AclOperation.READ, allow))
    admin = AdminClient(admin_config(runtime))  # kept until the results are in: its handle serves them
    for future in admin.create_acls(bindings).values():
        future.result(30)
    return KafkaCredential(principal, ca.certificate_pem(cert).decode(), ca.private_key_pem(key).decode())
