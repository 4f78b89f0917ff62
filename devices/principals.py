"""The Kafka principal names of a device group's credentials (``User:<tenant>.<group>`` and
``User:<tenant>.<group>.<credential id>``) and of a consumer's
(``User:<tenant>.consumers.<consumer>.<credential id>``), and the consumer groups a consumer
owns (``<tenant>.<consumer>.``).  Pure strings, here because groups and consumers own them
and both layers above need them: ``certs.principals`` (certificate subjects that map to
them) and ``ingest.acls`` (the grants that name them).  A consumer's principal has four
parts and a group credential's three (slugs never hold a dot), so neither can be taken for
the other whatever the slugs.  Credential ids are never reused (random, 96
bits), so a principal can never come back to life for a new owner of the same slugs."""

from __future__ import annotations

import re

# Certificate ids (crt_<24 hex>) and OAuth client ids (sc_<24 hex>).
CREDENTIAL_ID = "[a-z0-9][a-z0-9_]{0,63}"
CREDENTIAL_ID_PATTERN = re.compile(rf"^{CREDENTIAL_ID}$")


def group_principal(*, tenant: str, group: str) -> str:
    """The principal certificates of ``group`` issued before credential ids map to (no ACL
    names it), and the prefix (plus ``.``) of every credential principal of the group."""
    return f"User:{tenant}.{group}"


def credential_principal(*, tenant: str, group: str, credential_id: str) -> str:
    """The Kafka principal of one credential (a certificate or an OAuth client) of ``group``."""
    if not CREDENTIAL_ID_PATTERN.match(credential_id):
        raise ValueError(f"not a credential id: {credential_id!r}")
    return f"{group_principal(tenant=tenant, group=group)}.{credential_id}"


CONSUMERS = "consumers"  # the fixed second part of every consumer principal


def consumer_principal(*, tenant: str, consumer: str, credential_id: str) -> str:
    """The Kafka principal of one credential (a certificate or an OAuth client) of a
    tenant's consumer (a backend that reads the tenant's streams)."""
    if not CREDENTIAL_ID_PATTERN.match(credential_id):
        raise ValueError(f"not a credential id: {credential_id!r}")
    return f"User:{tenant}.{CONSUMERS}.{consumer}.{credential_id}"


def consumer_group_prefix(*, tenant: str, consumer: str) -> str:
    """The Kafka consumer-group ids a consumer owns start with this (``<tenant>.<consumer>.``)."""
    return f"{tenant}.{consumer}."
