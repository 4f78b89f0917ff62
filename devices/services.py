"""Writes on streams, device groups and devices, and the Kafka provisioning behind streams.

Every write validates fully before touching the database, runs in one transaction with
its audit row, and queues Kafka work with ``transaction.on_commit`` so the broker never
sees what the database rolled back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import ProtectedError, Sum

from config.errors import (
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    QuotaExceeded,
    from_django,
    validate_model,
)
from config.hooks import Hook
from devices import registry, selectors
from devices.models import Consumer, Device, DeviceGroup, Stream
from devices.principals import consumer_principal, credential_principal
from tenants.audit import Actor, audit_record, snapshot
from tenants.models import Tenant
from tenants.oauth.models import OAuthClient
from tenants.oauth.services import oauth_client_revoke
from tenants.rights import rights_changed
from tenants.scoping import Scope

STREAM_MUTABLE = ("partitions", "replication_factor", "compression", "cleanup_policy", "custom_retention_hours")
GROUP_MUTABLE = ("name", "region", "device_type", "stream", "schema_subject", "credential_policy", "cert_lifetime_days",
                 "cert_key_type", "cert_renewal_window_days", "rate_limit_per_second",
                 "expected_interval_seconds", "kafka_direct")  # fmt: skip
DEVICE_MUTABLE = ("group", "status", "labels")
CONSUMER_MUTABLE = ("name", "all_streams", "streams", "dead_letters", "status")
# One stream's partitions, whatever the tenant's total allows: more spreads a topic's
# records thinner than any consumer group of an IoT fleet can use, and each partition
# costs every broker replica file handles and memory.
MAX_STREAM_PARTITIONS = 1_000

# Streams become Kafka topics and device credentials are certificates: both live in layers
# above this one (ingest provisions topics, certs revokes certificates), which connect in
# their AppConfig.ready(), so devices never imports them.  All fire inside the caller's
# transaction; topic work is queued for after the commit by its receiver.
# stream_saved(stream): a stream was created or changed; its topic must follow.
stream_saved = Hook("devices.services.stream_saved")
# stream_deleted(topic, subjects): a stream went; its topic and these value subjects go too.
stream_deleted = Hook("devices.services.stream_deleted")
# device_certificates_withdrawn(actor, device, reason): revoke the device's usable certificates.
device_certificates_withdrawn = Hook("devices.services.device_certificates_withdrawn")
# group_certificates_withdrawn(actor, group, reason): revoke the group's usable certificates.
group_certificates_withdrawn = Hook("devices.services.group_certificates_withdrawn")
# consumer_certificates_withdrawn(actor, consumer, reason): revoke the consumer's usable certificates.
consumer_certificates_withdrawn = Hook("devices.services.consumer_certificates_withdrawn")


def _duplicate(pointer: str, what: str) -> InvalidInput:
    message = f"{what} already exists in this tenant."
    return InvalidInput(message, fields=[{"pointer": pointer, "code": "unique", "message": message}])


def _refuse_duplicate(existing: Any, pointer: str, what: str) -> None:
    """Per-tenant uniqueness, reported on the field that collides (not as a whole-object error)."""
    if existing.exists():
        raise _duplicate(pointer, what)


def _apply(obj: Any, changes: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    fixed = sorted(set(changes) - set(allowed))
    if fixed:
        raise InvalidInput(
            f"{', '.join(fixed)} of a {what} cannot be changed.",
            fields=[{"pointer": f"/{f}", "code": "immutable", "message": "Cannot be changed."} for f in fixed],
        )
    for key, value in changes.items():
        setattr(obj, key, value)


# -- streams ---------------------------------------------------------------------------


def _check_stream_quota(tenant: Tenant, *, stream: Stream, adding_stream: bool) -> None:
    """The tenant's stream and partition limits, counted with ``stream`` as it is about to
    be saved.  Call inside the writing transaction: like ``_check_quota``, the tenant row lock
    (PostgreSQL) or the IMMEDIATE transaction (SQLite) makes concurrent writes count one
    after the other, so two requests can never both take the last slot.  The limits are
    re-read under that lock, so an operator's change applies to the next write."""
    if stream.partitions > MAX_STREAM_PARTITIONS:
        message = f"A stream may have at most {MAX_STREAM_PARTITIONS} partitions."
        raise InvalidInput(message, fields=[{"pointer": "/partitions", "code": "max_value", "message": message}])
    locked = Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    limits = locked if locked is not None else tenant
    others = selectors.stream_list(scope=Scope.of_tenant(tenant)).exclude(pk=stream.pk)
    if adding_stream:
        count = others.count()
        if count + 1 > limits.max_streams:
            message = (f"Tenant '{tenant.slug}' may have {limits.max_streams} streams (max_streams); "
                       f"it has {count}.")  # fmt: skip
            raise QuotaExceeded(message, fields=[{"pointer": "/", "code": "max_streams", "message": message}])
    used = others.aggregate(total=Sum("partitions"))["total"] or 0
    if used + stream.partitions > limits.max_partitions:
        message = (f"Tenant '{tenant.slug}' may have {limits.max_partitions} partitions in total (max_partitions); "
                   f"its other streams have {used} and this one would have {stream.partitions}.")  # fmt: skip
        raise QuotaExceeded(message, fields=[{"pointer": "/partitions", "code": "max_partitions", "message": message}])


