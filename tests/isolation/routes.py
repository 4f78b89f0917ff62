"""Every URL pattern Django resolves, and what tenant A's credentials must get from it.

``routes()`` walks ``django.urls.get_resolver()`` (every ``URLPattern`` under every
``URLResolver``: the API, OAuth, EST, onboarding, the console, the schema and the PKI
download).  ``EXPECTATIONS`` holds one entry per pattern, keyed by its full route; a pattern
without an entry fails ``test_every_route_has_an_isolation_expectation``, so a new endpoint
cannot arrive without saying how it keeps tenants apart.

Kinds of entry:

* ``scoped``: the pattern names a tenant or an object.  ``fill`` says which of tenant B's
  objects fills each path parameter; with A's credential, every method answers exactly what
  it answers for an object that does not exist (one of ``answers``), and nothing of B's
  changes.  ``anchor`` (the tenant, or the console's device) is also filled with A's own
  object while the other parameters still name B's ("A's tenant, B's stream").
* ``unscoped``: no parameter names B's objects (lists, indexes, public documents); what A
  gets from it never shows one of B's rows.
* ``public``: deliberately the same for every caller, B's data included; ``why`` says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver


@dataclass(frozen=True)
class Route:
    route: str  # the full route, as the resolver spells it: "api/v1/tenants/<slug:tenant>/ca/"
    name: str | None
    params: tuple[str, ...]
    callback: Any

    @property
    def model_admin(self) -> Any:
        """The ModelAdmin behind a console URL (Django's ``ModelAdmin.get_urls`` tags it)."""
        return getattr(self.callback, "model_admin", None)


def _params(pattern: Any) -> list[str]:
    converters = getattr(pattern, "converters", None)
    if converters:
        return list(converters)
    regex = getattr(pattern, "_regex", None)
    return list(re.compile(regex).groupindex) if isinstance(regex, str) else []


def _walk(patterns: list[Any], prefix: str, params: tuple[str, ...]) -> Iterator[Route]:
    for entry in patterns:
        here = params + tuple(_params(entry.pattern))
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), here)
        elif isinstance(entry, URLPattern):
            yield Route(_stable(prefix + str(entry.pattern)), entry.name, here, entry.callback)


def _stable(route: str) -> str:
    """The route with any alternation of names sorted: the console's app list spells its apps
    in registration order (``(?P<app_label>auth|tenants|...)``), which is not the table's."""
    return re.sub(r"\(\?P<(\w+)>([\w|]+)\)", lambda m: f"(?P<{m[1]}>{'|'.join(sorted(m[2].split('|')))})", route)


def routes(urlconf: str | None = None) -> list[Route]:
    """Every pattern of the URL conf (``settings.ROOT_URLCONF`` by default)."""
    return list(_walk(get_resolver(urlconf).url_patterns, "", ()))


# -- the table ---------------------------------------------------------------------------

API, CONSOLE, DEVICE, PUBLIC, REGISTRY = "api", "console", "device", "public", "registry"  # which credentials try it
NOT_FOUND = frozenset({404, 405})  # the API's promise: another tenant's object is a 404, never a 403
OPERATORS_ONLY = frozenset({403, 405})


@dataclass(frozen=True)
class Expect:
    kind: str  # "scoped", "unscoped" or "public"
    door: str
    fill: Mapping[str, str] = field(default_factory=dict)  # path parameter -> object key (``Side.value``)
    answers: frozenset[int] = NOT_FOUND  # scoped: the statuses A may get (identical to a missing object's)
    anchor: str | None = None  # scoped: the parameter that is also filled with A's own object
    why: str = ""


def api(**fill: str) -> Expect:
    return Expect("scoped", API, fill, NOT_FOUND, anchor="tenant")


def registry(**fill: str) -> Expect:
    return Expect("scoped", REGISTRY, fill, NOT_FOUND, anchor="tenant")


def unscoped(door: str, **fill: str) -> Expect:
    return Expect("unscoped", door, fill)


CACERTS_ARE_PUBLIC = ("EST's CA certificates are public (RFC 7030 §4.1.1: no client authentication); every "
                      "issued chain_pem carries them too")  # fmt: skip
T = "api/v1/tenants/<slug:tenant>/"
S = f"{T}streams/<int:pk>/"

