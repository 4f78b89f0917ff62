"""Reads of streams, device groups and devices, and of a stream's schema versions (as the
registry holds them and as Sluice's audit log remembers who registered them).

The list and get functions take the caller's ``Scope`` (``tenants.scoping``) as a required
keyword: a tenant scope never returns another tenant's rows.  The schema reads take a stream
already resolved inside that scope (``stream_get``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from config.errors import Conflict, NotFound
from devices import registry
from devices.models import Consumer, Device, DeviceGroup, Stream
from tenants.models import AuditEvent
from tenants.scoping import Scope, restrict

SCHEMA_REGISTER = "schema.register"


# -- streams, groups, devices --------------------------------------------------------------


def stream_list(*, scope: Scope) -> QuerySet[Stream]:
    return restrict(Stream.objects.select_related("tenant"), scope=scope)


def stream_get(*, scope: Scope, pk: int) -> Stream:
    """The stream ``pk`` in ``scope``; NotFound for one outside it, as for none."""
    stream = stream_list(scope=scope).filter(pk=pk).first()
    if stream is None:
        raise NotFound(f"No stream {pk}.")
    return stream


def group_list(*, scope: Scope) -> QuerySet[DeviceGroup]:
    return restrict(DeviceGroup.objects.select_related("tenant", "stream__tenant"), scope=scope)


def group_get(*, scope: Scope, slug: str) -> DeviceGroup:
    group = group_list(scope=scope).filter(slug=slug).first()
    if group is None:
        raise NotFound(f"No device group '{slug}'.")
    return group


def consumer_list(*, scope: Scope) -> QuerySet[Consumer]:
    return restrict(Consumer.objects.select_related("tenant").prefetch_related("streams__tenant"), scope=scope)


def consumer_get(*, scope: Scope, slug: str) -> Consumer:
    consumer = consumer_list(scope=scope).filter(slug=slug).first()
    if consumer is None:
        raise NotFound(f"No consumer '{slug}'.")
    return consumer


def consumer_topics(*, consumer: Consumer) -> list[str]:
    """The topics ``consumer``'s credentials may read: its streams' (with ``all_streams``,
    every stream its tenant has now), then the tenant's DLQ with ``dead_letters``."""
    # A selection's streams are prefetched with their tenants by consumer_list.
    streams = stream_list(scope=Scope.of_tenant(consumer.tenant)) if consumer.all_streams else consumer.streams.all()
    topics = sorted(stream.topic for stream in streams)
    return [*topics, consumer.tenant.dlq_topic] if consumer.dead_letters else topics


def device_list(*, scope: Scope) -> QuerySet[Device]:
    return restrict(Device.objects.select_related("tenant", "group__stream__tenant"), scope=scope)


def devices_silent(*, scope: Scope, now: dt.datetime | None = None) -> QuerySet[Device]:
    """Active devices of ``scope`` silent for longer than their group's expected reporting
    interval: last seen before it, or never seen though created before it.  Longest silent
    first (never seen before any)."""
    now = now or timezone.now()
    late = Q(pk__in=[])
    # One condition per distinct interval (a handful), not per group (thousands for an operator).
    intervals = group_list(scope=scope).order_by().values_list("expected_interval_seconds", flat=True).distinct()
    for interval in intervals:
        since = now - dt.timedelta(seconds=interval)
        late |= Q(group__expected_interval_seconds=interval) & (
            Q(last_seen_at__lt=since) | Q(last_seen_at__isnull=True, created_at__lt=since)
        )
    silent = device_list(scope=scope).filter(late, status=Device.Status.ACTIVE)
    return silent.order_by(F("last_seen_at").asc(nulls_first=True), "tenant__slug", "device_id")


def device_get(*, scope: Scope, device_id: str) -> Device:
    device = device_list(scope=scope).filter(device_id=device_id).first()
    if device is None:
        raise NotFound(f"No device '{device_id}'.")
    return device


# -- a stream's schema -----------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaVersion:
    """One version of a stream's value subject, with who registered it through Sluice and
    when (None for a version registered some other way)."""

    subject: str
    schema_id: int
    version: int
    schema_type: str
    schema_str: str
    registered_at: dt.datetime | None = None
    registered_by: str | None = None


def stream_schema_subject(*, stream: Stream) -> str:
    return registry.value_subject(stream.topic)


def _registrations(stream: Stream, subject: str) -> dict[int, AuditEvent]:
    """This stream's ``schema.register`` audit events by version.  Only events since the
    stream was created: a deleted stream's subject went with it, and a new stream of the same
    name starts again at version 1."""
    events = AuditEvent.objects.filter(tenant=stream.tenant, action=SCHEMA_REGISTER, object_repr=subject,
                                       created_at__gte=stream.created_at).order_by("created_at")  # fmt: skip
    return {int((e.after or {})["version"]): e for e in events if isinstance((e.after or {}).get("version"), int)}