def stream_create(*, actor: Actor, tenant: Tenant, **values: Any) -> Stream:
    stream = Stream(tenant=tenant, **values)
    validate_model(stream)
    with transaction.atomic():
        _check_stream_quota(tenant, stream=stream, adding_stream=True)
        stream.save()
        audit_record(actor=actor, tenant=tenant, action="stream.create", obj=stream, after=snapshot(stream))
        stream_saved(stream=stream)
        _consumers_follow_streams(tenant)
    return stream


def _consumers_follow_streams(tenant: Tenant) -> None:
    """A stream came or went: consumers reading every stream gain its topic, and no grant on
    a deleted stream's topic may outlive it (a stream re-created under the same name must be
    granted afresh).  A whole-tenant sync, only when the tenant has consumers."""
    if Consumer.objects.filter(tenant=tenant).exists():
        rights_changed(tenant_id=tenant.pk, whole_tenant=True)


def stream_update(*, actor: Actor, stream: Stream, **changes: Any) -> Stream:
    before = snapshot(stream)
    if "partitions" in changes and changes["partitions"] < stream.partitions:
        raise InvalidInput(
            "Kafka cannot remove partitions from a topic.",
            fields=[{"pointer": "/partitions", "code": "partitions_decrease",
                     "message": f"Must be at least the current {stream.partitions}."}],
        )  # fmt: skip
    if "replication_factor" in changes and changes["replication_factor"] != stream.replication_factor:
        raise InvalidInput(
            "Changing the replication factor of an existing topic needs a partition reassignment.",
            fields=[{"pointer": "/replication_factor", "code": "immutable", "message": "Cannot be changed."}],
        )
    _apply(stream, changes, STREAM_MUTABLE, "stream")
    validate_model(stream)
    with transaction.atomic():
        if "partitions" in changes:
            _check_stream_quota(stream.tenant, stream=stream, adding_stream=False)
        stream.status = Stream.Status.PENDING
        stream.save()
        audit_record(actor=actor, tenant=stream.tenant, action="stream.update", obj=stream, before=before,
                     after=snapshot(stream))  # fmt: skip
        stream_saved(stream=stream)
    return stream


def stream_delete(*, actor: Actor, stream: Stream) -> None:
    """Delete a stream, its topic and its value subject (unless a group validates against
    it), so a later stream of the same name starts with no schema history of this one."""
    topic = stream.topic
    subject = registry.value_subject(topic)
    before = snapshot(stream)
    try:
        with transaction.atomic():
            audit_record(actor=actor, tenant=stream.tenant, action="stream.delete", obj=stream, before=before)
            _consumers_follow_streams(stream.tenant)  # resolved now, while the topic is still the tenant's
            stream.delete()
            groups = selectors.group_list(scope=Scope.of_tenant(stream.tenant))
            unused = not groups.filter(schema_subject=subject).exists()
            stream_deleted(topic=topic, subjects=[subject] if unused else [])
    except ProtectedError:
        names = ", ".join(sorted(g.slug for g in stream.groups.all()))
        raise Conflict(f"Stream {topic} is the target of device group(s) {names}; change them first.") from None


