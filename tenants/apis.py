"""Tenants, members, audit log and API tokens over REST.  Views parse, call one service or
selector, and render; scoping and errors are handled by the shared base and handler."""

from __future__ import annotations

import datetime as dt
from typing import Any

import django_filters
from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import PermissionDenied
from tenants import selectors, services
from tenants.api_base import NulFreeCharField, ScopedApi, StrictSerializer, slug_field
from tenants.models import ApiToken, AuditEvent, Membership, Tenant

OPERATOR_ONLY_FIELDS = {"max_devices", "max_streams", "max_partitions", "max_records_per_second",
                        "max_bytes_per_second", "topic_deletion_policy", "kafka_producer_byte_rate",
                        "kafka_consumer_byte_rate", "kafka_request_percentage"}  # fmt: skip
# Upper bounds of the operator-set limits: far above any real tenant, well inside the
# database's integer range.
MAX_QUOTA = 2**31 - 1


class TenantOutput(serializers.ModelSerializer):
    topic_prefix = serializers.CharField(read_only=True)
    dlq_topic = serializers.CharField(read_only=True)

    class Meta:
        model = Tenant
        fields = ("slug", "name", "status", "max_devices", "max_streams", "max_partitions", "max_records_per_second",
                  "max_bytes_per_second", "topic_deletion_policy", "kafka_producer_byte_rate",
                  "kafka_consumer_byte_rate", "kafka_request_percentage", "topic_prefix", "dlq_topic", "created_at",
                  "updated_at")  # fmt: skip


def _quota(help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=MAX_QUOTA, required=False, help_text=help_text)


class TenantInput(StrictSerializer):
    slug = slug_field(help_text="Used in Kafka topic names and principals; cannot be changed.")
    name = NulFreeCharField(max_length=200)
    max_devices = _quota("Devices the tenant may have (operators only).")
    max_streams = _quota("Streams (Kafka topics) the tenant may have (operators only; default 50).")
    max_partitions = _quota("Partitions all the tenant's streams may have together (operators only; default 1000).")
    max_records_per_second = _quota("Ingest records per second, whole tenant (operators only).")
    max_bytes_per_second = _quota("Ingest bytes per second, whole tenant (operators only).")
    topic_deletion_policy = serializers.ChoiceField(Tenant.TopicPolicy.choices, required=False)
    kafka_producer_byte_rate = serializers.IntegerField(
        min_value=1024, max_value=MAX_QUOTA, required=False,
        help_text="Bytes/s each Kafka-direct credential may produce (broker quota; operators only).",
    )  # fmt: skip
    kafka_consumer_byte_rate = serializers.IntegerField(
        min_value=1024, max_value=MAX_QUOTA, required=False,
        help_text="Bytes/s each consumer credential may fetch (broker quota; operators only).",
    )  # fmt: skip
    kafka_request_percentage = serializers.FloatField(
        min_value=0.1, max_value=1000.0, required=False,
        help_text="Percent of a broker thread each Kafka-direct or consumer credential may use (broker quota).",
    )  # fmt: skip


class TenantUpdateInput(TenantInput):
    slug = None  # type: ignore[assignment]


