"""How certificate subjects and tokens become Kafka principals: the one definition of the naming.

Platform certificates are ``CN=<name>,O=Sluice Platform``.  Device certificates name their
tenant, group and device, and (since per-credential principals) their own credential id:
``UID=<id>,CN=<device>,OU=<group>,O=<tenant>`` in RFC 2253 form, the string Kafka's
``ssl.principal.mapping.rules`` sees (slug values are ``[a-z0-9-]``, ids ``[a-z0-9_]``, so
nothing is confused with the platform's names, which hold a space).  The rules turn them into:

* ``User:<name>`` for platform certificates (``broker``, ``sluice-admin``);
* ``User:<tenant>.<group>.<id>`` for device certificates with a credential id: Kafka-direct
  grants are per credential (``ingest.acls``), so ending one certificate's right is one ACL
  change that reaches an already-open connection at its next request;
* ``User:<tenant>.consumers.<consumer>.<id>`` for a consumer's certificates, whose subject
  is ``UID=<id>,CN=<consumer>,O=<tenant>`` (no ``OU``: it names no device group, so the
  device rule cannot take it, nor the consumer rule a device's);
* ``User:<tenant>.<group>`` for device certificates issued before credential ids existed.
  That principal gets no ACL any more: such certificates keep working on HTTPS ingest but
  not on Kafka directly (renew them to get Kafka-direct access).

An OAuth token's ``kafka_principal`` claim is ``<tenant>.<group>.<client_id>``: the same shape.
Credential ids are never reused (random, 96 bits), so a principal can never come back to
life for a new owner of the same tenant and group slugs.

Anything else falls through to DEFAULT (the full DN), which no ACL names: it is denied.
"""

from __future__ import annotations

import secrets

from cryptography import x509

from certs.ca import name
from devices.principals import CONSUMERS, CREDENTIAL_ID, CREDENTIAL_ID_PATTERN

PLATFORM_ORGANIZATION = "Sluice Platform"
BROKER = "broker"
PLATFORM_ADMIN = "sluice-admin"
CERTIFICATE_ID_PREFIX = "crt_"

_SLUG = "[a-z0-9][a-z0-9-]*"

# Java regexes (SslPrincipalMapper); rules are tried in order, first match wins.
KAFKA_PRINCIPAL_MAPPING_RULES = ",".join(
    [
        f"RULE:^CN=({_SLUG}),O={PLATFORM_ORGANIZATION}$/$1/",
        # A consumer's certificate: no OU.
        f"RULE:^UID=({CREDENTIAL_ID}),CN=({_SLUG}),O=({_SLUG})$/$3.{CONSUMERS}.$2.$1/",
        # Device ids may hold letters, digits and . _ : - (never a comma), hence [^,]+.
        f"RULE:^UID=({CREDENTIAL_ID}),CN=[^,]+,OU=({_SLUG}),O=({_SLUG})$/$3.$2.$1/",
        # Certificates issued before credential ids: a principal no ACL names.
        f"RULE:^CN=[^,]+,OU=({_SLUG}),O=({_SLUG})$/$2.$1/",
        "DEFAULT",
    ]
)

SUPER_USERS = (f"User:{BROKER}", f"User:{PLATFORM_ADMIN}")


def platform_subject(common_name: str) -> x509.Name:
    return name(O=PLATFORM_ORGANIZATION, CN=common_name)


def new_certificate_id() -> str:
    """A fresh credential id for a certificate: 96 random bits, never reused."""
    return f"{CERTIFICATE_ID_PREFIX}{secrets.token_hex(12)}"


def device_subject(*, tenant: str, group: str, device: str, credential_id: str | None = None) -> x509.Name:
    """``UID`` comes last in the sequence, so first in RFC 2253 (which reverses it)."""
    if credential_id is None:
        return name(O=tenant, OU=group, CN=device)
    if not CREDENTIAL_ID_PATTERN.match(credential_id):
        raise ValueError(f"not a credential id: {credential_id!r}")
    return name(O=tenant, OU=group, CN=device, UID=credential_id)


def consumer_subject(*, tenant: str, consumer: str, credential_id: str) -> x509.Name:
    """``UID=<id>,CN=<consumer>,O=<tenant>`` in RFC 2253 form."""
    if not CREDENTIAL_ID_PATTERN.match(credential_id):
        raise ValueError(f"not a credential id: {credential_id!r}")
    return name(O=tenant, CN=consumer, UID=credential_id)
