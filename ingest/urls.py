"""Device-facing ingest URLs, mounted at ``/ingest/``."""

from django.urls import path

from ingest.views import ingest_records

urlpatterns = [
    path("v1/records", ingest_records, name="ingest-records"),
]