EXPECTATIONS: dict[str, Expect] = {
    # -- REST API: B's tenant, B's objects, and A's tenant with B's objects: 404 like missing
    f"{T}": api(tenant="tenant"),
    f"{T}suspend": api(tenant="tenant"),
    f"{T}resume": api(tenant="tenant"),
    f"{T}members/": api(tenant="tenant"),
    f"{T}audit/": api(tenant="tenant"),
    f"{T}reconcile": api(tenant="tenant"),
    f"{T}streams/": api(tenant="tenant"),
    S: api(tenant="tenant", pk="stream"),
    f"{S}schema": api(tenant="tenant", pk="stream"),
    f"{S}schema/compatibility": api(tenant="tenant", pk="stream"),
    f"{S}schema/versions": api(tenant="tenant", pk="stream"),
    f"{S}schema/versions/<int:version>": api(tenant="tenant", pk="stream", version="version"),
    f"{T}groups/": api(tenant="tenant"),
    f"{T}groups/<slug:group>/": api(tenant="tenant", group="group"),
    f"{T}devices/": api(tenant="tenant"),
    f"{T}devices/bulk": api(tenant="tenant"),
    f"{T}devices/import-jobs": api(tenant="tenant"),
    f"{T}devices/<str:device_id>/": api(tenant="tenant", device_id="device"),
    f"{T}devices/<str:device_id>/certificates/": api(tenant="tenant", device_id="device"),
    f"{T}certificates/bulk": api(tenant="tenant"),
    f"{T}certificates/issue-jobs": api(tenant="tenant"),
    f"{T}jobs/": api(tenant="tenant"),
    f"{T}jobs/<int:job>/": api(tenant="tenant", job="job"),
    f"{T}jobs/<int:job>/keys": api(tenant="tenant", job="job"),
    f"{T}certificates/<str:serial>/": api(tenant="tenant", serial="serial"),
    f"{T}certificates/<str:serial>/revoke": api(tenant="tenant", serial="serial"),
    f"{T}ca/": api(tenant="tenant"),
    f"{T}consumers/": api(tenant="tenant"),
    f"{T}consumers/<slug:consumer>/": api(tenant="tenant", consumer="consumer"),
    f"{T}consumers/<slug:consumer>/certificates/": api(tenant="tenant", consumer="consumer"),
    f"{T}oauth-clients/": api(tenant="tenant"),
    f"{T}oauth-clients/<str:client_id>/": api(tenant="tenant", client_id="client"),
    f"{T}oauth-clients/<str:client_id>/rotate-secret": api(tenant="tenant", client_id="client"),
    # -- the scoped schema registry (Confluent's API shape): B's tenant, and B's ids and
    # subjects under A's tenant, are 404 like missing ones
    "registry/<str:tenant>/subjects": registry(tenant="tenant"),
    "registry/<str:tenant>/schemas/ids/<int:schema_id>": registry(tenant="tenant", schema_id="schema_id"),
    "registry/<str:tenant>/subjects/<str:subject>/versions": registry(tenant="tenant", subject="subject"),
    "registry/<str:tenant>/subjects/<str:subject>/versions/<str:version>": registry(
        tenant="tenant", subject="subject", version="version"
    ),
    # -- REST API without a tenant in the path: A's lists hold A's rows only
    "api/v1/": unscoped(API),
    "api/v1/tenants/": unscoped(API),
    "api/v1/tokens/": unscoped(API),
    r"api/v1/^[\s\S]*$": unscoped(API),  # the JSON 404 of every other path
    "api/schema/": unscoped(API),
    "api/docs/": unscoped(API),
    # -- EST: the label is the tenant; A's device certificate is refused under B's label
    ".well-known/est/<slug:tenant>/simplereenroll": Expect("scoped", DEVICE, {"tenant": "tenant"}, NOT_FOUND),
    ".well-known/est/<slug:tenant>/serverkeygen": Expect("scoped", DEVICE, {"tenant": "tenant"}, NOT_FOUND),
    ".well-known/est/<slug:tenant>/cacerts": Expect("public", DEVICE, {"tenant": "tenant"}, why=CACERTS_ARE_PUBLIC),
    # -- OAuth, health, metrics, the PKI download: nothing of a tenant's, or operators only
    ".well-known/oauth-authorization-server": unscoped(PUBLIC),
    ".well-known/oauth-authorization-server/oauth": unscoped(PUBLIC),
    "oauth/token": unscoped(PUBLIC),
    "oauth/jwks.json": unscoped(PUBLIC),
    "healthz": unscoped(PUBLIC),
    "metrics": unscoped(PUBLIC),
    "pki/root-ca.crt": unscoped(PUBLIC),
    # -- onboarding: operators only; a tenant admin is refused alike for B's objects and for none
    "onboarding/": unscoped(CONSOLE),
    **{
        f"onboarding/{route}": Expect("scoped", CONSOLE, fill, OPERATORS_ONLY, anchor="tenant")
        for route, fill in {
            "<slug:tenant>/admin/": {"tenant": "tenant"},
            "<slug:tenant>/stream/": {"tenant": "tenant"},
            "<slug:tenant>/streams/<int:stream>/group/": {"tenant": "tenant", "stream": "stream"},
            "<slug:tenant>/groups/<slug:group>/device/": {"tenant": "tenant", "group": "group"},
            "<slug:tenant>/devices/<str:device>/": {"tenant": "tenant", "device": "device"},
            "<slug:tenant>/devices/<str:device>/credentials/": {"tenant": "tenant", "device": "device"},
            "<slug:tenant>/devices/<str:device>/consumer/": {"tenant": "tenant", "device": "device"},
        }.items()
    },
    # -- the console's own pages
    "admin/": unscoped(CONSOLE),
    "admin/login/": unscoped(CONSOLE),
    "admin/logout/": unscoped(CONSOLE),
    "admin/password_change/": unscoped(CONSOLE),
    "admin/password_change/done/": unscoped(CONSOLE),
    "admin/autocomplete/": unscoped(CONSOLE),
    "admin/jsi18n/": unscoped(CONSOLE),
    "admin/^(?P<app_label>auth|certs|devices|tenants)/$": unscoped(CONSOLE),
    "admin/(?P<url>.*)$": unscoped(CONSOLE),
    # the bulk import page: a form for the user's writable tenants; the job it starts is polled
    # through the API (.../jobs/<id>/), scoped there
    "admin/devices/device/import/": unscoped(CONSOLE),
    # a job's page and its keys (once): B's job is missing to A
    "admin/devices/device/jobs/<int:job>/": Expect("scoped", CONSOLE, {"job": "job"}, frozenset({404})),
    "admin/devices/device/jobs/<int:job>/keys/": Expect("scoped", CONSOLE, {"job": "job"}, frozenset({404})),
    # a device's certificate pages: B's device, and A's device with B's certificate
    "admin/devices/device/<path:object_id>/certificates/issue/": Expect(
        "scoped", CONSOLE, {"object_id": "devices.device"}, frozenset({404})
    ),
    "admin/devices/device/<path:object_id>/certificates/<str:serial>/revoke/": Expect(
        "scoped", CONSOLE, {"object_id": "devices.device", "serial": "serial"}, frozenset({404}), anchor="object_id"
    ),
    # a consumer's credential pages: B's consumer answers as a missing one
    "admin/devices/consumer/<path:object_id>/certificates/issue/": Expect(
        "scoped", CONSOLE, {"object_id": "devices.consumer"}, frozenset({404})
    ),
    "admin/devices/consumer/<path:object_id>/oauth-clients/add/": Expect(
        "scoped", CONSOLE, {"object_id": "devices.consumer"}, frozenset({404})
    ),
    "admin/auth/user/<id>/password/": Expect("scoped", CONSOLE, {"id": "auth.user"}, frozenset({403})),
    # the overviews: operators only for every tenant's; B's tenant answers as a missing one, and
    # the renew action of B's certificate under A's tenant too
    "admin/overview/": unscoped(CONSOLE),
    "admin/overview/<slug:tenant>/": Expect("scoped", CONSOLE, {"tenant": "tenant"}, frozenset({404})),
    "admin/overview/<slug:tenant>/certificates/<str:serial>/renew/": Expect(
        "scoped", CONSOLE, {"tenant": "tenant", "serial": "serial"}, frozenset({404}), anchor="tenant"
    ),
}

