"""The Kafka client quotas the tenancy model implies: pure, like ``ingest.acls``.

Every principal that holds a Kafka-direct grant (one per usable credential, see
``ingest.acls``) gets a user quota from its tenant's plan, so one device cannot take a
broker's bandwidth or threads from the rest:

* ``producer_byte_rate`` -- bytes per second the principal may produce, per broker; past
  it the broker delays its responses (and mutes its connection) until it is back under the
  rate (KIP-13);
* ``consumer_byte_rate`` -- for a consumer's credentials (``<tenant>.consumers.<consumer>.<id>``)
  instead of ``producer_byte_rate``: bytes per second it may fetch, per broker;
* ``request_percentage`` -- the share of one broker thread (network + I/O) its requests
  may use, in percent per quota window (KIP-124).

Quota entities are user names without ``User:`` (``<tenant>.<group>.<id>``).  Sluice owns
those in its principal namespace; a quota on any other entity (the platform's own, a
``<default>`` user quota, client ids) is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ingest.acls import consumer_principal_parts, managed_principal_tenant

PRODUCER_BYTE_RATE = "producer_byte_rate"
CONSUMER_BYTE_RATE = "consumer_byte_rate"
REQUEST_PERCENTAGE = "request_percentage"
PRODUCER_KEYS = (PRODUCER_BYTE_RATE, REQUEST_PERCENTAGE)
CONSUMER_KEYS = (CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE)


def quota_keys(entity: str) -> tuple[str, ...]:
    """The keys Sluice sets on ``entity`` (a consumer's or a producer's); any other key on it
    (an operator's ``consumer_byte_rate`` on a producer, say) is left alone."""
    return CONSUMER_KEYS if consumer_principal_parts(f"User:{entity}") else PRODUCER_KEYS


Quotas = dict[str, float]  # quota key -> value


@dataclass(frozen=True)
class QuotaPlan:
    """What a tenant's plan allows each of its Kafka-direct credentials."""

    producer_byte_rate: int
    request_percentage: float
    consumer_byte_rate: int = 2 * 2**20

    def values(self, principal: str = "") -> Quotas:
        """A producer's quotas, or a consumer's for a consumer principal."""
        if consumer_principal_parts(principal):
            return {CONSUMER_BYTE_RATE: float(self.consumer_byte_rate),
                    REQUEST_PERCENTAGE: float(self.request_percentage)}  # fmt: skip
        return {PRODUCER_BYTE_RATE: float(self.producer_byte_rate), REQUEST_PERCENTAGE: float(self.request_percentage)}


def user_entity(principal: str) -> str:
    """The quota entity name of a principal (``User:acme.x.y`` -> ``acme.x.y``)."""
    return principal.removeprefix("User:")


def managed_entity_tenant(entity: str) -> str | None:
    """The tenant (by slug) whose namespace the user quota entity ``entity`` lies in."""
    return managed_principal_tenant(f"User:{entity}")


def desired_quotas(principals: Iterable[str], plan: QuotaPlan) -> dict[str, Quotas]:
    """Entity -> quotas for every principal that holds a Kafka-direct grant."""
    return {user_entity(p): plan.values(p) for p in sorted(set(principals))}


@dataclass(frozen=True)
class QuotaChanges:
    """What makes ``existing`` equal ``desired``: values to set per entity, keys to remove."""

    set: dict[str, Quotas]
    remove: dict[str, tuple[str, ...]]

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)


def quota_changes(existing: dict[str, Quotas], desired: dict[str, Quotas]) -> QuotaChanges:
    """The difference, over Sluice's keys only (a key Sluice does not set is left alone)."""
    to_set: dict[str, Quotas] = {}
    to_remove: dict[str, tuple[str, ...]] = {}
    for entity in sorted(set(existing) | set(desired)):
        have = {k: v for k, v in existing.get(entity, {}).items() if k in quota_keys(entity)}
        want = desired.get(entity, {})
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        gone = tuple(sorted(k for k in have if k not in want))
        if changed:
            to_set[entity] = changed
        if gone:
            to_remove[entity] = gone
    return QuotaChanges(set=to_set, remove=to_remove)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def describe_quota(entity: str, quotas: Quotas) -> str:
    """One line for reports and the audit log, e.g.
    ``QUOTA user=acme.sensors.crt_1 producer_byte_rate=1048576 request_percentage=10``."""
    values = " ".join(f"{k}={_number(quotas[k])}" for k in sorted(quotas))
    return f"QUOTA user={entity} {values}".rstrip()
