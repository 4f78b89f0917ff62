"""``/registry/<tenant>/``: a tenant's schemas in the Confluent Schema Registry API's shape
(``devices.registry_api``)."""

from __future__ import annotations

from django.urls import path

from devices import registry_api

urlpatterns = [
    path("schemas/ids/<int:schema_id>", registry_api.SchemaById.as_view(), name="registry-schema"),
    path("subjects", registry_api.Subjects.as_view(), name="registry-subjects"),
    path("subjects/<str:subject>/versions", registry_api.SubjectVersions.as_view(), name="registry-versions"),
    path(
        "subjects/<str:subject>/versions/<str:version>", registry_api.SubjectVersion.as_view(), name="registry-version"
    ),
]