def stream_with_schema_create(
    *, actor: Actor, tenant: Tenant, schema_type: str, schema: str, **stream_values: Any
) -> tuple[Stream, str, int]:
    """Create a stream and register its value schema under ``<topic>-value`` through
    ``stream_schema_register``, the same service the API and the console use.  The registry
    is asked inside the stream's transaction, so its refusal (e.g. an incompatible version
    under an existing subject) rolls the stream and its audit row back and its Kafka
    provisioning, queued on commit, is never sent.  The schema text is checked before the
    transaction opens, so a typo never holds the database's write lock; an unreachable
    registry holds it for the client's retries (a few seconds).  Should the commit fail
    after the registry accepted, the subject keeps a version no stream uses, and trying
    again registers the same schema, which the registry answers with the same id."""
    registry.schema_check(schema_str=schema, schema_type=schema_type)
    with transaction.atomic():
        stream = stream_create(actor=actor, tenant=tenant, **stream_values)
        registered, _created = stream_schema_register(actor=actor, stream=stream, schema_type=schema_type,
                                                      schema=schema)  # fmt: skip
    return stream, registered.subject, registered.schema_id


def stream_schema_register(
    *, actor: Actor, stream: Stream, schema_type: str, schema: str
) -> tuple[registry.RegisteredVersion, bool]:
    """Register ``schema`` as the next version of the stream's value subject (``<topic>-value``)
    and return it, with True when it is new.  The text is checked here first, so a typo never
    reaches the registry; the subject's compatibility rule decides the rest (``Conflict`` with
    the registry's reasons at ``/schema``, code ``incompatible_schema``).  A schema the subject
    already holds is not registered again: its version is returned, with False, and nothing is
    audited.  Every new version is audited: who, tenant, stream, subject, version, id, type."""
    subject, _latest, held = selectors.stream_schema_precheck(stream=stream, schema_type=schema_type, schema=schema)
    if held is not None:
        return held, False
    schema_id = registry.schema_register(subject=subject, schema_str=schema, schema_type=schema_type)
    registered = registry.schema_lookup(subject=subject, schema_str=schema, schema_type=schema_type)
    if registered is None:  # registered, then gone (deleted meanwhile): report what we know
        registered = registry.RegisteredVersion(subject, schema_id, 0, schema_type, schema)
    with transaction.atomic():
        audit_record(actor=actor, tenant=stream.tenant, action=selectors.SCHEMA_REGISTER, object_type="schema",
                     object_id=str(schema_id), object_repr=subject,
                     after={"subject": subject, "schema_id": schema_id, "version": registered.version,
                            "schema_type": schema_type, "stream": stream.pk, "topic": stream.topic})  # fmt: skip
    return registered, True


# -- device groups ----------------------------------------------------------------------


def _own_stream(tenant: Tenant, stream: Any) -> Stream:
    """Resolve a stream reference inside ``tenant`` only; another tenant's stream is
    reported exactly like a missing one."""
    stream_id = stream.pk if isinstance(stream, Stream) else stream
    found = selectors.stream_list(scope=Scope.of_tenant(tenant)).filter(pk=stream_id).first()
    if found is None:
        raise InvalidInput(
            f"No stream {stream_id} in tenant '{tenant.slug}'.",
            fields=[{"pointer": "/stream", "code": "does_not_exist", "message": "No such stream in this tenant."}],
        )
    return found


def _check_subject(tenant: Tenant, subject: str) -> None:
    """A group validates against a subject in its own tenant's namespace only: another
    tenant's subject would disclose that tenant's schema (field names in every 422) and
    frame this tenant's records with a foreign schema id."""
    if subject and not subject.startswith(tenant.topic_prefix):
        message = f"The schema subject must belong to this tenant (start with '{tenant.topic_prefix}')."
        raise InvalidInput(message, fields=[{"pointer": "/schema_subject", "code": "foreign_subject",
                                             "message": message}])  # fmt: skip


