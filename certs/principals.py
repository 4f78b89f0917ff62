"""How certificate subjects become Kafka principals: the one definition of the naming.

Platform certificates are ``CN=<name>,O=Sluice Platform``; device certificates are
``CN=<device>,OU=<group>,O=<tenant>`` with slug values (``[a-z0-9-]``), so the two can never
be confused (a slug has no space).  Kafka's ``ssl.principal.mapping.rules`` sees the subject
in RFC 2253 form and turns it into:

* ``User:<name>`` for platform certificates (``broker``, ``sluice-admin``), and
* ``User:<tenant>.<group>`` for device certificates: ACLs are granted per device group, so
  100k devices of a group share one set of ACLs.

Anything else falls through to DEFAULT (the full DN), which no ACL names: it is denied.
"""

from __future__ import annotations

from cryptography import x509

from certs.ca import name

PLATFORM_ORGANIZATION = "Sluice Platform"
BROKER = "broker"
PLATFORM_ADMIN = "sluice-admin"

_SLUG = "[a-z0-9][a-z0-9-]*"

# Java regexes (SslPrincipalMapper); rules are tried in order, first match wins.
KAFKA_PRINCIPAL_MAPPING_RULES = ",".join(
    [
        f"RULE:^CN=({_SLUG}),O={PLATFORM_ORGANIZATION}$/$1/",
        # Device ids may hold letters, digits and . _ : - (never a comma), hence [^,]+.
        f"RULE:^CN=[^,]+,OU=({_SLUG}),O=({_SLUG})$/$2.$1/",
        "DEFAULT",
    ]
)

SUPER_USERS = (f"User:{BROKER}", f"User:{PLATFORM_ADMIN}")


def platform_subject(common_name: str) -> x509.Name:
    return name(O=PLATFORM_ORGANIZATION, CN=common_name)


def device_subject(*, tenant: str, group: str, device: str) -> x509.Name:
    return name(O=tenant, OU=group, CN=device)


def group_principal(*, tenant: str, group: str) -> str:
    """The Kafka principal every device certificate of ``group`` maps to."""
    return f"User:{tenant}.{group}"
