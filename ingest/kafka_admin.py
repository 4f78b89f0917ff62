"""Kafka admin I/O through the platform admin client: topics and their configs.

It sits in ``ingest``, the app that owns everything Kafka (the producer, ACLs, client
quotas), at the top of the app layers: ``devices`` declares streams, and ingest's services
(``ingest.topic_sync``) make the topics follow them when devices fires its hooks
(``devices.services.stream_saved`` / ``stream_deleted``), so devices never imports Kafka.
ACL and client-quota I/O are still in ``ingest.acl_sync`` and ``ingest.quota_sync``.

``ensure_topic`` makes a topic match what the database says: creates it, adds partitions
(Kafka cannot remove any), and sets the topic configs Sluice owns with an incremental
alter (KIP-339), leaving every other config alone.  ``topic_drift`` only reports.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from config.env import Runtime
from ingest.kafka import admin_config

_admin: dict[str, AdminClient] = {}
_admin_lock = threading.Lock()

TIMEOUT = 30.0
# Topic creation and deletion are acknowledged by the controller before every broker's
# metadata shows them; callers get "done" only once the metadata agrees.
PROPAGATION_WAIT = 30.0


def _await_metadata(admin: AdminClient, names: list[str], *, present: bool) -> None:
    deadline = time.monotonic() + PROPAGATION_WAIT
    while time.monotonic() < deadline:
        known = admin.list_topics(timeout=TIMEOUT).topics
        if all((name in known and known[name].error is None) is present for name in names):
            return
        time.sleep(0.2)
    state = "appear" if present else "disappear"
    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"topics {names} did not {state} in metadata"))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


@dataclass
class TopicState:
    exists: bool
    partitions: int = 0
    replication_factor: int = 0
    config: dict[str, str] = field(default_factory=dict)


def describe(admin: AdminClient, name: str) -> TopicState:
    metadata = admin.list_topics(topic=name, timeout=TIMEOUT)
    topic = metadata.topics.get(name)
    if topic is None or (topic.error is not None and topic.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        return TopicState(exists=False)
    if topic.error is not None:
        raise KafkaException(topic.error)
    replicas = len(next(iter(topic.partitions.values())).replicas) if topic.partitions else 0
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([resource])[resource].result(TIMEOUT)
    return TopicState(
        exists=True,
        partitions=len(topic.partitions),
        replication_factor=replicas,
        config={key: entry.value for key, entry in configs.items()},
    )


def drift(spec: TopicSpec, state: TopicState) -> list[str]:
    """Human-readable differences between what should be and what is."""
    if not state.exists:
        return [f"{spec.name}: topic is missing"]
    found = []
    if state.partitions != spec.partitions:
        found.append(f"{spec.name}: {state.partitions} partitions, expected {spec.partitions}")
    if state.replication_factor != spec.replication_factor:
        found.append(f"{spec.name}: replication factor {state.replication_factor}, expected {spec.replication_factor}")
    for key, value in spec.config.items():
        if state.config.get(key) != value:
            found.append(f"{spec.name}: {key}={state.config.get(key)}, expected {value}")
    return found


def ensure_topic(admin: AdminClient, spec: TopicSpec, *, attempts: int = 3) -> list[str]:
    """Create or alter the topic to match ``spec``; returns what was changed."""
    state = describe(admin, spec.name)
    if not state.exists:
        new = NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                       config=spec.config)  # fmt: skip
        try:
            admin.create_topics([new], operation_timeout=TIMEOUT)[spec.name].result(TIMEOUT)
        except KafkaException as exc:
            # Created meanwhile by someone else (a retry, a reconcile): align it instead.  A
            # topic that exists for create but not for describe (deletion in progress) is
            # retried a bounded number of times, then left to the task's own retries.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS or attempts <= 1:
                raise
            time.sleep(0.5)
            return ensure_topic(admin, spec, attempts=attempts - 1)
        _await_metadata(admin, [spec.name], present=True)
        return [f"created {spec.name} ({spec.partitions} partitions)"]
    changes: list[str] = []
    if spec.partitions > state.partitions:
        admin.create_partitions([NewPartitions(spec.name, spec.partitions)])[spec.name].result(TIMEOUT)
        changes.append(f"{spec.name}: partitions {state.partitions} -> {spec.partitions}")
    differing = {k: v for k, v in spec.config.items() if state.config.get(k) != v}
    if differing:
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in differing.items()
            ],
        )
        admin.incremental_alter_configs([resource])[resource].result(TIMEOUT)
        changes += [f"{spec.name}: {k} -> {v}" for k, v in differing.items()]
    return changes


def delete_topics(admin: AdminClient, names: list[str]) -> list[str]:
    """Delete the topics that exist; returns the names deleted."""
    existing = [n for n in names if n in admin.list_topics(timeout=TIMEOUT).topics]
    if not existing:
        return []
    for name, future in admin.delete_topics(existing, operation_timeout=TIMEOUT).items():
        try:
            future.result(TIMEOUT)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            existing.remove(name)
    _await_metadata(admin, existing, present=False)
    return existing


def topics_with_prefix(admin: AdminClient, prefix: str) -> list[str]:
    return sorted(t for t in admin.list_topics(timeout=TIMEOUT).topics if t.startswith(prefix))


def topic_names(admin: AdminClient) -> set[str]:
    return set(admin.list_topics(timeout=TIMEOUT).topics)


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