def group_create(*, actor: Actor, tenant: Tenant, stream: Any, **values: Any) -> DeviceGroup:
    target = _own_stream(tenant, stream)
    # By default a group validates against its stream topic's value subject (TopicNameStrategy).
    values["schema_subject"] = values.get("schema_subject") or registry.value_subject(target.topic)
    group = DeviceGroup(tenant=tenant, stream=target, **values)
    slug = values.get("slug", "")
    same_slug = selectors.group_list(scope=Scope.of_tenant(tenant)).filter(slug=slug)
    _refuse_duplicate(same_slug, "/slug", f"Device group '{slug}'")
    _check_subject(tenant, group.schema_subject)
    validate_model(group)
    with transaction.atomic():
        group.save()
        audit_record(actor=actor, tenant=tenant, action="group.create", obj=group, after=snapshot(group))
    return group


def group_update(*, actor: Actor, group: DeviceGroup, **changes: Any) -> DeviceGroup:
    before = snapshot(group)
    if "stream" in changes:
        changes["stream"] = _own_stream(group.tenant, changes["stream"])
        # A group moved to another stream takes that stream's region and type, unless the
        # change names them (then they must match it: DeviceGroup.follow_stream).
        for name in DeviceGroup.FOLLOWS_STREAM:
            changes.setdefault(name, "")
    _apply(group, changes, GROUP_MUTABLE, "device group")
    _check_subject(group.tenant, group.schema_subject)
    validate_model(group)
    with transaction.atomic():
        group.save()
        audit_record(actor=actor, tenant=group.tenant, action="group.update", obj=group, before=before,
                     after=snapshot(group))  # fmt: skip
        if group.credential_policy != before["credential_policy"]:
            _withdraw_excluded_credentials(actor, group)
        # Policy, stream, subject and limits are read by ingest for every device of the group;
        # stream, policy and Kafka-direct access decide its credentials' Kafka ACLs.
        rights_changed(tenant_id=group.tenant_id, groups=[group.pk])
    return group


def _withdraw_excluded_credentials(actor: Actor, group: DeviceGroup) -> None:
    """A policy holds everywhere, Kafka included: the credentials a new policy excludes are
    revoked (certificates with reason privilege_withdrawn, audited and in the CRL; OAuth
    clients revoked), so nothing stays active that can no longer be used."""
    if group.credential_policy == DeviceGroup.CredentialPolicy.OAUTH2:
        group_certificates_withdrawn(actor=actor, group=group, reason="privilege_withdrawn")
    if group.credential_policy == DeviceGroup.CredentialPolicy.MTLS:
        clients = OAuthClient.objects.filter(status=OAuthClient.Status.ACTIVE).filter(
            models.Q(group=group) | models.Q(device__group=group)
        )
        _revoke_oauth_clients(actor, clients)


def group_delete(*, actor: Actor, group: DeviceGroup) -> None:
    count = group.devices.count()
    if count:
        raise Conflict(f"Device group '{group.slug}' still has {count} device(s); move or delete them first.")
    with transaction.atomic():
        audit_record(actor=actor, tenant=group.tenant, action="group.delete", obj=group, before=snapshot(group))
        _revoke_oauth_clients(actor, group.oauth_clients.all())
        rights_changed(tenant_id=group.tenant_id, groups=[group.pk])
        group.delete()


# -- devices ----------------------------------------------------------------------------


def _own_group(tenant: Tenant, group: Any, pointer: str = "/group") -> DeviceGroup:
    """A group reference (id, slug or object) inside ``tenant`` only."""
    if isinstance(group, DeviceGroup):
        group = group.pk
    lookup: dict[str, int | str] = {"pk": group} if isinstance(group, int) else {"slug": str(group)}
    found = selectors.group_list(scope=Scope.of_tenant(tenant)).filter(**lookup).first()
    if found is None:
        raise InvalidInput(
            f"No device group '{group}' in tenant '{tenant.slug}'.",
            fields=[{"pointer": pointer, "code": "does_not_exist", "message": "No such device group in this tenant."}],
        )
    return found


