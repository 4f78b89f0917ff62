"""Tenants, members, audit log and API tokens over REST.  Views parse, call one service or
selector, and render; scoping and errors are handled by the shared base and handler."""

from __future__ import annotations

from typing import Any

import django_filters
from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import InvalidInput, PermissionDenied
from tenants import services
from tenants.api_base import ScopedApi, StrictSerializer
from tenants.models import ApiToken, AuditEvent, Membership, Tenant

OPERATOR_ONLY_FIELDS = {"max_devices", "max_streams", "max_partitions", "max_records_per_second", "max_bytes_per_second",
                        "topic_deletion_policy"}  # fmt: skip


class TenantOutput(serializers.ModelSerializer):
    topic_prefix = serializers.CharField(read_only=True)
    dlq_topic = serializers.CharField(read_only=True)

    class Meta:
        model = Tenant
        fields = ("slug", "name", "status", "max_devices", "max_streams", "max_partitions", "max_records_per_second",
                  "max_bytes_per_second", "topic_deletion_policy", "topic_prefix", "dlq_topic", "created_at",
                  "updated_at")  # fmt: skip


class TenantInput(StrictSerializer):
    slug = serializers.CharField(max_length=40)
    name = serializers.CharField(max_length=200)
    max_devices = serializers.IntegerField(min_value=1, required=False)
    max_streams = serializers.IntegerField(min_value=1, required=False)
    max_partitions = serializers.IntegerField(min_value=1, required=False)
    max_records_per_second = serializers.IntegerField(min_value=1, required=False)
    max_bytes_per_second = serializers.IntegerField(min_value=1, required=False)
    topic_deletion_policy = serializers.ChoiceField(Tenant.TopicPolicy.choices, required=False)


class TenantUpdateInput(TenantInput):
    slug = None  # type: ignore[assignment]


class TenantListApi(ScopedApi):
    @extend_schema(responses=TenantOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.page(self.scope.tenants(), TenantOutput)

    @extend_schema(request=TenantInput, responses={201: TenantOutput})
    def post(self, request: Request) -> Response:
        self.scope.require_operator()
        tenant = services.tenant_create(actor=self.actor, **self.parse(TenantInput))
        return Response(TenantOutput(tenant).data, status=status.HTTP_201_CREATED)


class TenantDetailApi(ScopedApi):
    @extend_schema(responses=TenantOutput)
    def get(self, request: Request, tenant: str) -> Response:
        return Response(TenantOutput(self.tenant).data)

    @extend_schema(request=TenantUpdateInput, responses=TenantOutput)
    def patch(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        changes = self.parse(TenantUpdateInput, partial=True)
        if OPERATOR_ONLY_FIELDS & set(changes):
            self.scope.require_operator()
        return Response(TenantOutput(services.tenant_update(actor=self.actor, tenant=target, **changes)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str) -> Response:
        target = self.tenant
        self.scope.require_operator()
        confirm = request.query_params.get("confirm") or (request.data or {}).get("confirm", "")
        services.tenant_delete(actor=self.actor, tenant=target, confirm=str(confirm))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantSuspendApi(ScopedApi):
    new_status = Tenant.Status.SUSPENDED

    @extend_schema(request=None, responses=TenantOutput)
    def post(self, request: Request, tenant: str) -> Response:
        target = self.tenant
        self.scope.require_operator()
        return Response(
            TenantOutput(services.tenant_set_status(actor=self.actor, tenant=target, status=self.new_status)).data
        )


class TenantResumeApi(TenantSuspendApi):
    new_status = Tenant.Status.ACTIVE


class MembershipOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ("username", "role", "created_at")


class MembershipInput(StrictSerializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(Membership.Role.choices)


class MembershipListApi(ScopedApi):
    @extend_schema(responses=MembershipOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(self.tenant.memberships.select_related("user").order_by("user__username"), MembershipOutput)

    @extend_schema(request=MembershipInput, responses={201: MembershipOutput})
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        membership = services.membership_set(actor=self.actor, tenant=target, **self.parse(MembershipInput))
        return Response(MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


class AuditOutput(serializers.ModelSerializer):
    tenant = serializers.CharField(source="tenant_slug")
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = AuditEvent
        fields = ("id", "created_at", "tenant", "actor", "action", "object_type", "object_id", "object_repr",
                  "before", "after", "request_id")  # fmt: skip


class AuditFilter(django_filters.FilterSet):
    action = django_filters.CharFilter()
    object_type = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = AuditEvent
        fields = ("action", "object_type", "since")


class AuditListApi(ScopedApi):
    @extend_schema(responses=AuditOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        events = AuditEvent.objects.filter(tenant_slug=self.tenant.slug, tenant=self.tenant)
        return self.page(self.filtered(AuditFilter, events, request), AuditOutput)


class ReconcileApi(ScopedApi):
    @extend_schema(request=None, responses={200: dict})
    def post(self, request: Request, tenant: str) -> Response:
        from devices.services import topics_reconcile

        target = self.tenant
        self.scope.require_operator()
        fix = request.query_params.get("fix", "true").lower() not in ("0", "false", "no")
        report = topics_reconcile(tenant=target, fix=fix)
        return Response({"drift": report.drift, "fixed": report.fixed, "unmanaged": report.unmanaged})


class TokenOutput(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ("prefix", "name", "created_at", "expires_at", "last_used_at", "revoked_at")


class TokenInput(StrictSerializer):
    name = serializers.CharField(max_length=100)


class TokenListApi(ScopedApi):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not isinstance(request.user, get_user_model()):
            raise PermissionDenied("API tokens belong to user accounts; an OAuth client has none.")

    @extend_schema(responses=TokenOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.page(ApiToken.objects.filter(user=request.user).order_by("-created_at"), TokenOutput)

    @extend_schema(request=TokenInput, responses={201: dict})
    def post(self, request: Request) -> Response:
        if request.auth is not None:
            raise InvalidInput("Create API tokens from a logged-in session, not with another token.")
        token, secret = services.api_token_create(actor=self.actor, user=request.user, **self.parse(TokenInput))
        data: dict[str, Any] = dict(TokenOutput(token).data)
        data["token"] = secret  # shown once; only its hash is stored
        return Response(data, status=status.HTTP_201_CREATED)
