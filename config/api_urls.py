"""/api/v1/ URL map: the top layer, where every app's API (tenants, OAuth clients, devices, certs, ingest) is routed."""

import re

from django.urls import path, re_path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from certs import apis as cert_apis
from certs import job_apis
from config import oauth_client_apis as oauth_apis
from devices import apis as device_apis
from ingest import apis as ingest_apis
from tenants import apis
from tenants.api_base import NotFoundApi

T = "tenants/<slug:tenant>/"


class ApiIndexApi(APIView):
    """``/api/v1/``: where the API's collections are, as URI templates (RFC 6570), and where
    its OpenAPI document and docs are.  Public, like the document itself: it names paths,
    never data."""

    schema = None  # the index of the operations, not one of them
    permission_classes = (AllowAny,)

    def get(self, request: Request) -> Response:
        collections = {}
        for pattern in urlpatterns:
            name = pattern.name or ""
            route = getattr(pattern.pattern, "_route", None)
            if route is None or not name.endswith("-list"):
                continue
            template = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
            collections[template.rstrip("/").rsplit("/", 1)[-1]] = f"/api/v1/{template}"
        return Response({"collections": collections, "openapi": "/api/schema/", "docs": "/api/docs/"})


urlpatterns = [
    path("", ApiIndexApi.as_view(), name="api-index"),
    path("tenants/", apis.TenantListApi.as_view(), name="tenant-list"),
    path(T, apis.TenantDetailApi.as_view(), name="tenant-detail"),
    path(f"{T}suspend", apis.TenantSuspendApi.as_view(), name="tenant-suspend"),
    path(f"{T}resume", apis.TenantResumeApi.as_view(), name="tenant-resume"),
    path(f"{T}members/", apis.MembershipListApi.as_view(), name="member-list"),
    path(f"{T}audit/", apis.AuditListApi.as_view(), name="audit-list"),
    path(f"{T}reconcile", ingest_apis.ReconcileApi.as_view(), name="tenant-reconcile"),
    path(f"{T}streams/", device_apis.StreamListApi.as_view(), name="stream-list"),
    path(f"{T}streams/<int:pk>/", device_apis.StreamDetailApi.as_view(), name="stream-detail"),
    path(f"{T}streams/<int:pk>/schema", device_apis.StreamSchemaApi.as_view(), name="stream-schema"),
    path(
        f"{T}streams/<int:pk>/schema/compatibility",
        device_apis.StreamSchemaCompatibilityApi.as_view(),
        name="stream-schema-compatibility",
    ),
    path(
        f"{T}streams/<int:pk>/schema/versions",
        device_apis.StreamSchemaVersionListApi.as_view(),
        name="stream-schema-versions",
    ),
    path(
        f"{T}streams/<int:pk>/schema/versions/<int:version>",
        device_apis.StreamSchemaVersionApi.as_view(),
        name="stream-schema-version",
    ),
    path(f"{T}groups/", device_apis.GroupListApi.as_view(), name="group-list"),
    path(f"{T}groups/<slug:group>/", device_apis.GroupDetailApi.as_view(), name="group-detail"),
    path(f"{T}devices/", device_apis.DeviceListApi.as_view(), name="device-list"),
    path(f"{T}devices/bulk", device_apis.DeviceBulkImportApi.as_view(), name="device-bulk"),
    path(f"{T}devices/import-jobs", job_apis.DeviceImportJobApi.as_view(), name="device-import-job"),
    path(f"{T}devices/<str:device_id>/", device_apis.DeviceDetailApi.as_view(), name="device-detail"),
    path(f"{T}devices/<str:device_id>/certificates/", cert_apis.DeviceCertificatesApi.as_view(), name="device-certs"),
    path(f"{T}certificates/bulk", cert_apis.BulkIssueApi.as_view(), name="certificate-bulk"),
    path(f"{T}certificates/issue-jobs", job_apis.CertificateIssueJobApi.as_view(), name="certificate-issue-job"),
    path(f"{T}jobs/", job_apis.JobListApi.as_view(), name="job-list"),
    path(f"{T}jobs/<int:job>/", job_apis.JobDetailApi.as_view(), name="job-detail"),
    path(f"{T}jobs/<int:job>/keys", job_apis.JobKeysApi.as_view(), name="job-keys"),
    path(f"{T}certificates/<str:serial>/", cert_apis.CertificateDetailApi.as_view(), name="certificate-detail"),
    path(f"{T}certificates/<str:serial>/revoke", cert_apis.CertificateRevokeApi.as_view(), name="certificate-revoke"),
    path(f"{T}ca/", cert_apis.TenantCaApi.as_view(), name="tenant-ca"),
    path(f"{T}consumers/", device_apis.ConsumerListApi.as_view(), name="consumer-list"),
    path(f"{T}consumers/<slug:consumer>/", device_apis.ConsumerDetailApi.as_view(), name="consumer-detail"),
    path(
        f"{T}consumers/<slug:consumer>/certificates/",
        cert_apis.ConsumerCertificatesApi.as_view(),
        name="consumer-certs",
    ),
    path(f"{T}oauth-clients/", oauth_apis.OAuthClientListApi.as_view(), name="oauth-client-list"),
    path(f"{T}oauth-clients/<str:client_id>/", oauth_apis.OAuthClientDetailApi.as_view(), name="oauth-client-detail"),
    path(
        f"{T}oauth-clients/<str:client_id>/rotate-secret",
        oauth_apis.OAuthClientRotateSecretApi.as_view(),
        name="oauth-client-rotate-secret",
    ),
    path("tokens/", apis.TokenListApi.as_view(), name="token-list"),
    # Last: any other path is the API's JSON 404, never Django's HTML page.
    re_path(r"^[\s\S]*$", NotFoundApi.as_view(), name="api-not-found"),
]
