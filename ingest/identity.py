"""Who writes, and where to: the data plane's per-worker cache of identities.

A request names its credential (the client certificate nginx verified, by serial number,
or an OAuth2 client through its access token); ingest needs that credential's state and its
device, group, stream and tenant as the database has them.  Reading them on every request
would cost a query per request, so each worker keeps what it read in an ``IdentityCache``:

* every change that can take a right away is pushed to all workers at once
  (``tenants.rights``: published on Redis after the commit; ``ingest.rights_listener``
  applies it here), and each entry names the scopes it depends on (tenant, group, device,
  certificate serial, OAuth client) so a change drops exactly the entries it touches;
* every entry also expires after ``IDENTITY_TTL`` seconds, a backstop for a lost message;
* while the worker is not subscribed (starting, or its Redis connection broke) the cache
  is ``live = False``: nothing is served from it and nothing is stored, so every request
  re-reads the database until the subscription is back (fail closed: never a stale grant);
* while the database is unreachable, a worker keeps answering for the credentials it read
  before, for up to ``STALE_GRACE`` seconds past their TTL (``IdentityCache.stale``): no
  right can change while the database is down (every change is a database write, pushed
  after its commit), and the subscription must still be live; a credential it has not
  read gets a 503 ``database_unavailable``;
* a read that raced with a change (the change arrived while the database was being read)
  is used for its own request, as a per-request read would be, but never stored.

Only facts are cached, never verdicts: whether a credential may write *now* (expiry,
renewal overlap) is decided per request from the cached rows (``ingest.services``).
The loaders below are the only place the data plane reads the database for identity.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections

from certs.models import Certificate
from devices.models import Device
from tenants.models import dlq_topic
from tenants.oauth.models import OAuthClient
from tenants.rights import RightsChange

IDENTITY_TTL = 30.0  # seconds: the backstop; pushed changes apply within milliseconds
# seconds past an entry's TTL during which it still answers while the database is unreachable
# (the TTL's backstop for a lost push message is stretched by at most this much)
STALE_GRACE = 300.0
MAX_ENTRIES = 200_000  # per worker; a full cache is cleared rather than grown


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True, slots=True)
class Writer:
    """A device that may be allowed to write, with its group, stream and tenant as read.

    ``headers`` and ``key`` are what every record of this device carries to Kafka (the
    request id header is added per request)."""

    pk: int
    device_id: str
    status: str
    tenant_id: int
    tenant_slug: str
    tenant_status: str
    tenant_max_records_per_second: int
    tenant_max_bytes_per_second: int
    group_id: int
    group_slug: str
    group_tenant_id: int
    credential_policy: str
    rate_limit_per_second: int
    schema_subject: str
    stream_tenant_id: int
    topic: str
    # Computed once (the writer is cached): what every record of this device carries.
    key: bytes = field(init=False, compare=False)
    identity_headers: tuple[tuple[str, bytes], ...] = field(init=False, compare=False)
    dead_letter_topic: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.device_id.encode())
        object.__setattr__(self, "dead_letter_topic", dlq_topic(self.tenant_slug))
        object.__setattr__(self, "identity_headers", (
            ("sluice-tenant", self.tenant_slug.encode()),
            ("sluice-group", self.group_slug.encode()),
            ("sluice-device", self.device_id.encode()),
        ))  # fmt: skip

    @classmethod
    def from_device(cls, device: Device) -> Writer:
        """From a model instance with ``tenant`` and ``group__stream__tenant`` loaded."""
        group, tenant, stream = device.group, device.tenant, device.group.stream
        return cls(
            pk=device.pk,
            device_id=device.device_id,
            status=device.status,
            tenant_id=device.tenant_id,
            tenant_slug=tenant.slug,
            tenant_status=tenant.status,
            tenant_max_records_per_second=tenant.max_records_per_second,
            tenant_max_bytes_per_second=tenant.max_bytes_per_second,
            group_id=group.pk,
            group_slug=group.slug,
            group_tenant_id=group.tenant_id,
            credential_policy=group.credential_policy,
            rate_limit_per_second=group.rate_limit_per_second,
            schema_subject=group.schema_subject,
            stream_tenant_id=stream.tenant_id,
            topic=stream.topic,
        )

    def scopes(self) -> tuple[tuple[str, Any], ...]:
        return (("tenant", self.tenant_id), ("group", self.group_id), ("device", self.pk))


@dataclass(frozen=True, slots=True)
class CertificateGrant:
    """The columns of a Certificate that ingest checks, times as epoch seconds."""

    serial: str
    status: str
    revoked_at: float | None
    overlap_until: float | None
    not_after: float
    tenant_id: int
    device_pk: int | None
    issuer: str  # the issuing CA's subject (RFC 4514), to match what nginx saw
    consumer: bool = False  # a consumer's certificate: it reads, it never writes


@dataclass(frozen=True, slots=True)
class ClientGrant:
    """The columns of an OAuthClient that ingest checks."""

    client_id: str
    status: str
    kind: str
    scopes: frozenset[str]
    tenant_id: int
    tenant_slug: str
    device_pk: int | None


@dataclass(frozen=True, slots=True)
class Identity:
    """A credential and the device it speaks for (None: no device any more)."""

    grant: CertificateGrant | ClientGrant
    writer: Writer | None


# -- the loaders: the data plane's only identity reads ----------------------------------

_WRITER_RELATED = ("tenant", "group__stream__tenant")


def load_certificate(serial: str) -> Identity | None:
    """The certificate with this serial (lowercase hex, no leading zeros) and its device."""
    row = (
        Certificate.objects.select_related("ca", *(f"device__{name}" for name in _WRITER_RELATED))
        .filter(serial=serial)
        .first()
    )
    if row is None:
        return None
    grant = CertificateGrant(
        serial=row.serial,
        status=row.status,
        revoked_at=_epoch(row.revoked_at),
        overlap_until=_epoch(row.overlap_until),
        not_after=row.not_after.timestamp(),
        tenant_id=row.tenant_id,
        device_pk=row.device_id,
        issuer=row.ca.subject,
        consumer=row.consumer_id is not None,
    )
    return Identity(grant, Writer.from_device(row.device) if row.device is not None else None)


def load_client(*, client_id: str, tenant_slug: str) -> Identity | None:
    """The OAuth client with this id in this tenant, and its device (device clients)."""
    row = (
        OAuthClient.objects.select_related("tenant", *(f"device__{name}" for name in _WRITER_RELATED))
        .filter(client_id=client_id, tenant__slug=tenant_slug)
        .first()
    )
    if row is None:
        return None
    grant = ClientGrant(
        client_id=row.client_id,
        status=row.status,
        kind=row.kind,
        scopes=frozenset(row.scopes),
        tenant_id=row.tenant_id,
        tenant_slug=row.tenant.slug,
        device_pk=row.device_id,
    )
    return Identity(grant, Writer.from_device(row.device) if row.device is not None else None)


def load_device(*, tenant_slug: str, device_id: str) -> Writer | None:
    """The device ``device_id`` of the tenant ``tenant_slug`` as a writer (the MQTT bridge:
    a message's topic names its device; mqtt_auth judged its credential at publish)."""
    row = Device.objects.select_related(*_WRITER_RELATED).filter(tenant__slug=tenant_slug, device_id=device_id).first()
    return Writer.from_device(row) if row is not None else None


# -- the cache -----------------------------------------------------------------------------


def certificate_key(serial: str) -> tuple[str, str]:
    return ("certificate", serial)


def client_key(client_id: str) -> tuple[str, str]:
    return ("client", client_id)


def identity_scopes(identity: Identity) -> tuple[tuple[str, Any], ...]:
    grant = identity.grant
    own: tuple[tuple[str, Any], ...]
    if isinstance(grant, CertificateGrant):
        own = (("certificate", grant.serial), ("tenant", grant.tenant_id))
    else:
        own = (("client", grant.client_id), ("tenant", grant.tenant_id))
    if grant.device_pk is not None:
        own += (("device", grant.device_pk),)
    return own + (identity.writer.scopes() if identity.writer is not None else ())


def change_scopes(change: RightsChange) -> Iterable[tuple[str, Any]]:
    if change.whole_tenant:
        yield ("tenant", change.tenant_id)
    yield from (("group", g) for g in change.groups)
    yield from (("device", d) for d in change.devices)
    yield from (("certificate", s) for s in change.certificates)
    yield from (("client", c) for c in change.clients)


@dataclass(slots=True)
class _Entry:
    identity: Identity | None  # None: the credential is unknown to the database
    expires: float
    scopes: tuple[tuple[str, Any], ...]


class IdentityCache:
    """Identities by credential key, dropped by scope (see the module docstring).  Used from
    one event loop only (no locks): loaders run in threads, but ``get``/``put``/``apply``
    run on the loop."""

    def __init__(self, *, ttl: float = IDENTITY_TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.live = False
        self.generation = 0
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._by_scope: dict[tuple[str, Any], set[tuple[str, str]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str], now: float | None = None) -> _Entry | None:
        """The entry for ``key`` if it may be used now (the cache is live and it has not
        expired); an entry holding ``identity=None`` means "unknown credential"."""
        if not self.live:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= (time.monotonic() if now is None else now):
            return None  # kept for ``stale`` until it is read again or dropped by a change
        return entry

    def stale(self, key: tuple[str, str], now: float | None = None) -> _Entry | None:
        """The entry for ``key`` even if its TTL ran out (by at most ``STALE_GRACE``), while
        the cache is live: what a worker may answer with while the database is unreachable.
        Entries dropped by a pushed change, or by losing the subscription, are gone."""
        entry = self._entries.get(key) if self.live else None
        if entry is None or entry.expires + STALE_GRACE <= (time.monotonic() if now is None else now):
            return None
        return entry

    def put(self, key: tuple[str, str], identity: Identity | None, *, read_at_generation: int) -> None:
        """Keep what a loader read, unless the cache is not live or a change arrived
        while it was reading (``read_at_generation`` is ``generation`` before the read)."""
        if not self.live or read_at_generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self.clear()  # a crude but safe bound: everything is re-read on demand
        if key in self._entries:
            self._drop(key)
        scopes = identity_scopes(identity) if identity is not None else ((key[0], key[1]),)
        self._entries[key] = _Entry(identity, time.monotonic() + self.ttl, scopes)
        for scope in scopes:
            self._by_scope.setdefault(scope, set()).add(key)

    def apply(self, change: RightsChange) -> int:
        """Drop every entry in the scopes ``change`` names; returns how many were dropped."""
        self.generation += 1
        dropped = 0
        for scope in change_scopes(change):
            for key in self._by_scope.pop(scope, ()):
                dropped += self._drop(key)
        return dropped

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_scope.clear()

    def set_live(self, live: bool) -> None:
        """Going live or losing the subscription both start from an empty cache: changes
        published while nobody listened are unknown."""
        self.clear()
        self.live = live

    def _drop(self, key: tuple[str, str]) -> int:
        entry = self._entries.pop(key, None)
        if entry is None:
            return 0
        for scope in entry.scopes:
            keys = self._by_scope.get(scope)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_scope[scope]
        return 1


def _with_connection(load: Callable[[], Any]) -> Any:
    close_old_connections()
    return load()


async def read(load: Callable[[], Any]) -> Any:
    """Run a database read on a worker thread, dropping a connection an earlier error left
    unusable (what Django does around a request)."""
    return await asyncio.to_thread(_with_connection, load)
