"""Sluice's URL conf plus one endpoint that has no isolation expectation (for the test that
proves such an endpoint fails the suite)."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config.urls import urlpatterns as sluice_urlpatterns


def secret(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    return HttpResponse(f"{tenant}'s secret {pk}")


urlpatterns = [
    path("api/v1/tenants/<slug:tenant>/secrets/<int:pk>/", secret, name="unguarded-secret"),
    *sluice_urlpatterns,
]
