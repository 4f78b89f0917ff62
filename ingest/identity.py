"""Who writes, and where to: everything ingest needs about a request's certificate, device,
group, stream and tenant, read fresh from the database in **one** query per request.

Ingest re-reads identity on every request (a revocation or suspension applies at the next
one), so this read is on the hot path of every request.  Building that query through the
ORM costs about 1 ms of CPU per request (compiling a five-table join), against some 50 µs
to run it.  So each lookup is compiled by the ORM once per process (``CompiledLookup``:
the same SQL, the same database converters) and then only executed, with the request's
value as its one parameter.  The rows are as fresh as before: only the SQL text is reused.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import QuerySet

from certs.models import Certificate
from devices.models import Device, Stream
from tenants.models import Tenant


class CompiledLookup:
    """A ``values_list`` query the ORM compiles once per database alias, then run with new
    parameter values: ``build(*sentinels)`` must return the queryset, and its SQL must take
    exactly the sentinels as parameters, each once, in any order (checked when compiling, so
    a query whose SQL would embed anything else fails loudly rather than run with wrong
    values)."""

    def __init__(self, build: Callable[..., QuerySet[Any, Any]], sentinels: Sequence[object]) -> None:
        self._build = build
        self._sentinels = tuple(sentinels)
        self._compiled: dict[str, tuple[str, list[int], Any, list[Any]]] = {}
        self._lock = threading.Lock()

    def _compile(self, using: str) -> tuple[str, list[int], Any, list[Any]]:
        with self._lock:
            compiled = self._compiled.get(using)
            if compiled is None:
                compiler = self._build(*self._sentinels).query.get_compiler(using=using)
                sql, params = compiler.as_sql()
                if sorted(map(repr, params)) != sorted(map(repr, self._sentinels)):
                    raise RuntimeError(f"compiled lookup takes parameters {params!r}, not {self._sentinels!r}")
                order = [self._sentinels.index(param) for param in params]
                selected = [column[0] for column in compiler.select[: compiler.col_count]]
                compiled = (sql, order, compiler, compiler.get_converters(selected))
                self._compiled[using] = compiled
            return compiled

    def first(self, *values: object, using: str = DEFAULT_DB_ALIAS) -> tuple[Any, ...] | None:
        """The first row for ``values`` (converted as the ORM would), or None."""
        sql, order, compiler, converters = self._compiled.get(using) or self._compile(using)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, [values[i] for i in order])
            row = cursor.fetchone()
        if row is None:
            return None
        if converters:
            (row,) = compiler.apply_converters([row], converters)
        return tuple(row)


@dataclass(frozen=True, slots=True)
class Writer:
    """A device that may be allowed to write, with its group, stream and tenant as read now.

    The attribute names follow the models (``device_id`` is the device's own id, ``pk``
    its database key)."""

    pk: int
    device_id: str
    status: str
    tenant_id: int
    tenant_slug: str
    tenant_status: str
    tenant_max_records_per_second: int
    tenant_max_bytes_per_second: int
    group_slug: str
    group_tenant_id: int
    credential_policy: str
    rate_limit_per_second: int
    schema_subject: str
    stream_tenant_id: int
    topic: str

    @classmethod
    def from_device(cls, device: Device) -> Writer:
        """From a model instance (with ``tenant`` and ``group__stream__tenant`` loaded)."""
        group, tenant = device.group, device.tenant
        return cls(device.pk, device.device_id, device.status, device.tenant_id, tenant.slug, tenant.status,
                   tenant.max_records_per_second, tenant.max_bytes_per_second, group.slug, group.tenant_id,
                   group.credential_policy, group.rate_limit_per_second, group.schema_subject,
                   group.stream.tenant_id, group.stream.topic)  # fmt: skip


# The device, group, stream and tenant columns of a Writer, relative to a Device.
_DEVICE_FIELDS = ("pk", "device_id", "status", "tenant_id", "tenant__slug", "tenant__status",
                  "tenant__max_records_per_second", "tenant__max_bytes_per_second", "group__slug",
                  "group__tenant_id", "group__credential_policy", "group__rate_limit_per_second",
                  "group__schema_subject", "group__stream__tenant_id", "group__stream__tenant__slug",
                  "group__stream__region", "group__stream__type", "group__stream__retention_class")  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _topic(tenant_slug: str, region: str, type_: str, retention_class: str) -> str:
    # The model's own rule (Stream.topic), applied to the values read in this request; only
    # the derivation is cached, never what it is derived from.
    return Stream(tenant=Tenant(slug=tenant_slug), region=region, type=type_, retention_class=retention_class).topic


def _writer(row: Sequence[Any]) -> Writer:
    *fields, stream_tenant_slug, region, type_, retention_class = row
    return Writer(*fields, topic=_topic(stream_tenant_slug, region, type_, retention_class))


@dataclass(frozen=True, slots=True)
class CertificateRow:
    """The columns of a Certificate that ingest checks (same names as the model's)."""

    status: str
    revoked_at: dt.datetime | None
    overlap_until: dt.datetime | None
    not_after: dt.datetime
    serial: str
    tenant_id: int
    device_id: int | None


_CERTIFICATE_FIELDS = ("status", "revoked_at", "overlap_until", "not_after", "serial", "tenant_id", "device_id")
_FINGERPRINT = "\x00sluice-fingerprint"
_TENANT_SLUG = "\x00sluice-tenant"
_DEVICE_ID = "\x00sluice-device"

_by_fingerprint = CompiledLookup(
    lambda fingerprint: Certificate.objects.filter(fingerprint_sha256=fingerprint).values_list(
        *_CERTIFICATE_FIELDS, *(f"device__{name}" for name in _DEVICE_FIELDS)
    )[:1],
    [_FINGERPRINT],
)
_by_device_id = CompiledLookup(
    lambda tenant, device_id: Device.objects.filter(tenant__slug=tenant, device_id=device_id).values_list(
        *_DEVICE_FIELDS
    )[:1],
    [_TENANT_SLUG, _DEVICE_ID],
)


def certificate_writer(fingerprint_sha256: str) -> tuple[CertificateRow, Writer | None] | None:
    """The certificate with this fingerprint and its device (None when the certificate has
    no device any more), in one query; None when no certificate has this fingerprint."""
    row = _by_fingerprint.first(fingerprint_sha256)
    if row is None:
        return None
    split = len(_CERTIFICATE_FIELDS)
    certificate = CertificateRow(*row[:split])
    return certificate, (_writer(row[split:]) if certificate.device_id is not None else None)


def device_writer_by_id(*, tenant_slug: str, device_id: str) -> Writer | None:
    row = _by_device_id.first(tenant_slug, device_id)
    return None if row is None else _writer(row)
