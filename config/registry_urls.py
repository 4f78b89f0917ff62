"""``/registry/<tenant>/``: a tenant's schemas in the Confluent Schema Registry API's shape
(``devices.registry_api``), for whoever may read the tenant through the REST API and for the
tenant's consumers (their OAuth clients' ``registry:read`` tokens and their client
certificates).  In the top layer: the certificate check is the certs app's."""

from __future__ import annotations

from django.urls import path
from rest_framework.authentication import SessionAuthentication

from certs.tls_identity import ConsumerCertificateAuthentication
from devices import registry_api
from tenants.authentication import RegistryBearerAuthentication

# A bearer credential first (an API client that also holds a certificate is who its token
# says), then a consumer's certificate, then a console session.
AUTHENTICATION = {
    "authentication_classes": [RegistryBearerAuthentication, ConsumerCertificateAuthentication, SessionAuthentication]
}

urlpatterns = [
    path("schemas/ids/<int:schema_id>", registry_api.SchemaById.as_view(**AUTHENTICATION), name="registry-schema"),
    path("subjects", registry_api.Subjects.as_view(**AUTHENTICATION), name="registry-subjects"),
    path(
        "subjects/<str:subject>/versions",
        registry_api.SubjectVersions.as_view(**AUTHENTICATION),
        name="registry-versions",
    ),
    path(
        "subjects/<str:subject>/versions/<str:version>",
        registry_api.SubjectVersion.as_view(**AUTHENTICATION),
        name="registry-version",
    ),
]