def _check_quota(tenant: Tenant, adding: int) -> None:
    """Call inside the writing transaction: the tenant row lock (PostgreSQL) or the
    IMMEDIATE transaction (SQLite) makes concurrent imports count one after the other."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    current = selectors.device_list(scope=Scope.of_tenant(tenant)).count()
    if current + adding > tenant.max_devices:
        raise QuotaExceeded(
            f"Tenant '{tenant.slug}' may have {tenant.max_devices} devices; it has {current} and this adds {adding}."
        )


def _check_labels(labels: Any, pointer: str) -> None:
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidInput(
            "Labels must be an object of string keys to string values.",
            fields=[{"pointer": pointer, "code": "invalid_labels", "message": "Must map strings to strings."}],
        )


def device_create(*, actor: Actor, tenant: Tenant, group: Any, device_id: str, labels: Any = None,
                  status: str = Device.Status.ACTIVE) -> Device:  # fmt: skip
    labels = {} if labels is None else labels
    _check_labels(labels, "/labels")
    device = Device(tenant=tenant, group=_own_group(tenant, group), device_id=device_id, labels=labels, status=status)
    same_id = selectors.device_list(scope=Scope.of_tenant(tenant)).filter(device_id=device_id)
    _refuse_duplicate(same_id, "/device_id", f"Device '{device_id}'")
    try:
        validate_model(device)
    except InvalidInput:
        # A concurrent request created the same id since the check above (seen racing on
        # PostgreSQL): the same field error, not the model's whole-object one.
        _refuse_duplicate(same_id, "/device_id", f"Device '{device_id}'")
        raise
    try:
        with transaction.atomic():
            _check_quota(tenant, 1)
            device.save()
            audit_record(actor=actor, tenant=tenant, action="device.create", obj=device, after=snapshot(device))
    except IntegrityError:  # created by a concurrent request between the check and the insert
        raise _duplicate("/device_id", f"Device '{device_id}'") from None
    return device


def device_update(*, actor: Actor, device: Device, **changes: Any) -> Device:
    before = snapshot(device)
    if "group" in changes:
        changes["group"] = _own_group(device.tenant, changes["group"])
    if "labels" in changes:
        _check_labels(changes["labels"], "/labels")
    _apply(device, changes, DEVICE_MUTABLE, "device")
    validate_model(device)
    with transaction.atomic():
        device.save()
        audit_record(actor=actor, tenant=device.tenant, action="device.update", obj=device, before=before,
                     after=snapshot(device))  # fmt: skip
        # A device client's Kafka principal names the device's group: the one it left loses its grant.
        left = (
            DeviceGroup.objects.filter(pk=before["group_id"]).first() if device.group_id != before["group_id"] else None
        )
        rights_changed(tenant_id=device.tenant_id, devices=[device.pk],
                       kafka_principals=_client_principals(device, left) if left is not None else ())  # fmt: skip
        # A disabled device or one that left its group (its certificate names the old group)
        # has its certificates revoked: stopped at nginx by the CRL, on Kafka by its ACLs.
        if device.status != Device.Status.ACTIVE and before["status"] == Device.Status.ACTIVE:
            _revoke_credentials(actor, device, "certificate_hold")
        elif device.group_id != before["group_id"]:
            _revoke_credentials(actor, device, "affiliation_changed")
    return device


def _client_principals(device: Device, group: DeviceGroup) -> list[str]:
    """The Kafka principals the device's OAuth clients had while it was in ``group``."""
    return [credential_principal(tenant=device.tenant.slug, group=group.slug, credential_id=client_id)
            for client_id in device.oauth_clients.values_list("client_id", flat=True)]  # fmt: skip


def _revoke_credentials(actor: Actor, device: Device, reason: str) -> None:
    device_certificates_withdrawn(actor=actor, device=device, reason=reason)


def _revoke_oauth_clients(actor: Actor, clients: Any) -> None:
    """The rows go with their device or group (cascade); revoking them first leaves the
    audit trail every credential action gets."""
    for client in clients:
        oauth_client_revoke(actor=actor, client=client)


def device_delete(*, actor: Actor, device: Device) -> None:
    with transaction.atomic():
        audit_record(actor=actor, tenant=device.tenant, action="device.delete", obj=device, before=snapshot(device))
        _revoke_credentials(actor, device, "cessation_of_operation")
        _revoke_oauth_clients(actor, device.oauth_clients.all())
        rights_changed(tenant_id=device.tenant_id, devices=[device.pk])
        device.delete()


