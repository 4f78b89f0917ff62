"""The one place that talks to Kafka's admin API, through the platform admin client: topics
and their configs, ACLs (describe, create, delete, and the wait until the authorizer holds
them); and client quotas (describe, alter, and the wait until the broker agrees).

It sits in ``ingest``, the app that owns everything Kafka (the producer, ACLs, client
quotas), at the top of the app layers: ``devices`` declares streams, and ingest's services
(``ingest.topic_sync``) make the topics follow them when devices fires its hooks
(``devices.services.stream_saved`` / ``stream_deleted``), so devices never imports Kafka.
The reconciling services (``ingest.topic_sync``, ``ingest.acl_sync``) decide; this module only
asks and waits.  (The health check's metadata ping, ``ingest.kafka.kafka_cluster_check``, stays
with the client configs: the launcher runs it before Django is set up.)

``ensure_topic`` makes a topic match what the database says: creates it, adds partitions
(Kafka cannot remove any), and sets the topic configs Sluice owns with an incremental
alter (KIP-339), leaving every other config alone.  ``topic_drift`` only reports.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from django.conf import settings
from kafka import errors as kafka_errors
from kafka.admin import KafkaAdminClient
from kafka.protocol.admin import AlterClientQuotasRequest, DescribeClientQuotasRequest

from config.env import Runtime
from ingest.acls import sorted_bindings
from ingest.kafka import admin_config, admin_files
from ingest.quotas import QuotaChanges, Quotas, quota_changes

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


# -- ACLs ------------------------------------------------------------------------------------

# Kafka filters match principals exactly, never by prefix, so a tenant's namespace
# (``User:<slug>.*``, ``iot.<slug>.*``) cannot be asked for; reconcile lists every binding
# once and classifies it here.
# A filter's None matches any value (confluent-kafka's docs), though its annotations say str.
ALL_ACLS = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]
                            AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip


def principal_filter(principal: str) -> AclBindingFilter:
    # None matches any value (see ALL_ACLS for the ignore).
    return AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,  # type: ignore[arg-type]
                            AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip


def topic_filter(topic: str) -> AclBindingFilter:
    """Every binding on exactly this topic name (LITERAL: not prefixes that cover it)."""
    # None matches any value (see ALL_ACLS for the ignore).
    return AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, None, None,  # type: ignore[arg-type]
                            AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip


def consumer_groups_filter() -> AclBindingFilter:
    """Every PREFIXED binding on consumer groups: where consumers' group grants are (the
    caller keeps the ones in its tenant's namespace)."""
    # None matches any value (see ALL_ACLS for the ignore).
    return AclBindingFilter(ResourceType.GROUP, None, ResourcePatternType.PREFIXED, None, None,  # type: ignore[arg-type]
                            AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip


def described(admin: AdminClient, filters: Iterable[AclBindingFilter]) -> set[AclBinding]:
    """The bindings matching any of ``filters``: one DescribeAcls each, sent together."""
    futures = [admin.describe_acls(f, request_timeout=TIMEOUT) for f in filters]
    found: set[AclBinding] = set()
    for future in futures:
        found.update(future.result(TIMEOUT))
    return found


def existing_acls(admin: AdminClient) -> list[AclBinding]:
    return sorted_bindings(described(admin, [ALL_ACLS]))


def exact_filter(binding: AclBinding) -> AclBindingFilter:
    """A filter that matches ``binding`` and nothing else (LITERAL/PREFIXED, never MATCH)."""
    return AclBindingFilter(binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
                            binding.host, binding.operation, binding.permission_type)  # fmt: skip


def create_acls(admin: AdminClient, bindings: list[AclBinding]) -> tuple[list[AclBinding], KafkaException | None]:
    """Create ``bindings``; returns those the controller accepted and the first failure."""
    done: list[AclBinding] = []
    failure: KafkaException | None = None
    for binding, future in (admin.create_acls(bindings, request_timeout=TIMEOUT) if bindings else {}).items():
        try:
            future.result(TIMEOUT)
        except KafkaException as exc:
            failure = failure or exc
        else:
            done.append(binding)
    return done, failure


def delete_acls(admin: AdminClient, bindings: list[AclBinding]) -> tuple[list[AclBinding], KafkaException | None]:
    """Delete exactly ``bindings``; returns those Kafka reports deleted and the first failure."""
    done: list[AclBinding] = []
    failure: KafkaException | None = None
    filters = [exact_filter(b) for b in bindings]
    for future in (admin.delete_acls(filters, request_timeout=TIMEOUT) if filters else {}).values():
        try:
            done += future.result(TIMEOUT)
        except KafkaException as exc:
            failure = failure or exc
    return sorted_bindings(done), failure


def await_acls(
    admin: AdminClient, filters: list[AclBindingFilter], *, present: Iterable[AclBinding], absent: Iterable[AclBinding]
) -> None:
    """Poll the broker (with ``filters``, which cover every binding named) until its
    authorizer holds ``present`` and none of ``absent``."""
    wanted, unwanted = set(present), set(absent)
    if not wanted and not unwanted:
        return
    deadline = time.monotonic() + PROPAGATION_WAIT
    while time.monotonic() < deadline:
        found = described(admin, filters)
        if wanted <= found and not (unwanted & found):
            return
        time.sleep(0.05)
    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "ACL changes did not reach the broker's authorizer"))


# -- client quotas (KIP-546) ---------------------------------------------------------------
#
# Why kafka-python: librdkafka (confluent-kafka) has no client-quota API; kafka-python 3.0.12
# ships the AlterClientQuotas/DescribeClientQuotas protocol messages and a connection manager
# that speaks mTLS, but no admin method for them, so requests are sent through its admin
# client's connection manager (``_manager``, pinned version).  Measured against Kafka's own
# JVM tooling (``kafka.admin.ConfigCommand``): 0.3 s for an alter and 0.01-0.05 s for a
# describe in-process, against 6.8 s wall (5.7 s CPU) for one describe through a JVM.

