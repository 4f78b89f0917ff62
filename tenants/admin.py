"""The Sluice console (Django admin): tenants, memberships, API tokens and the audit log.

Scoping and permissions come from ``TenantScopedAdmin``; every write calls a service."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from config.errors import SluiceError
from tenants import selectors, services
from tenants.admin_scoping import TenantScopedAdmin, status_badge
from tenants.audit import Actor
from tenants.models import SLUG_RULE, ApiToken, AuditEvent, Membership, Tenant
from tenants.scoping import scope_for

if TYPE_CHECKING:
    # django-stubs' name for what get_fieldsets returns.
    from django.contrib.admin.options import _FieldsetSpec as FieldsetSpec

# The site itself (titles, the index's overview) is config.console.SluiceAdminSite.

QUOTA_FIELDS = ("max_devices", "max_streams", "max_partitions", "max_records_per_second", "max_bytes_per_second",
                "kafka_producer_byte_rate", "kafka_consumer_byte_rate", "kafka_request_percentage")  # fmt: skip
OPERATOR_ONLY_FIELDS = ("status", *QUOTA_FIELDS, "topic_deletion_policy")


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin[Tenant]):
    tenant_lookup = "pk"
    operator_only_add = True
    operator_only_delete = True
    immutable_fields = ("slug",)
    list_display = ("slug", "name", "status_display", "device_count", "stream_count", "max_devices", "max_streams",
                    "max_partitions", "created_at")  # fmt: skip
    list_display_links = ("slug", "name")
    list_filter = ("status", "topic_deletion_policy")
    search_fields = ("slug", "name")
    readonly_fields = ("topic_prefix", "dlq_topic", "created_at", "updated_at")
    actions = ("suspend", "resume")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return (
            super()
            .get_queryset(request)
            .annotate(device_total=Count("devices", distinct=True), stream_total=Count("streams", distinct=True))
        )

    def get_fieldsets(self, request: HttpRequest, obj: Tenant | None = None) -> FieldsetSpec:
        if obj is None:
            return [
                (None, {"fields": ("slug", "name")}),
                ("Quotas", {"fields": QUOTA_FIELDS}),
                ("Kafka", {"fields": ("topic_deletion_policy",)}),
            ]
        return [
            (None, {"fields": ("slug", "name", "status")}),
            ("Quotas", {"fields": QUOTA_FIELDS}),
            ("Kafka", {"fields": ("topic_prefix", "dlq_topic", "topic_deletion_policy")}),
            ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> tuple[str, ...]:
        fields = super().get_readonly_fields(request, obj)
        if obj is not None and not self.scope(request).is_operator:
            # Tenant admins rename their tenant; quotas, status and topic policy are the operators'.
            fields += OPERATOR_ONLY_FIELDS
        return fields

    def formfield_for_dbfield(self, db_field: models.Field, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "slug" and field is not None:
            field.help_text = f"{SLUG_RULE}. Used in Kafka topic names (iot.&lt;slug&gt;.…); cannot be changed later."
        return field

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Tenant) -> str:
        return status_badge(obj.status)

    @admin.display(description="devices", ordering="device_total")
    def device_count(self, obj: Tenant) -> int:
        return obj.device_total  # type: ignore[attr-defined]

    @admin.display(description="streams", ordering="stream_total")
    def stream_count(self, obj: Tenant) -> int:
        return obj.stream_total  # type: ignore[attr-defined]

    # -- services ----------------------------------------------------------------------

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> Tenant:
        return services.tenant_create(actor=actor, **data)

    def service_update(self, request: HttpRequest, actor: Actor, obj: Tenant, changes: dict[str, Any]) -> Tenant:
        status = changes.pop("status", None)
        if changes:
            obj = services.tenant_update(actor=actor, tenant=obj, **changes)
        if status is not None:
            obj = services.tenant_set_status(actor=actor, tenant=obj, status=status)
        return obj

    def service_delete(self, request: HttpRequest, actor: Actor, obj: Tenant) -> None:
        # The admin's confirmation page is the confirmation the service asks for.
        services.tenant_delete(actor=actor, tenant=obj, confirm=obj.slug)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list[Any], dict[str, int], set, list]:
        """What deleting a tenant removes, the way ``tenant_delete`` does it (devices, then
        groups, then the tenant), instead of Django's cascade walk, which stops at the
        PROTECT between devices and their group."""
        deleted: list[Any] = []
        counts: dict[str, int] = {}
        for tenant in objs:
            topics = [s.topic for s in tenant.streams.select_related("tenant")] + [tenant.dlq_topic]
            keep = tenant.topic_deletion_policy == Tenant.TopicPolicy.KEEP
            parts = {
                "devices": tenant.devices.count(),
                "device groups": tenant.groups.count(),
                "streams": tenant.streams.count(),
                "memberships": tenant.memberships.count(),
            }
            for label, count in parts.items():
                counts[label] = counts.get(label, 0) + count
            counts["tenants"] = counts.get("tenants", 0) + 1
            deleted.append(f"Tenant: {tenant.slug} ({tenant.name})")
            deleted.append(
                [f"{count} {label}" for label, count in parts.items()]
                + [f"Kafka topics {'kept' if keep else 'deleted'}: {', '.join(topics)}"]
            )
        return deleted, counts, set(), []

    @admin.action(description="Suspend selected tenants (ingest stops at once)", permissions=["operator"])
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._set_status(request, queryset, Tenant.Status.SUSPENDED)

    @admin.action(description="Resume selected tenants", permissions=["operator"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._set_status(request, queryset, Tenant.Status.ACTIVE)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Tenant], status: str) -> None:
        done = []
        for tenant in queryset:
            try:
                services.tenant_set_status(actor=self.actor(request), tenant=tenant, status=status)
                done.append(tenant.slug)
            except SluiceError as exc:
                self.message_user(request, f"{tenant.slug}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Set {', '.join(done)} to {status}.", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin[Membership]):
    # Adding offers every user of the platform, so only operators add; tenant admins change
    # roles in their tenants (or add members by username through the API).  There is no
    # service that removes a membership, so the admin does not delete them either.
    operator_only_add = True
    immutable_fields = ("user", "tenant")
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role", ("tenant", admin.RelatedOnlyFieldListFilter))
    search_fields = ("user__username", "tenant__slug")
    list_select_related = ("user", "tenant")
    fields = ("user", "tenant", "role", "created_at")
    readonly_fields = ("created_at",)

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> Membership:
        return services.membership_set(actor=actor, tenant=data["tenant"], username=data["user"].get_username(),
                                       role=data["role"])  # fmt: skip

    def service_update(self, request: HttpRequest, actor: Actor, obj: Membership,
                       changes: dict[str, Any]) -> Membership:  # fmt: skip
        return services.membership_set(actor=actor, tenant=obj.tenant, username=obj.user.get_username(),
                                       role=changes.get("role", obj.role))  # fmt: skip


@admin.register(ApiToken)
class ApiTokenAdmin(TenantScopedAdmin[ApiToken]):
    """Tokens are created through the API (the secret is shown once there); here they are
    only listed.  The secret's hash is never shown."""

    read_only = True
    fields = ("user", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at")
    exclude = ("secret_hash",)
    readonly_fields = fields
    list_display = ("prefix", "name", "user", "state", "created_at", "expires_at", "last_used_at")
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)

    def scope_queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        # Tokens belong to users, not tenants: operators see all, everyone else their own.
        return selectors.api_token_list(scope=self.scope(request), own=False)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        if self.scope(request).is_operator:
            return True
        return obj is None or getattr(obj, "user_id", None) == request.user.pk

    @admin.display(description="state")
    def state(self, obj: ApiToken) -> str:
        if obj.revoked_at is not None:
            return status_badge("failed", "revoked")
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return status_badge("disabled", "expired")
        return status_badge("active")