def device_bulk_import(*, actor: Actor, tenant: Tenant, rows: list[dict[str, Any]]) -> list[Device]:
    """Import many devices at once, all or nothing: every row is checked first and every
    problem is reported with its row's JSON pointer; only a clean batch is written."""
    limit = settings.SLUICE_BULK_IMPORT_MAX_ROWS
    if len(rows) > limit:
        raise PayloadTooLarge(f"A bulk import takes at most {limit} devices; this one has {len(rows)}.")
    if not rows:
        raise InvalidInput("The import has no rows.")
    scope = Scope.of_tenant(tenant)
    groups = {g.slug: g for g in selectors.group_list(scope=scope)}
    existing = set(selectors.device_list(scope=scope).filter(device_id__in=[str(r.get("device_id", "")) for r in rows])
                   .values_list("device_id", flat=True))  # fmt: skip
    errors: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    devices: list[Device] = []
    allowed = {"device_id", "group", "labels", "status"}
    for index, row in enumerate(rows):
        pointer = f"/rows/{index}"
        if not isinstance(row, dict):
            errors.append({"pointer": pointer, "code": "invalid", "message": "Each row must be an object."})
            continue
        for key in sorted(set(row) - allowed):
            errors.append(
                {"pointer": f"{pointer}/{key}", "code": "unknown_field", "message": f"Unknown field '{key}'."}
            )
        device_id = str(row.get("device_id") or "")
        group = groups.get(str(row.get("group") or ""))
        if group is None:
            errors.append({"pointer": f"{pointer}/group", "code": "does_not_exist",
                           "message": f"No device group '{row.get('group')}' in this tenant."})  # fmt: skip
        if device_id in seen:
            errors.append({"pointer": f"{pointer}/device_id", "code": "duplicate",
                           "message": f"'{device_id}' is also in row {seen[device_id]}."})  # fmt: skip
        elif device_id in existing:
            errors.append({"pointer": f"{pointer}/device_id", "code": "unique",
                           "message": f"Device '{device_id}' already exists."})  # fmt: skip
        seen.setdefault(device_id, index)
        labels = row.get("labels") or {}
        try:
            _check_labels(labels, f"{pointer}/labels")
        except InvalidInput as exc:
            errors += exc.fields
            labels = {}
        device = Device(tenant=tenant, group=group, device_id=device_id, labels=labels,
                        status=row.get("status") or Device.Status.ACTIVE)  # fmt: skip
        try:
            device.full_clean(exclude=["group", "tenant"], validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            errors += from_django(exc, pointer).fields
        devices.append(device)
    if errors:
        bad_rows = len({e["pointer"].split("/")[2] for e in errors})
        raise InvalidInput(f"{bad_rows} row(s) are invalid; nothing was imported.", fields=errors)
    try:
        with transaction.atomic():
            _check_quota(tenant, len(devices))
            created = Device.objects.bulk_create(devices, batch_size=1000)
            audit_record(actor=actor, tenant=tenant, action="device.bulk_import", object_type="devices.device",
                         object_repr=f"{len(created)} devices",
                         after={"count": len(created), "device_ids": [d.device_id for d in created]})  # fmt: skip
    except IntegrityError:
        raise Conflict("Some of these devices were created meanwhile by another request; nothing was imported. "
                       "Retry to see which.", code="unique") from None  # fmt: skip
    return created


# -- consumers -------------------------------------------------------------------------------


def _own_streams(tenant: Tenant, streams: Any) -> list[Stream]:
    """Stream ids (or objects) inside ``tenant`` only, each missing one named by its index."""
    if isinstance(streams, str | bytes | dict) or not isinstance(streams, Iterable):
        field = {"pointer": "/streams", "code": "not_a_list", "message": "A list of stream ids."}
        raise InvalidInput("streams is a list of stream ids.", fields=[field])
    ids = [s.pk if isinstance(s, Stream) else s for s in streams]
    found = {s.pk: s for s in selectors.stream_list(scope=Scope.of_tenant(tenant)).filter(pk__in=ids)}
    missing = [{"pointer": f"/streams/{i}", "code": "does_not_exist", "message": "No such stream in this tenant."}
               for i, stream_id in enumerate(ids) if stream_id not in found]  # fmt: skip
    if missing:
        raise InvalidInput("Some streams do not exist in this tenant.", fields=missing)
    return [found[i] for i in dict.fromkeys(ids)]


def _check_grant(all_streams: bool, streams: list[Stream]) -> None:
    if all_streams and streams:
        message = "Choose all_streams or a list of streams, not both."
        raise InvalidInput(message, fields=[{"pointer": "/streams", "code": "all_streams_granted", "message": message}])


def consumer_principals(consumer: Consumer) -> list[str]:
    """The Kafka principals of every credential of ``consumer`` that may hold a grant."""
    usable = ("active", "superseded")
    principals = list(consumer.certificates.filter(status__in=usable)
                      .exclude(kafka_principal="").values_list("kafka_principal", flat=True))  # fmt: skip
    principals += [consumer_principal(tenant=consumer.tenant.slug, consumer=consumer.slug, credential_id=client_id)
                   for client_id in consumer.oauth_clients.filter(status=OAuthClient.Status.ACTIVE)
                   .values_list("client_id", flat=True)]  # fmt: skip
    return principals


def _consumer_view(consumer: Consumer) -> dict[str, Any]:
    return {**snapshot(consumer), "streams": sorted(s.topic for s in consumer.streams.all())}


def consumer_create(
    *,
    actor: Actor,
    tenant: Tenant,
    slug: str,
    name: str = "",
    all_streams: bool | None = None,
    streams: Any = None,
    dead_letters: bool = False,
    status: str = Consumer.Status.ACTIVE,
) -> Consumer:
    """A new consumer of ``tenant``: no credentials yet, so nothing on Kafka changes until one
    is issued.  ``all_streams`` defaults to true unless ``streams`` is given (even empty)."""
    granted = _own_streams(tenant, streams) if streams is not None else []
    every = streams is None if all_streams is None else all_streams
    _check_grant(every, granted)
    consumer = Consumer(tenant=tenant, slug=slug, name=name, all_streams=every, dead_letters=dead_letters,
                        status=status)  # fmt: skip
    _refuse_duplicate(Consumer.objects.filter(tenant=tenant, slug=slug), "/slug", f"Consumer '{slug}'")
    validate_model(consumer)
    with transaction.atomic():
        consumer.save()
        consumer.streams.set(granted)
        audit_record(actor=actor, tenant=tenant, action="consumer.create", obj=consumer, after=_consumer_view(consumer))
    return consumer


def consumer_update(*, actor: Actor, consumer: Consumer, **changes: Any) -> Consumer:
    """Change what a consumer reads or whether it may read at all: its credentials' grants
    follow at the commit (disabling it takes every grant away; enabling gives them back)."""
    before = _consumer_view(consumer)
    streams = _own_streams(consumer.tenant, changes.pop("streams")) if "streams" in changes else None
    _apply(consumer, changes, CONSUMER_MUTABLE, "consumer")
    if streams is not None and "all_streams" not in changes:
        consumer.all_streams = False  # naming streams (even none) narrows an all-streams consumer to them
    if consumer.all_streams and streams is None:
        streams = []  # widening to all streams forgets the selection
    _check_grant(consumer.all_streams, streams if streams is not None else list(consumer.streams.all()))
    validate_model(consumer)
    with transaction.atomic():
        consumer.save()
        if streams is not None:
            consumer.streams.set(streams)
        audit_record(actor=actor, tenant=consumer.tenant, action="consumer.update", obj=consumer, before=before,
                     after=_consumer_view(consumer))  # fmt: skip
        rights_changed(tenant_id=consumer.tenant_id, kafka_principals=consumer_principals(consumer))
    return consumer


def consumer_delete(*, actor: Actor, consumer: Consumer) -> None:
    """Delete a consumer: its certificates are revoked (CRL), its OAuth clients revoked then
    removed with it, and every grant of its credentials leaves Kafka at the commit."""
    with transaction.atomic():
        principals = consumer_principals(consumer)
        audit_record(actor=actor, tenant=consumer.tenant, action="consumer.delete", obj=consumer,
                     before=_consumer_view(consumer))  # fmt: skip
        consumer_certificates_withdrawn(actor=actor, consumer=consumer, reason="cessation_of_operation")
        _revoke_oauth_clients(actor, consumer.oauth_clients.all())
        rights_changed(tenant_id=consumer.tenant_id, kafka_principals=principals)
        consumer.delete()
