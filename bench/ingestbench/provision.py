"""Provisioning through Sluice's own services (in this process, on the scratch platform's
database): a tenant with quotas that never throttle, one stream per format (JSON Schema and
Avro, each registered in the registry), a device group per stream with a rate limit that
never throttles, devices imported in bulk and their certificates issued in bulk.

For P8, ``populate`` adds tenants (each with its CA, a one-partition stream with a schema, a
group and bulk-imported devices, but no certificates: they do not send) until the platform
holds the asked-for numbers of tenants and devices.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ingestbench.clients import one_request
from bench.ingestbench.workload import AVRO_SCHEMA, FORMATS, JSON_SCHEMA, body_for

QUOTA = 2_000_000_000  # records/s, bytes/s and requests/s: far above anything one machine sends
SCHEMA_TYPES = {"json": ("JSON", JSON_SCHEMA), "avro": ("AVRO", AVRO_SCHEMA)}


@dataclass(frozen=True)
class Device:
    device_id: str
    chain: str  # PEM file: leaf + tenant CA
    key: str  # PEM file


@dataclass(frozen=True)
class StreamSetup:
    format: str
    topic: str
    subject: str
    group: str
    partitions: int
    devices: list[Device]


@dataclass
class Written:
    """One record as Sluice wrote it to Kafka (read back): what the ceiling writes."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Provisioned:
    tenant: str
    streams: dict[str, StreamSetup]
    ca_file: str
    port: int
    hostname: str