# Every model in the console.  A tenant admin of A gets, for B's row, what the console
# answers for a row that does not exist: its "doesn't exist" redirect (302), 403 where the
# page is not theirs at all (Django's users and groups, writes to read-only pages), or 405.  Each
# model brings the ModelAdmin's standard URLs.
CONSOLE_MODELS = (
    "auth.group", "auth.user", "tenants.tenant", "tenants.membership", "tenants.apitoken", "tenants.auditevent",
    "tenants.oauthclient", "devices.stream", "devices.devicegroup", "devices.device", "devices.consumer",
    "certs.certificateauthority", "certs.certificate",
)  # fmt: skip
CONSOLE_REFUSALS = frozenset({302, 403, 405})
for _label in CONSOLE_MODELS:
    _base = f"admin/{_label.replace('.', '/')}/"
    EXPECTATIONS[_base] = unscoped(CONSOLE)  # the change list
    EXPECTATIONS[f"{_base}add/"] = unscoped(CONSOLE)
    for _suffix in ("<path:object_id>/", "<path:object_id>/change/", "<path:object_id>/delete/",
                    "<path:object_id>/history/"):  # fmt: skip
        EXPECTATIONS[_base + _suffix] = Expect("scoped", CONSOLE, {"object_id": _label}, CONSOLE_REFUSALS)


def missing_expectations(urlconf: str | None = None) -> list[str]:
    """Routes of the URL conf that have no entry in ``EXPECTATIONS``."""
    return sorted({r.route for r in routes(urlconf)} - set(EXPECTATIONS))