TIMEOUT_MS = 30_000
MATCH_EXACT, MATCH_SPECIFIED = 0, 2  # DescribeClientQuotas match types (KIP-546)
_quota_lock = threading.Lock()
_admins: dict[str, KafkaAdminClient] = {}


def quota_admin() -> KafkaAdminClient:
    """A process-wide kafka-python admin client as the platform admin (mTLS), made lazily."""
    runtime = settings.SLUICE_RUNTIME
    key = str(runtime.state_dir)
    with _quota_lock:
        admin = _admins.get(key)
        if admin is None:
            files = admin_files(runtime)
            admin = KafkaAdminClient(
                bootstrap_servers=runtime.kafka_bootstrap,
                security_protocol="SSL",
                ssl_cafile=files.ca,
                ssl_certfile=files.cert,
                ssl_keyfile=files.key,
                request_timeout_ms=TIMEOUT_MS,
            )
            _admins[key] = admin
        return admin


class QuotaError(KafkaException):
    """A quota request failed or was refused.  A ``KafkaException``, so the ACL tasks'
    retry policy covers it like any other Kafka failure."""


# A cached admin whose broker went away and came back (a broker restart, a leader moved) may
# have every node in reconnect backoff, which grows to 30 s: kafka-python then refuses at once
# with NodeNotReadyError ("No node_id provided") instead of waiting.  Such a client is dropped
# and the request sent again on a fresh one, which bootstraps anew, this many times.
NOT_READY_ATTEMPTS = 3
NOT_READY_PAUSE = 0.5


def _drop_quota_admin(admin: KafkaAdminClient) -> None:
    key = str(settings.SLUICE_RUNTIME.state_dir)
    with _quota_lock:
        if _admins.get(key) is admin:
            del _admins[key]
    # Closing a client already given up on: a failure to close has nothing left to report.
    with contextlib.suppress(Exception):
        admin.close()


def _send(request: Any) -> Any:
    for attempt in range(1, NOT_READY_ATTEMPTS + 1):
        try:
            admin = quota_admin()
        except kafka_errors.KafkaError as exc:  # no broker answered the bootstrap
            raise QuotaError(f"{type(request).__name__}: {exc}") from exc

        # The admin client's connection manager: private, hence kafka-python pinned (module doc).
        async def send(admin: KafkaAdminClient = admin) -> Any:
            return await admin._manager.send(request, request_timeout_ms=TIMEOUT_MS)

        try:
            return admin._manager.run(send)
        except (kafka_errors.NodeNotReadyError, kafka_errors.KafkaConnectionError) as exc:
            _drop_quota_admin(admin)
            if attempt == NOT_READY_ATTEMPTS:
                raise QuotaError(f"{type(request).__name__}: {exc} (after {attempt} fresh connections)") from exc
            time.sleep(NOT_READY_PAUSE * attempt)
        except kafka_errors.KafkaError as exc:
            raise QuotaError(f"{type(request).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


def _entries(response: Any) -> dict[str, Quotas]:
    if response.error_code:
        raise QuotaError(f"DescribeClientQuotas failed: {response.error_code} {response.error_message}")
    found: dict[str, Quotas] = {}
    for entry in response.entries or ():
        users = [e.entity_name for e in entry.entity if e.entity_type == "user"]
        if len(entry.entity) == 1 and users and users[0] is not None:
            found[users[0]] = {v.key: float(v.value) for v in entry.values}
    return found


def described_quotas(entities: list[str] | None) -> dict[str, Quotas]:
    """The user quotas of exactly ``entities`` (one exact match each), or of every user
    entity when None (one request: Kafka cannot filter by prefix)."""
    component = DescribeClientQuotasRequest.ComponentData
    if entities is None:
        request = DescribeClientQuotasRequest(components=[component(entity_type="user", match_type=MATCH_SPECIFIED,
                                                                    match=None)], strict=True)  # fmt: skip
        return _entries(_send(request))
    found: dict[str, Quotas] = {}
    for entity in entities:
        request = DescribeClientQuotasRequest(components=[component(entity_type="user", match_type=MATCH_EXACT,
                                                                    match=entity)], strict=True)  # fmt: skip
        found.update(_entries(_send(request)))
    return found


def alter_quotas(changes: QuotaChanges) -> None:
    entry = AlterClientQuotasRequest.EntryData
    entries = []
    for entity in sorted(set(changes.set) | set(changes.remove)):
        ops = [entry.OpData(key=k, value=v, remove=False) for k, v in sorted(changes.set.get(entity, {}).items())]
        ops += [entry.OpData(key=k, value=0.0, remove=True) for k in changes.remove.get(entity, ())]
        entries.append(entry(entity=[entry.EntityData(entity_type="user", entity_name=entity)], ops=ops))
    response = _send(AlterClientQuotasRequest(entries=entries, validate_only=False))
    failed = [f"{e.entity[0].entity_name}: {e.error_code} {e.error_message}" for e in response.entries if e.error_code]
    if failed:
        raise QuotaError(f"AlterClientQuotas failed for {failed}")


def await_quotas(entities: list[str] | None, desired: dict[str, Quotas], scope: set[str]) -> None:
    deadline = time.monotonic() + PROPAGATION_WAIT
    while time.monotonic() < deadline:
        found = {e: q for e, q in described_quotas(entities).items() if e in scope}
        if not quota_changes(found, desired):
            return
        time.sleep(0.05)
    raise QuotaError("quota changes did not reach the broker")