def setup_django(env: dict[str, str]) -> None:
    os.environ.update({k: env[k] for k in ("SLUICE_STATE_DIR", "SLUICE_PORT_OFFSET")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the registry client logs every call
    logging.getLogger("httpx").setLevel(logging.WARNING)


def provision(
    workdir: Path,
    devices_per_stream: int,
    partitions: int | None,
    formats: tuple[str, ...] = FORMATS,
) -> Provisioned:
    from django.conf import settings

    from certs.platform_pki import PlatformPki
    from certs.services import certificates_issue_bulk
    from devices.models import Stream
    from devices.services import device_bulk_import, group_create, stream_with_schema_create
    from ingest.topic_sync import stream_provision
    from tenants.audit import Actor
    from tenants.services import tenant_create

    runtime = settings.SLUICE_RUNTIME
    actor = Actor.system("bench")
    tenant = tenant_create(
        actor=actor,
        slug=f"bench-{secrets.token_hex(3)}",
        name="Ingest benchmark",
        max_records_per_second=QUOTA,
        max_bytes_per_second=QUOTA,
    )
    streams = {}
    for fmt in formats:
        schema_type, schema = SCHEMA_TYPES[fmt]
        extra = {"partitions": partitions} if partitions else {}
        stream, subject, _ = stream_with_schema_create(
            actor=actor,
            tenant=tenant,
            schema_type=schema_type,
            schema=json.dumps(schema),
            region="eu",
            type=f"airq-{fmt}",
            **extra,
        )
        # The Celery worker provisions the topic after commit; doing it here too is idempotent
        # and means it exists before the first request.
        stream_provision(stream=stream)
        stream = Stream.objects.get(pk=stream.pk)
        group = f"airq-{fmt}"
        group_create(
            actor=actor,
            tenant=tenant,
            stream=stream,
            slug=group,  # region and device type follow the stream
            schema_subject=subject,
            rate_limit_per_second=QUOTA,
        )
        ids = [f"{fmt}-sensor-{i:04d}" for i in range(devices_per_stream)]
        device_bulk_import(actor=actor, tenant=tenant, rows=[{"device_id": d, "group": group} for d in ids])
        devices = []
        for issued in certificates_issue_bulk(actor=actor, tenant=tenant, items=[{"device_id": d} for d in ids]):
            device_id = issued.certificate.device_ref
            chain, key = workdir / f"{device_id}.pem", workdir / f"{device_id}.key"
            chain.write_text(issued.chain_pem)
            key.write_text(issued.key_pem or "")
            key.chmod(0o600)
            devices.append(Device(device_id, str(chain), str(key)))
        streams[fmt] = StreamSetup(fmt, stream.topic, subject, group, stream.partitions, devices)
    return Provisioned(
        tenant=tenant.slug,
        streams=streams,
        ca_file=str(PlatformPki(runtime.pki_dir).trust_bundle),
        port=runtime.ports.web,
        hostname=runtime.public_hostnames[0],
    )


def wait_until_accepting(prov: Provisioned, user_agent: str, deadline_s: float = 120.0) -> None:
    """Every device gets a 200: its tenant CA's CRL is in nginx's bundle, the schema is
    found, Kafka has leaders for the topic.  Fails with the last answer otherwise."""
    deadline = time.monotonic() + deadline_s
    body = body_for(1)
    for stream in prov.streams.values():
        for device in stream.devices:
            last = ""
            while True:
                try:
                    status, payload = one_request(
                        host="127.0.0.1",
                        port=prov.port,
                        server_hostname=prov.hostname,
                        ca_file=prov.ca_file,
                        chain=device.chain,
                        key=device.key,
                        body=body,
                        path="/ingest/v1/records",
                        user_agent=user_agent,
                    )
                    if status == 200:
                        break
                    last = f"{status} {payload[:300]!r}"
                except OSError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest never accepted a record from {device.device_id}: {last}")
                time.sleep(1.0)


def read_back(topic: str, timeout: float = 60.0) -> Written:
    """The first record of ``topic`` as Kafka holds it (key, value, headers)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from django.conf import settings

    from ingest.kafka import admin_config

    config = {
        **admin_config(settings.SLUICE_RUNTIME),
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            return Written(
                message.key() or b"",
                message.value() or b"",
                # A consumed message's headers are (name, bytes) pairs; types say a producer's choices.
                [(name, value or b"") for name, value in (message.headers() or [])],  # type: ignore[misc]
            )
    finally:
        consumer.close()
    raise RuntimeError(f"no record found in {topic} within {timeout:.0f} s")


# -- P8: many tenants and devices ------------------------------------------------------


def populate(*, tenants: int, devices: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Add tenants (each: CA, a one-partition stream with its schema, a group, devices by
    bulk import; no certificates) until the platform holds ``tenants`` tenants and
    ``devices`` devices.  Returns what was added and how long it took."""
    from devices.models import Device as DeviceModel
    from devices.services import device_bulk_import, group_create, stream_with_schema_create
    from tenants.audit import Actor
    from tenants.models import Tenant
    from tenants.services import tenant_create

    actor = Actor.system("bench")
    began = time.monotonic()
    have_tenants, have_devices = Tenant.objects.count(), DeviceModel.objects.count()
    adding = max(0, tenants - have_tenants)
    per_tenant, extra = divmod(max(0, devices - have_devices), max(adding, 1))
    schema = json.dumps(JSON_SCHEMA)
    for i in range(adding):
        tenant = tenant_create(actor=actor, slug=f"pop-{i:05d}-{secrets.token_hex(2)}", name=f"Population {i}")
        stream, subject, _ = stream_with_schema_create(
            actor=actor, tenant=tenant, schema_type="JSON", schema=schema, region="eu", type="airq", partitions=1
        )
        group_create(
            actor=actor,
            tenant=tenant,
            stream=stream,
            slug="sensors",
            region="eu",
            device_type="airq",
            schema_subject=subject,
        )
        count = per_tenant + (1 if i < extra else 0)
        if count:
            device_bulk_import(
                actor=actor,
                tenant=tenant,
                rows=[{"device_id": f"sensor-{n:05d}", "group": "sensors"} for n in range(count)],
            )
        if (i + 1) % 50 == 0 or i + 1 == adding:
            say(f"    {i + 1}/{adding} tenants added ({time.monotonic() - began:.0f} s)")
    return {
        "tenants_added": adding,
        "tenants": Tenant.objects.count(),
        "devices": DeviceModel.objects.count(),
        "seconds": time.monotonic() - began,
    }


def wait_for_background(*, topics_expected: int, say: Callable[[str], None], timeout: float = 1800.0) -> float:
    """Until the Celery queue is empty, no task is unacknowledged and Kafka holds at least
    ``topics_expected`` topics (the provisioning tasks queued by ``populate`` are done)."""
    import redis
    from django.conf import settings

    from ingest.kafka_admin import admin_client

    runtime = settings.SLUICE_RUNTIME
    client = redis.Redis.from_url(runtime.redis_url(0))
    began = time.monotonic()
    last_said = 0.0
    while time.monotonic() - began < timeout:
        queued = int(client.llen("celery"))
        unacked = int(client.hlen("unacked"))
        topics = len(admin_client(runtime).list_topics(timeout=10).topics)
        if queued == 0 and unacked == 0 and topics >= topics_expected:
            return time.monotonic() - began
        if time.monotonic() - last_said > 30:
            say(
                f"    waiting for background work: {queued} queued, {unacked} running, {topics}/{topics_expected} "
                "topics"
            )
            last_said = time.monotonic()
        time.sleep(2.0)
    raise RuntimeError("background provisioning did not finish in time")


def api_token(tenant_slug: str) -> tuple[str, list[str]]:
    """An API token of a platform operator made for the benchmark, and REST API list paths
    of the benchmark's tenant (each one a token lookup and tenant-scoped queries)."""
    from django.contrib.auth import get_user_model

    from tenants.audit import Actor
    from tenants.services import api_token_create

    user = get_user_model().objects.create_superuser(f"bench-api-{secrets.token_hex(3)}", password=None)
    _, secret = api_token_create(actor=Actor.system("bench"), user=user, name="bench api load")
    base = f"/api/v1/tenants/{tenant_slug}"
    return secret, [f"{base}/devices/?page_size=50", f"{base}/groups/", f"{base}/streams/", "/api/v1/tenants/"]