def _with_registration(found: registry.RegisteredVersion, event: AuditEvent | None) -> SchemaVersion:
    return SchemaVersion(found.subject, found.schema_id, found.version, found.schema_type, found.schema_str,
                         registered_at=event.created_at if event else None,
                         registered_by=event.actor_label if event else None)  # fmt: skip


def stream_schema_latest(*, stream: Stream) -> SchemaVersion | None:
    """The latest version of the stream's schema, or None while it has none."""
    subject = stream_schema_subject(stream=stream)
    latest = registry.schema_latest(subject=subject)
    if latest is None:
        return None
    return _with_registration(latest, _registrations(stream, subject).get(latest.version))


def stream_schema_version(*, stream: Stream, version: int) -> SchemaVersion | None:
    subject = stream_schema_subject(stream=stream)
    found = registry.schema_version(subject=subject, version=version)
    if found is None:
        return None
    return _with_registration(found, _registrations(stream, subject).get(found.version))


class SchemaVersions(Sequence[SchemaVersion]):
    """The stream's schema versions, newest first, read from the registry only for the slice
    asked for: the API's paginator takes ``len()`` and one slice, so a page of versions costs
    one registry request for the numbers and one per version shown."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.subject = stream_schema_subject(stream=stream)
        self.numbers = sorted(registry.schema_versions(subject=self.subject), reverse=True)

    def __len__(self) -> int:
        return len(self.numbers)

    @overload
    def __getitem__(self, index: int) -> SchemaVersion: ...
    @overload
    def __getitem__(self, index: slice) -> list[SchemaVersion]: ...
    def __getitem__(self, index: int | slice) -> SchemaVersion | list[SchemaVersion]:
        if isinstance(index, int):
            return self._read([self.numbers[index]])[0]
        return self._read(self.numbers[index])

    def __iter__(self) -> Iterator[SchemaVersion]:
        return iter(self._read(self.numbers))

    def _read(self, numbers: list[int]) -> list[SchemaVersion]:
        if not numbers:
            return []
        registrations = _registrations(self.stream, self.subject)
        found = (registry.schema_version(subject=self.subject, version=n) for n in numbers)
        # A version deleted between the two reads is left out.
        return [_with_registration(v, registrations.get(v.version)) for v in found if v is not None]


def stream_schema_versions(*, stream: Stream) -> SchemaVersions:
    return SchemaVersions(stream)


@dataclass(frozen=True)
class SchemaVerdict:
    """What registering a schema would do: ``held`` is the version that already holds it (then
    nothing would be registered), ``latest`` the version it would follow."""

    subject: str
    compatible: bool
    latest: int | None
    held: int | None


def _keeps_type(subject: str, latest: registry.RegisteredVersion | None, schema_type: str) -> None:
    if latest is not None and latest.schema_type != schema_type:
        message = f"The stream's schemas are {latest.schema_type}; a new version keeps that type."
        raise Conflict(message, fields=[{"pointer": "/schema_type", "code": "type_mismatch", "message": message}])


def stream_schema_precheck(
    *, stream: Stream, schema_type: str, schema: str
) -> tuple[str, registry.RegisteredVersion | None, registry.RegisteredVersion | None]:
    """The checks before a stream's schema is registered, shared by the registration and the
    dry run: the text is a schema of its type (``InvalidInput`` at ``/schema`` otherwise, before
    any network call), and of the type the subject already has (``Conflict``, ``type_mismatch``
    at ``/schema_type``).  Returns the subject, its latest version and the version already
    holding this schema (or None)."""
    registry.schema_check(schema_str=schema, schema_type=schema_type)
    subject = stream_schema_subject(stream=stream)
    latest = registry.schema_latest(subject=subject)
    _keeps_type(subject, latest, schema_type)
    held = registry.schema_lookup(subject=subject, schema_str=schema, schema_type=schema_type)
    return subject, latest, held


def stream_schema_verdict(*, stream: Stream, schema_type: str, schema: str) -> SchemaVerdict:
    """The registry's verdict on ``schema`` as the stream's next version, without registering
    it: a ``SchemaVerdict`` when it would be accepted, else the same ``Conflict`` (code
    ``incompatible_schema`` at ``/schema``, with the registry's reasons when it gives them)
    that registering it would raise."""
    subject, latest, held = stream_schema_precheck(stream=stream, schema_type=schema_type, schema=schema)
    latest_version = latest.version if latest else None
    if held is not None:
        return SchemaVerdict(subject, True, latest_version, held.version)
    reasons = registry.schema_compatibility(subject=subject, schema_str=schema, schema_type=schema_type)
    if reasons is not None:
        raise registry.incompatible(subject, reasons)
    return SchemaVerdict(subject, True, latest_version, None)
