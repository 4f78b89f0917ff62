"""Tenant isolation, generated from the URL resolver: every pattern Django serves is tried
with tenant A's credentials of every kind against tenant B's objects, by every method, as
``routes.EXPECTATIONS`` says; and a pattern without an expectation fails the suite."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import override_settings
from rest_framework.test import APIClient

from tests.isolation import routes
from tests.isolation.routes import API, CONSOLE, DEVICE, EXPECTATIONS, PUBLIC, REGISTRY, Expect, Route
from tests.isolation.sides import (
    API_TOKEN,
    CONSUMER_CERTIFICATE,
    CONSUMER_TOKEN,
    DEVICE_CERTIFICATE,
    DEVICE_TOKEN,
    MISSING,
    MISSING_ID,
    REFUSED_BY_API,
    REFUSED_BY_REGISTRY,
    SERVICE_TOKEN,
    SESSION,
    Side,
    build_side,
    client_as,
)

pytestmark = pytest.mark.django_db

VERBS = ("get", "post", "put", "patch", "delete", "options", "trace")
BODY = {"name": "pwned", "device_id": "x", "group": "sensors", "region": "eu", "type": "zz", "status": "disabled",
        "schema_type": "JSON", "schema": '{"properties": {}}', "reason": "keyCompromise", "items": [{"device_id": "x"}],
        "role": "admin", "username": "acme-admin", "slug": "pwned", "confirm": "pwned"}  # fmt: skip
# Which of A's credentials knock on which door.
PRINCIPALS = {
    API: (SESSION, API_TOKEN, SERVICE_TOKEN, DEVICE_TOKEN, CONSUMER_TOKEN, CONSUMER_CERTIFICATE),
    CONSOLE: (SESSION,),
    DEVICE: (DEVICE_CERTIFICATE,),
    REGISTRY: (SESSION, API_TOKEN, SERVICE_TOKEN, DEVICE_TOKEN, DEVICE_CERTIFICATE, CONSUMER_TOKEN,
               CONSUMER_CERTIFICATE),
    PUBLIC: (SESSION, API_TOKEN, SERVICE_TOKEN, DEVICE_TOKEN, DEVICE_CERTIFICATE, CONSUMER_TOKEN,
             CONSUMER_CERTIFICATE),
}  # fmt: skip
REFUSED = {API: REFUSED_BY_API, REGISTRY: REFUSED_BY_REGISTRY}
CASES = sorted({(door, principal) for door, principals in PRINCIPALS.items() for principal in principals})
# Concrete paths for the patterns that are regular expressions.
SAMPLE_PATHS = {
    r"api/v1/^[\s\S]*$": "api/v1/tenants/acme/nothing-here",
    "admin/^(?P<app_label>auth|certs|devices|tenants)/$": "admin/devices/",
    "admin/(?P<url>.*)$": "admin/tenants/tenant/nothing-here",
}
# Parts of a page that differ between any two requests.
PER_REQUEST = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"|Request id: <code>[0-9a-f]*</code>')


@pytest.fixture
def sides(db: None) -> tuple[Side, Side]:
    return build_side("acme", "a"), build_side("globex", "b")


def path_for(route: Route, values: dict[str, str]) -> str:
    if route.route in SAMPLE_PATHS:
        return "/" + SAMPLE_PATHS[route.route]
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: quote_path(values[m.group(1)]), route.route)


def quote_path(value: str) -> str:
    return value.replace("/", "%2F")


def missing(key: str, b: Side) -> str:
    if key == "device_type":
        return b.value(key)  # a content type, the same for both: the object id is what is missing
    return MISSING.get(key, MISSING_ID)


def answer(response: HttpResponse, replacements: dict[str, str] | None = None) -> tuple[Any, ...]:
    """What a response tells its reader, with ``replacements`` applied to its text."""
    content = PER_REQUEST.sub("", response.content.decode(errors="replace"))
    location = response.get("Location", "")
    for old, new in (replacements or {}).items():
        content, location = content.replace(old, new), location.replace(old, new)
    return response.status_code, response.get("Content-Type"), response.get("Allow"), location, content


def send(client: Any, verb: str, path: str) -> HttpResponse:
    return getattr(client, verb)(path, BODY, format="json", secure=True)


def routes_of(door: str, *kinds: str) -> list[tuple[Route, Expect]]:
    return [(r, EXPECTATIONS[r.route]) for r in routes.routes() if EXPECTATIONS[r.route].door == door
            and EXPECTATIONS[r.route].kind in kinds]  # fmt: skip


# -- completeness ------------------------------------------------------------------------------


def test_every_route_has_an_isolation_expectation() -> None:
    assert routes.missing_expectations() == [], "add these routes to tests/isolation/routes.py EXPECTATIONS"
    stale = sorted(set(EXPECTATIONS) - {r.route for r in routes.routes()})
    assert stale == [], "EXPECTATIONS names routes that no longer exist"
    for route in routes.routes():
        expect = EXPECTATIONS[route.route]
        # every path parameter of a scoped route is filled; the certificate endpoints are among them
        if expect.kind != "unscoped":
            assert set(route.params) == set(expect.fill), route.route
        elif route.route not in SAMPLE_PATHS:
            assert route.params == (), route.route


def test_a_new_route_without_an_expectation_fails_the_suite() -> None:
    # given a URL conf with one endpoint more than Sluice's, naming a tenant and an object
    with override_settings(ROOT_URLCONF="tests.isolation.unguarded_urls"):
        # then the completeness check names it, and nothing else
        assert routes.missing_expectations() == ["api/v1/tenants/<slug:tenant>/secrets/<int:pk>/"]
        with pytest.raises(AssertionError):
            test_every_route_has_an_isolation_expectation()


def test_the_certificate_and_console_endpoints_are_covered() -> None:
    served = {r.route for r in routes.routes()}
    for route in ("api/v1/tenants/<slug:tenant>/certificates/<str:serial>/",
                  "api/v1/tenants/<slug:tenant>/certificates/<str:serial>/revoke",
                  "api/v1/tenants/<slug:tenant>/devices/<str:device_id>/certificates/",
                  "api/v1/tenants/<slug:tenant>/ca/", ".well-known/est/<slug:tenant>/simplereenroll",
                  "admin/certs/certificate/<path:object_id>/change/", "onboarding/<slug:tenant>/devices/<str:device>/",
                  "admin/devices/device/<path:object_id>/certificates/<str:serial>/revoke/"):  # fmt: skip
        assert route in served, route
        assert EXPECTATIONS[route].kind == "scoped", route


# -- B's objects, named by A -------------------------------------------------------------------


@pytest.mark.parametrize(("door", "principal"), [c for c in CASES if c[0] != PUBLIC])
def test_other_tenants_objects_answer_as_missing_ones(sides: tuple[Side, Side], door: str, principal: str) -> None:
    a, b = sides
    failures: list[str] = []
    scoped = routes_of(door, "scoped")
    assert scoped, door
    for route, expect in scoped:
        # Afresh for each route (the console's logout must not end the next route's session), and
        # one client per side of the comparison: the console shows a redirect's message on the
        # next page, so each client's pages must follow its own requests only.
        client, twin_client = client_as(a, principal), client_as(a, principal)
        before = b.snapshot()
        variants = [{p: b.value(k) for p, k in expect.fill.items()}]
        if expect.anchor and len(expect.fill) > 1:  # A's own tenant (or device), B's object inside it
            variants.append({**variants[0], expect.anchor: a.value(expect.fill[expect.anchor])})
        for values in variants:
            twin_values = {p: (v if v == a.value(expect.fill[p]) and p == expect.anchor else missing(expect.fill[p], b))
                           for p, v in values.items()}  # fmt: skip
            replacements = {twin_values[p]: values[p] for p in values if twin_values[p] != values[p]}
            path, twin_path = path_for(route, values), path_for(route, twin_values)
            for verb in VERBS:
                # when A's credential tries B's object with this method, and one that does not exist
                got, twin = send(client, verb, path), send(twin_client, verb, twin_path)
                # then the two answers are the same, and one the pattern may give
                if answer(got) != answer(twin, replacements):
                    failures.append(f"{verb.upper()} {path}: {got.status_code} differs from {twin_path}'s "
                                    f"{twin.status_code}: {got.content[:300]!r} vs {twin.content[:300]!r}")  # fmt: skip
                allowed = {401, 403} if principal in REFUSED.get(door, ()) else expect.answers
                if got.status_code not in allowed and not (verb == "options" and got.status_code == 200):
                    failures.append(f"{verb.upper()} {path}: {got.status_code}, expected one of {sorted(allowed)}")
        # and nothing of B's changed
        if b.snapshot() != before:
            failures.append(f"{route.route}: B's rows changed")
    assert failures == [], "\n".join(failures)


# -- what A sees never shows B's rows ----------------------------------------------------------


@pytest.mark.parametrize(("door", "principal"), CASES)
def test_what_a_sees_never_shows_other_tenants_rows(sides: tuple[Side, Side], door: str, principal: str) -> None:
    a, b = sides
    failures: list[str] = []
    before = b.snapshot()
    for route, expect in routes_of(door, "unscoped", "scoped"):
        # A's lists and indexes, and A's own objects' pages (scoped routes filled from A's side)
        path = path_for(route, {p: a.value(k) for p, k in expect.fill.items()})
        got = client_as(a, principal).get(path, secure=True)
        text = got.content.decode(errors="replace") + got.get("Location", "")
        shown = [marker for marker in b.markers() if marker in text]
        if shown:
            failures.append(f"GET {path} ({got.status_code}) shows B's {shown}")
    assert failures == [], "\n".join(failures)
    assert b.snapshot() == before


def test_public_patterns_say_why(sides: tuple[Side, Side]) -> None:
    a, b = sides
    for route in routes.routes():
        expect = EXPECTATIONS[route.route]
        if expect.kind != "public":
            continue
        assert expect.why, route.route
        # public: the same for A as for anyone, and read-only for A
        before = b.snapshot()
        path = path_for(route, {p: b.value(k) for p, k in expect.fill.items()})
        anonymous = send(APIClient(), "get", path)
        assert answer(send(client_as(a, DEVICE_CERTIFICATE), "get", path)) == answer(anonymous), path
        for verb in VERBS[1:]:
            assert send(client_as(a, SESSION), verb, path).status_code in (403, 405), (verb, path)
        assert b.snapshot() == before


def test_the_console_confirms_no_row_by_content_type_or_user_id(sides: tuple[Side, Side]) -> None:
    # Django's "view on site" redirect (/admin/r/<content type>/<id>/) answered "has no
    # get_absolute_url" for any existing row and "doesn't exist" for a free id; the stock
    # users' and groups' pages answered 403 for an existing id, a redirect for a free one.
    a, b = sides
    client, twin_client = client_as(a, SESSION), client_as(a, SESSION)
    content_type = b.value("device_type")
    probes = [(f"/admin/r/{content_type}/{b.value('devices.device')}/", f"/admin/r/{content_type}/{MISSING_ID}/")]
    for label, model in (("auth.user", "auth/user"), ("auth.group", "auth/group")):
        for page in ("history/", "change/", "delete/", ""):
            probes.append((f"/admin/{model}/{b.value(label)}/{page}", f"/admin/{model}/{MISSING_ID}/{page}"))
    for path, twin_path in probes:
        got, twin = client.get(path, secure=True), twin_client.get(twin_path, secure=True)
        assert answer(got) == answer(twin, {MISSING_ID: _id_in(path)}), path


def _id_in(path: str) -> str:
    return next(part for part in reversed(path.strip("/").split("/")) if part.isdigit())


def test_console_forms_never_take_another_tenants_rows(sides: tuple[Side, Side]) -> None:
    # given A's tenant admin in the console, naming B's tenant, group and stream in form fields
    a, b = sides
    client = client_as(a, SESSION)
    before = b.snapshot()
    device_form = {"tenant": b.tenant.pk, "group": b.group.pk, "device_id": "planted", "status": "active"}
    group_form = {"tenant": b.tenant.pk, "stream": b.stream.pk, "slug": "planted", "region": "eu"}
    added = client.post("/admin/devices/device/add/", device_form, secure=True)
    moved = client.post(f"/admin/devices/device/{a.device.pk}/change/", {"group": b.group.pk}, secure=True)
    group = client.post("/admin/devices/devicegroup/add/", group_form, secure=True)
    # then every form is refused (the choices offer A's rows only) and nothing of B's changed
    assert (added.status_code, moved.status_code, group.status_code) == (200, 200, 200)
    assert "Select a valid choice" in added.content.decode()
    assert b.snapshot() == before
    a.device.refresh_from_db()
    assert a.device.group == a.group