class TenantListApi(ScopedApi):
    @extend_schema(responses=TenantOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.page(selectors.tenant_list(scope=self.scope), TenantOutput)

    @extend_schema(request=TenantInput, responses={201: TenantOutput}, description="Operators only.")
    def post(self, request: Request) -> Response:
        self.scope.require_operator()
        tenant = services.tenant_create(actor=self.actor, **self.parse(TenantInput))
        return Response(TenantOutput(tenant).data, status=status.HTTP_201_CREATED)


CONFIRM = OpenApiParameter(
    "confirm", str, OpenApiParameter.QUERY, required=True, pattern=r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$",
    description="The tenant's slug, typed again; any other value is refused with 409 `conflict`.",
)  # fmt: skip


class TenantDetailApi(ScopedApi):
    @extend_schema(responses=TenantOutput)
    def get(self, request: Request, tenant: str) -> Response:
        return Response(TenantOutput(self.tenant).data)

    @extend_schema(
        request=TenantUpdateInput,
        responses=TenantOutput,
        description="Tenant admins change the name; the limits and the topic policy are operators'.",
    )
    def patch(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        changes = self.parse(TenantUpdateInput, partial=True)
        if OPERATOR_ONLY_FIELDS & set(changes):
            self.scope.require_operator()
        return Response(TenantOutput(services.tenant_update(actor=self.actor, tenant=target, **changes)).data)

    @extend_schema(parameters=[CONFIRM], responses={204: None}, description="Operators only.")
    def delete(self, request: Request, tenant: str) -> Response:
        target = self.tenant
        self.scope.require_operator()
        self.check_query()
        if "confirm" not in request.query_params:
            detail = serializers.ErrorDetail(f"Confirm with the tenant's slug: ?confirm={target.slug}", code="required")
            raise serializers.ValidationError({"confirm": [detail]})
        services.tenant_delete(actor=self.actor, tenant=target, confirm=request.query_params["confirm"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantSuspendApi(ScopedApi):
    new_status = Tenant.Status.SUSPENDED

    @extend_schema(request=None, responses=TenantOutput, description="Operators only.")
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
    username = NulFreeCharField(max_length=150)
    role = serializers.ChoiceField(Membership.Role.choices)


class MembershipListApi(ScopedApi):
    @extend_schema(responses=MembershipOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(selectors.membership_list(scope=self.tenant_scope), MembershipOutput)

    @extend_schema(request=MembershipInput, responses={201: MembershipOutput},
                   description="Gives an account a role in the tenant (or changes it).")  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        membership = services.membership_set(actor=self.actor, tenant=target, **self.parse(MembershipInput))
        return Response(MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


@extend_schema_field({"type": "object", "description": "The object's fields as they were (before) or "
                     "became (after) the action; null when it did not exist."})  # fmt: skip
class AuditSnapshot(serializers.JSONField):
    """drf-spectacular's OpenAPI 3.1 form of a nullable JSONField is ``oneOf: [{}, null]``, which
    refuses null (it matches both); an audit snapshot is an object or null."""


class AuditOutput(serializers.ModelSerializer):
    tenant = serializers.CharField(source="tenant_slug")
    actor = serializers.CharField(source="actor_label")
    before = AuditSnapshot(allow_null=True)
    after = AuditSnapshot(allow_null=True)

    class Meta:
        model = AuditEvent
        fields = ("id", "created_at", "tenant", "actor", "action", "object_type", "object_id", "object_repr",
                  "before", "after", "request_id")  # fmt: skip


def in_utc(moment: dt.datetime) -> dt.datetime:
    """The same instant in UTC; one before year 1 or after year 9999 in UTC (Python's range)
    becomes that range's end, which compares the same with every stored time."""
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        return (dt.datetime.min if moment.year == 1 else dt.datetime.max).replace(tzinfo=dt.UTC)


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time compared in UTC.  ISO 8601 allows offsets up to 23:59, PostgreSQL up
    to 15:59: a time sent with its own offset (``+21:55``) would be refused by the database
    (a 500) instead of compared."""

    def filter(self, qs: Any, value: Any) -> Any:
        return super().filter(qs, in_utc(value) if isinstance(value, dt.datetime) else value)


class AuditFilter(django_filters.FilterSet):
    action = django_filters.CharFilter()
    object_type = django_filters.CharFilter()
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = AuditEvent
        fields = ("action", "object_type", "since")


AUDIT_PARAMETERS = [
    OpenApiParameter("action", str, description="e.g. device.create"),
    OpenApiParameter("object_type", str, description="e.g. devices.device"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="Events at or after this time (ISO 8601)."),
]


class AuditListApi(ScopedApi):
    @extend_schema(parameters=AUDIT_PARAMETERS, responses=AuditOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        events = selectors.audit_event_list(scope=self.tenant_scope)
        return self.page(self.filtered(AuditFilter, events), AuditOutput)


class TokenOutput(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields: tuple[str, ...] = ("prefix", "name", "created_at", "expires_at", "last_used_at", "revoked_at")


class TokenSecretOutput(TokenOutput):
    token = serializers.CharField(help_text="The secret: shown once, only its hash is stored.")

    class Meta(TokenOutput.Meta):
        fields = (*TokenOutput.Meta.fields, "token")


class TokenInput(StrictSerializer):
    name = NulFreeCharField(max_length=100)


class TokenListApi(ScopedApi):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not isinstance(request.user, get_user_model()):
            raise PermissionDenied("API tokens belong to user accounts; an OAuth client has none.")

    @extend_schema(responses=TokenOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.page(selectors.api_token_list(scope=self.scope), TokenOutput)

    @extend_schema(request=TokenInput, responses={201: TokenSecretOutput},
                   description="From a logged-in session only: a token cannot mint another (403).")  # fmt: skip
    def post(self, request: Request) -> Response:
        if request.auth is not None:
            raise PermissionDenied("Create API tokens from a logged-in session, not with another token.")
        token, secret = services.api_token_create(actor=self.actor, user=request.user, **self.parse(TokenInput))
        data: dict[str, Any] = dict(TokenOutput(token).data)
        data["token"] = secret  # shown once; only its hash is stored
        return Response(data, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})
