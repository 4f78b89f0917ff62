"""Top-level URL map."""

from django.contrib import admin
from django.urls import include, path

from certs import downloads, est
from config.api_docs import ApiDocsView, ApiSchemaView
from config.health import healthz
from config.metrics import MetricsApi
from tenants.oauth import views as oauth_views

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", MetricsApi.as_view(), name="metrics"),
    path("pki/root-ca.crt", downloads.root_ca, name="root-ca"),
    path(".well-known/est/<slug:tenant>/cacerts", est.cacerts, name="est-cacerts"),
    path(".well-known/est/<slug:tenant>/simplereenroll", est.simplereenroll, name="est-simplereenroll"),
    path(".well-known/est/<slug:tenant>/serverkeygen", est.serverkeygen, name="est-serverkeygen"),
    # RFC 8414 §3.1 puts the issuer's path (/oauth) after the well-known name; the bare
    # name is served too, for clients that only try that.
    path(".well-known/oauth-authorization-server", oauth_views.metadata, name="oauth-metadata"),
    path(".well-known/oauth-authorization-server/oauth", oauth_views.metadata, name="oauth-metadata-issuer"),
    path("oauth/", include("tenants.oauth.urls")),
    path("admin/", admin.site.urls),
    path("onboarding/", include("config.onboarding_urls")),
    path("api/v1/", include("config.api_urls")),
    path("registry/<str:tenant>/", include("config.registry_urls")),
    path("api/schema/", ApiSchemaView.as_view(), name="api-schema"),
    path("api/docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
]

# What answers when no view does: JSON under /api/ (and OAuth, EST), the console's own
# error page elsewhere; never Django's bare page.
handler400 = "config.error_pages.bad_request"
handler403 = "config.error_pages.permission_denied"
handler404 = "config.error_pages.not_found"
handler500 = "config.error_pages.server_error"
