"""/onboarding/: the operator's guided tenant onboarding (``config.onboarding``)."""

from django.urls import path

from config import onboarding

app_name = "onboarding"

urlpatterns = [
    path("", onboarding.tenant_step, name="tenant"),
    path("<slug:tenant>/admin/", onboarding.admin_step, name="admin"),
    path("<slug:tenant>/stream/", onboarding.stream_step, name="stream"),
    path("<slug:tenant>/streams/<int:stream>/group/", onboarding.group_step, name="group"),
    path("<slug:tenant>/groups/<slug:group>/device/", onboarding.device_step, name="device"),
    path("<slug:tenant>/devices/<str:device>/", onboarding.summary, name="summary"),
    path("<slug:tenant>/devices/<str:device>/credentials/", onboarding.credentials, name="credentials"),
    path("<slug:tenant>/devices/<str:device>/consumer/", onboarding.consumer, name="consumer"),
]
