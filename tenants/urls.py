"""/api/v1/ URL map."""

from django.urls import path, re_path

from certs import apis as cert_apis
from devices import apis as device_apis
from tenants import apis
from tenants.api_base import ApiIndexApi, NotFoundApi
from tenants.oauth import apis as oauth_apis

T = "tenants/<slug:tenant>/"

urlpatterns = [
    path("", ApiIndexApi.as_view(), name="api-index"),
    path("tenants/", apis.TenantListApi.as_view(), name="tenant-list"),
    path(T, apis.TenantDetailApi.as_view(), name="tenant-detail"),
    path(f"{T}suspend", apis.TenantSuspendApi.as_view(), name="tenant-suspend"),
    path(f"{T}resume", apis.TenantResumeApi.as_view(), name="tenant-resume"),
    path(f"{T}members/", apis.MembershipListApi.as_view(), name="member-list"),
    path(f"{T}audit/", apis.AuditListApi.as_view(), name="audit-list"),
    path(f"{T}reconcile", apis.ReconcileApi.as_view(), name="tenant-reconcile"),
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
    path(f"{T}devices/<str:device_id>/", device_apis.DeviceDetailApi.as_view(), name="device-detail"),
    path(f"{T}devices/<str:device_id>/certificates/", cert_apis.DeviceCertificatesApi.as_view(), name="device-certs"),
    path(f"{T}certificates/bulk", cert_apis.BulkIssueApi.as_view(), name="certificate-bulk"),
    path(f"{T}certificates/<str:serial>/", cert_apis.CertificateDetailApi.as_view(), name="certificate-detail"),
    path(f"{T}certificates/<str:serial>/revoke", cert_apis.CertificateRevokeApi.as_view(), name="certificate-revoke"),
    path(f"{T}ca/", cert_apis.TenantCaApi.as_view(), name="tenant-ca"),
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
