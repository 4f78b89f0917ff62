"""The Sluice console (Django admin): streams, device groups and devices.

Scoping and permissions come from ``TenantScopedAdmin``; every write calls a service, so
streams are provisioned in Kafka after the admin's transaction commits."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator

from devices import services
from devices.models import Device, DeviceGroup, Stream
from tenants.admin import status_badge
from tenants.admin_scoping import ServiceForm, TenantScopedAdmin
from tenants.audit import Actor

TENANT_FILTER = ("tenant", admin.RelatedOnlyFieldListFilter)


@admin.register(Stream)
class StreamAdmin(TenantScopedAdmin):
    immutable_fields = ("tenant", "region", "type", "retention_class", "replication_factor")
    list_display = ("kafka_topic", "tenant", "status_display", "partitions", "replication_factor", "retention_class",
                    "compression", "provisioned_at", "error_summary")  # fmt: skip
    list_filter = ("status", "retention_class", TENANT_FILTER)
    search_fields = ("tenant__slug", "region", "type", "last_error")
    list_select_related = ("tenant",)
    readonly_fields = ("kafka_topic", "status_display", "last_error", "provisioned_at", "created_at", "updated_at")

    def get_fieldsets(self, request: HttpRequest, obj: Stream | None = None) -> list[tuple[str | None, dict]]:
        topic = ("retention_class", "custom_retention_hours", "partitions", "replication_factor", "compression",
                 "cleanup_policy")  # fmt: skip
        if obj is None:
            return [
                (None, {"fields": ("tenant", "region", "type"),
                        "description": "The topic is iot.&lt;tenant&gt;.&lt;region&gt;.&lt;type&gt; "
                                       "(.enriched for the enriched retention class)."}),
                ("Kafka topic", {"fields": topic}),
            ]  # fmt: skip
        return [
            (None, {"fields": ("kafka_topic", "tenant", "region", "type")}),
            ("Provisioning", {"fields": ("status_display", "last_error", "provisioned_at")}),
            ("Kafka topic", {"fields": topic}),
            ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        ]

    @admin.display(description="Kafka topic")
    def kafka_topic(self, obj: Stream) -> str:
        return obj.topic if obj.tenant_id else "—"

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Stream) -> str:
        return status_badge(obj.status)

    @admin.display(description="last error")
    def error_summary(self, obj: Stream) -> str:
        return Truncator(obj.last_error).chars(80) if obj.last_error else ""

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> Stream:
        return services.stream_create(actor=actor, **data)

    def service_update(self, request: HttpRequest, actor: Actor, obj: Stream, changes: dict[str, Any]) -> Stream:
        return services.stream_update(actor=actor, stream=obj, **changes)

    def service_delete(self, request: HttpRequest, actor: Actor, obj: Stream) -> None:
        services.stream_delete(actor=actor, stream=obj)


class DeviceGroupForm(ServiceForm):
    """Region and device type follow the stream (``DeviceGroup.follow_stream``): left empty
    they are taken from it, and a group moved to another stream takes that stream's, unless
    the same change names them (then they must match it)."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "stream" in self.changed_data and self.instance.pk is not None:
            for name in DeviceGroup.FOLLOWS_STREAM:
                if name not in self.changed_data:
                    cleaned[name] = ""
        return cleaned


@admin.register(DeviceGroup)
class DeviceGroupAdmin(TenantScopedAdmin):
    form = DeviceGroupForm
    immutable_fields = ("tenant", "slug")
    list_display = ("slug", "tenant", "name", "stream", "credential_policy", "kafka_direct", "rate_limit_per_second",
                    "device_count")  # fmt: skip
    list_filter = ("credential_policy", "kafka_direct", TENANT_FILTER)
    search_fields = ("slug", "name", "tenant__slug", "schema_subject")
    list_select_related = ("tenant", "stream__tenant")
    readonly_fields = ("kafka_principal", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeviceGroup]:
        return super().get_queryset(request).annotate(device_total=Count("devices"))

    def get_fieldsets(self, request: HttpRequest, obj: DeviceGroup | None = None) -> list[tuple[str | None, dict]]:
        identity = ("tenant", "slug", "name") if obj is None else ("tenant", "slug", "name", "kafka_principal")
        fieldsets: list[tuple[str | None, dict]] = [
            (None, {"fields": identity}),
            ("Data", {"fields": ("region", "device_type", "stream", "schema_subject", "rate_limit_per_second")}),
            ("Credentials", {"fields": ("credential_policy", "kafka_direct", "cert_key_type", "cert_lifetime_days",
                                        "cert_renewal_window_days")}),
        ]  # fmt: skip
        if obj is not None:
            fieldsets.append(("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}))
        return fieldsets

    @admin.display(description="devices", ordering="device_total")
    def device_count(self, obj: DeviceGroup) -> int:
        return obj.device_total  # type: ignore[attr-defined]

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> DeviceGroup:
        return services.group_create(actor=actor, **data)

    def service_update(self, request: HttpRequest, actor: Actor, obj: DeviceGroup,
                       changes: dict[str, Any]) -> DeviceGroup:  # fmt: skip
        return services.group_update(actor=actor, group=obj, **changes)

    def service_delete(self, request: HttpRequest, actor: Actor, obj: DeviceGroup) -> None:
        services.group_delete(actor=actor, group=obj)


@admin.register(Device)
class DeviceAdmin(TenantScopedAdmin):
    immutable_fields = ("tenant", "device_id")
    list_display = ("device_id", "tenant", "group", "status_display", "last_seen_at", "created_at")
    list_filter = ("status", TENANT_FILTER, ("group", admin.RelatedOnlyFieldListFilter))
    search_fields = ("device_id", "tenant__slug", "group__slug")
    list_select_related = ("tenant", "group__tenant")
    readonly_fields = ("last_seen_at", "created_at", "updated_at")
    show_full_result_count = False  # tenants have up to 100k devices; skip the second COUNT(*)

    def get_fields(self, request: HttpRequest, obj: Device | None = None) -> list[str]:
        fields = ["tenant", "device_id", "group", "status", "labels"]
        return fields if obj is None else [*fields, "last_seen_at", "created_at", "updated_at"]

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Device) -> str:
        return status_badge(obj.status)

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> Device:
        return services.device_create(actor=actor, **data)

    def service_update(self, request: HttpRequest, actor: Actor, obj: Device, changes: dict[str, Any]) -> Device:
        return services.device_update(actor=actor, device=obj, **changes)

    def service_delete(self, request: HttpRequest, actor: Actor, obj: Device) -> None:
        services.device_delete(actor=actor, device=obj)