@admin.register(AuditEvent)
class AuditEventAdmin(TenantScopedAdmin[AuditEvent]):
    """The append-only audit log: searchable, filterable, never editable.  Events of a
    deleted tenant (or of no tenant) are visible to operators only."""

    read_only = True
    list_display = ("created_at", "tenant_slug", "actor_label", "action", "object_type", "object_repr")
    list_filter = ("tenant_slug", "action")
    search_fields = ("action", "object_repr", "object_id", "actor_label", "tenant_slug", "request_id")
    date_hierarchy = "created_at"
    fields = ("created_at", "tenant_slug", "actor_label", "action", "object_type", "object_id", "object_repr",
              "before_json", "after_json", "request_id")  # fmt: skip
    readonly_fields = fields

    @admin.display(description="before")
    def before_json(self, obj: AuditEvent) -> str:
        return _pretty(obj.before)

    @admin.display(description="after")
    def after_json(self, obj: AuditEvent) -> str:
        return _pretty(obj.after)


def _pretty(value: Any) -> str:
    if value is None:
        return "—"
    return format_html(
        '<pre style="margin:0;white-space:pre-wrap">{}</pre>', json.dumps(value, indent=2, sort_keys=True)
    )


class OperatorsOnlyQueryset:
    """Django's users and groups are the platform's: only operators see any.  With the stock
    querysets a tenant admin got 403 for an existing user's history page and the "doesn't
    exist" redirect for a free id, which told them who exists in other tenants."""

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        return queryset if scope_for(request.user).is_operator else queryset.none()


class SluiceUserAdmin(OperatorsOnlyQueryset, UserAdmin):
    pass


class SluiceGroupAdmin(OperatorsOnlyQueryset, GroupAdmin):
    pass


for _model, _model_admin in ((get_user_model(), SluiceUserAdmin), (Group, SluiceGroupAdmin)):
    admin.site.unregister(_model)
    admin.site.register(_model, _model_admin)

# OAuth clients live with the authorization server; importing registers their admin page.
from tenants.oauth import admin as oauth_admin  # noqa: E402, F401
