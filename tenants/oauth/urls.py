"""``/oauth/`` URL map; the metadata lives under ``/.well-known/`` (config/urls.py)."""

from django.urls import path

from tenants.oauth import views

urlpatterns = [
    path("token", views.token, name="oauth-token"),
    path("jwks.json", views.jwks, name="oauth-jwks"),
]
