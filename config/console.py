"""The Sluice console's admin site: Django's admin with an index that shows what matters --
a link to onboarding for operators, and counts scoped to what the user may see.

The overview is a cross-app read (tenants, devices, certificates, ingest), so it is
composed here, above the apps, from each app's own selectors; nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig
from django.contrib.auth.apps import AuthConfig
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path


@dataclass(frozen=True)
class Overview:
    """The index's counts.  ``refusals_last_hour`` is None when Redis cannot be read."""

    tenants: int
    devices: int
    certificates_expiring: int
    refusals_last_hour: int | None
    is_operator: bool
    tenant_slugs: list[str]  # the tenants whose overview the user may open (the first OVERVIEW_LINKS)


OVERVIEW_LINKS = 50


def console_overview(*, user: Any) -> Overview:
    # Imported here: this module holds AppConfigs (INSTALLED_APPS), loaded before any model.
    from certs.selectors import certificates_expiring
    from devices.selectors import device_list
    from ingest.selectors import refusals_last_hour
    from tenants.scoping import scope_for
    from tenants.selectors import tenant_list

    scope = scope_for(user)
    return Overview(
        tenants=tenant_list(scope=scope).count(),
        devices=device_list(scope=scope).count(),
        certificates_expiring=certificates_expiring(scope=scope).count(),
        refusals_last_hour=refusals_last_hour(scope=scope),
        is_operator=scope.is_operator,
        tenant_slugs=list(tenant_list(scope=scope).order_by("slug").values_list("slug", flat=True)[:OVERVIEW_LINKS]),
    )


class SluiceAdminSite(AdminSite):
    site_header = "Sluice"
    site_title = "Sluice console"
    index_title = "Tenants, devices and Kafka streams"
    site_url = None  # no public site behind the console; hide "View site"
    index_template = "admin/sluice_index.html"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        context = {**(extra_context or {}), "overview": console_overview(user=request.user)}
        return super().index(request, context)

    def get_urls(self) -> list[URLPattern | URLResolver]:
        # Without Django's "view on site" redirect (/admin/r/<content type>/<id>/): no Sluice
        # model has a page outside the console, and its 404 told any signed-in user whether a
        # row of any tenant exists ("has no get_absolute_url" against "doesn't exist").
        from config import overviews

        own = [
            path("overview/", self.admin_view(partial(overviews.operator_overview_view, site=self)),
                 name="sluice_operator_overview"),
            path("overview/<slug:tenant>/", self.admin_view(partial(overviews.tenant_overview_view, site=self)),
                 name="sluice_tenant_overview"),
            path("overview/<slug:tenant>/certificates/<str:serial>/renew/",
                 self.admin_view(partial(overviews.renew_view, site=self)), name="sluice_certificate_renew"),
        ]  # fmt: skip
        return own + [url for url in super().get_urls() if getattr(url, "name", None) != "view_on_site"]


class SluiceAdminConfig(AdminConfig):
    default_site = "config.console.SluiceAdminSite"


class SluiceAuthConfig(AuthConfig):
    """Django's users and groups, named in the console's sentence case."""

    verbose_name = "Users and groups"
