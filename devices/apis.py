"""Streams, device groups and devices over REST, all under ``/api/v1/tenants/<tenant>/``."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, ClassVar

import django_filters
from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from devices import registry, selectors, services
from devices.models import (
    DEVICE_ID_RULE,
    EXPECTED_INTERVAL_DEFAULT,
    EXPECTED_INTERVAL_MAX,
    EXPECTED_INTERVAL_MIN,
    Consumer,
    Device,
    DeviceGroup,
    Stream,
)
from tenants.api_base import MAX_ID, NulFreeCharField, ScopedApi, StrictSerializer, path_id, slug_field, slug_rule
from tenants.scoping import Scope

# The model's device-id rule anchored with \Z (a "$" pattern lets a final newline through).
device_id_rule = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z", message=f"Must be {DEVICE_ID_RULE}.", code="invalid_device_id"
)


def device_id_field(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(max_length=128, validators=[device_id_rule], trim_whitespace=False, **kwargs)


# -- streams ---------------------------------------------------------------------------


class StreamOutput(serializers.ModelSerializer):
    topic = serializers.CharField(read_only=True)
    retention_ms = serializers.IntegerField(read_only=True)

    class Meta:
        model = Stream
        fields = ("id", "topic", "region", "type", "retention_class", "custom_retention_hours", "retention_ms",
                  "partitions", "replication_factor", "compression", "cleanup_policy", "status", "last_error",
                  "provisioned_at", "created_at", "updated_at")  # fmt: skip


MAX_RETENTION_HOURS = 24 * 3650
PARTITIONS_HELP = (f"At most {services.MAX_STREAM_PARTITIONS}, and within the tenant's max_partitions for all its "
                   "streams together (409 quota_exceeded).")  # fmt: skip


def _partitions() -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=services.MAX_STREAM_PARTITIONS, required=False,
                                    help_text=PARTITIONS_HELP)  # fmt: skip


def _retention_hours() -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=MAX_RETENTION_HOURS, required=False, allow_null=True,
                                    help_text="Retention of a custom stream, in hours.")  # fmt: skip


class StreamInput(StrictSerializer):
    region = slug_field()
    type = slug_field()
    retention_class = serializers.ChoiceField(Stream.RetentionClass.choices, required=False)
    custom_retention_hours = _retention_hours()
    partitions = _partitions()
    replication_factor = serializers.IntegerField(min_value=1, max_value=7, required=False)
    compression = serializers.ChoiceField(Stream.Compression.choices, required=False)
    cleanup_policy = serializers.ChoiceField(Stream.CleanupPolicy.choices, required=False)

    # A custom stream says how long it keeps records (JSON Schema of what validate() checks).
    openapi_rules: ClassVar[dict[str, Any]] = {"anyOf": [
        {"properties": {"retention_class": {"type": "string", "enum": ["raw", "enriched"]}}},
        {"required": ["custom_retention_hours"], "properties": {"custom_retention_hours": {"type": "integer"}}},
    ]}  # fmt: skip

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("retention_class") == Stream.RetentionClass.CUSTOM and attrs.get("custom_retention_hours") is None:
            message = "Required when retention_class is custom."
            raise serializers.ValidationError(
                {"custom_retention_hours": [serializers.ErrorDetail(message, code="required")]}
            )
        return attrs


class StreamUpdateInput(StrictSerializer):
    custom_retention_hours = _retention_hours()
    partitions = _partitions()
    replication_factor = serializers.IntegerField(
        min_value=1, max_value=7, required=False, help_text="Cannot change: only the current value is accepted (409)."
    )
    compression = serializers.ChoiceField(Stream.Compression.choices, required=False)
    cleanup_policy = serializers.ChoiceField(Stream.CleanupPolicy.choices, required=False)


class StreamFilter(django_filters.FilterSet):
    class Meta:
        model = Stream
        fields = ("region", "type", "retention_class", "status")


STREAM_PARAMETERS = [
    OpenApiParameter("region", str),
    OpenApiParameter("type", str),
    OpenApiParameter("retention_class", str, enum=Stream.RetentionClass.values),
    OpenApiParameter("status", str, enum=Stream.Status.values),
]


class StreamListApi(ScopedApi):
    @extend_schema(parameters=STREAM_PARAMETERS, responses=StreamOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        streams = selectors.stream_list(scope=self.tenant_scope)
        return self.page(self.filtered(StreamFilter, streams), StreamOutput)

    @extend_schema(request=StreamInput, responses={201: StreamOutput})
    def post(self, request: Request, tenant: str) -> Response:
        stream = services.stream_create(actor=self.actor, tenant=self.writable_tenant(), **self.parse(StreamInput))
        return Response(StreamOutput(stream).data, status=status.HTTP_201_CREATED)


def tenant_stream(api: ScopedApi, pk: int) -> Stream:
    return selectors.stream_get(scope=api.tenant_scope, pk=path_id(pk, "stream"))


class StreamDetailApi(ScopedApi):
    def get_stream(self, pk: int) -> Stream:
        return tenant_stream(self, pk)

    @extend_schema(responses=StreamOutput)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        return Response(StreamOutput(self.get_stream(pk)).data)

    @extend_schema(
        request=StreamUpdateInput,
        responses=StreamOutput,
        description="Partitions only grow (409 otherwise); a custom stream keeps its retention hours.",
    )
    def patch(self, request: Request, tenant: str, pk: int) -> Response:
        stream = self.get_stream(pk)
        self.scope.require_admin(stream.tenant)
        changes = self.parse(StreamUpdateInput, partial=True)
        if stream.retention_class == Stream.RetentionClass.CUSTOM and changes.get("custom_retention_hours", 1) is None:
            message = "A custom stream needs its retention hours."
            raise Conflict(message, fields=[{"pointer": "/custom_retention_hours", "code": "required_by_state",
                                             "message": message}])  # fmt: skip
        return Response(StreamOutput(services.stream_update(actor=self.actor, stream=stream, **changes)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        stream = self.get_stream(pk)
        self.scope.require_admin(stream.tenant)
        services.stream_delete(actor=self.actor, stream=stream)
        return Response(status=status.HTTP_204_NO_CONTENT)


class StreamSchemaOutput(serializers.Serializer):
    id = serializers.IntegerField(source="schema_id", help_text="The registry's id (in every record's wire format).")
    version = serializers.IntegerField(help_text="The version under the subject (1, 2, ...).")
    type = serializers.ChoiceField(registry.SCHEMA_TYPES, source="schema_type")
    schema = serializers.CharField(source="schema_str", help_text="The schema's text.")
    subject = serializers.CharField(help_text="The stream's value subject, '<topic>-value'.")


class StreamSchemaVersionOutput(StreamSchemaOutput):
    registered_at = serializers.DateTimeField(
        allow_null=True, help_text="When it was registered through Sluice (null: registered some other way)."
    )
    registered_by = serializers.CharField(allow_null=True, help_text="Who registered it (null: as above).")


class SchemaVerdictOutput(serializers.Serializer):
    compatible = serializers.BooleanField(help_text="Always true here: an incompatible schema is a 409.")
    subject = serializers.CharField(help_text="The stream's value subject, '<topic>-value'.")
    latest_version = serializers.IntegerField(
        source="latest", allow_null=True, help_text="The version it was checked against (null: none yet)."
    )
    registered_version = serializers.IntegerField(
        source="held", allow_null=True,
        help_text="The version that already holds exactly this schema (registering it again changes nothing).",
    )  # fmt: skip


MAX_SCHEMA_CHARS = registry.MAX_SCHEMA_CHARS
SCHEMA_TYPE_CHOICE = serializers.ChoiceField(
    registry.SCHEMA_TYPES, help_text="JSON (JSON Schema), AVRO or PROTOBUF (a .proto file; its first message is the "
    "record type).",
    error_messages={"invalid_choice": '"{input}" is not a schema type Sluice supports: JSON, AVRO or PROTOBUF.'},
)  # fmt: skip


class StreamSchemaInput(StrictSerializer):
    schema_type = SCHEMA_TYPE_CHOICE
    schema = NulFreeCharField(
        max_length=MAX_SCHEMA_CHARS,
        help_text="The schema's text. JSON: a JSON Schema object with `properties` or `$schema` (the registry "
        "recognises JSON Schema by them); AVRO: an Avro schema; PROTOBUF: a .proto file (proto2 or proto3) whose "
        "first message is the record type, importing at most Protobuf's well-known types.",
    )


def _schema_text(format_name: str, what: str) -> Any:
    @extend_schema_field({"type": "string", "format": format_name, "maxLength": MAX_SCHEMA_CHARS, "description": what})
    class SchemaText(NulFreeCharField):
        pass

    return SchemaText(max_length=MAX_SCHEMA_CHARS)


class JsonSchemaInput(StrictSerializer):
    schema_type = serializers.ChoiceField([registry.JSON])
    schema = _schema_text("json-schema", "A JSON Schema object with `properties` or `$schema` (the registry "
                          "recognises JSON Schema by them).")  # fmt: skip


class AvroSchemaInput(StrictSerializer):
    schema_type = serializers.ChoiceField([registry.AVRO])
    schema = _schema_text("avro-schema", "An Avro schema.")


class ProtobufSchemaInput(StrictSerializer):
    schema_type = serializers.ChoiceField([registry.PROTOBUF])
    schema = _schema_text("protobuf-schema", "A .proto file (proto2 or proto3); its first message is the "
                          "record type; it may import Protobuf's well-known types (google/protobuf/*.proto) "
                          "only.")  # fmt: skip


# What StreamSchemaInput accepts, as the spec says it: the text is a schema of the type named
# (checked here before the registry is asked).
SCHEMA_REQUEST = PolymorphicProxySerializer(
    component_name="StreamSchemaRequest", serializers=[JsonSchemaInput, AvroSchemaInput, ProtobufSchemaInput],
    resource_type_field_name=None,
)  # fmt: skip
SCHEMA_ERRORS = (
    "Field errors: `/schema` `invalid_schema` (not parsable as its type with the parser's words -- protoc's for "
    "Protobuf --, or a JSON Schema ingest cannot run: a `pattern` with lookaround or backreferences, a reference "
    "outside the schema; a .proto importing anything but the well-known types), `/schema_type` `invalid_choice` "
    "(not JSON, AVRO or PROTOBUF); 409 `/schema` `incompatible_schema` with the registry's "
    "reasons, `/schema_type` `type_mismatch` (a stream keeps its schema type); 503 `registry_unavailable`."
)


class StreamSchemaApi(ScopedApi):
    """The schema of a stream's records: the latest version under its value subject."""

    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"get": (503,), "post": (503,)}

    @extend_schema(responses=StreamSchemaVersionOutput,
                   description="The latest version (404 `schema_not_found` while there is none).")  # fmt: skip
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        stream = tenant_stream(self, pk)
        latest = selectors.stream_schema_latest(stream=stream)
        if latest is None:
            subject = selectors.stream_schema_subject(stream=stream)
            raise NotFound(f"No schema is registered for stream {pk} (subject '{subject}').", code="schema_not_found")
        return Response(StreamSchemaVersionOutput(latest).data)

    @extend_schema(
        request=SCHEMA_REQUEST,
        responses={201: OpenApiResponse(StreamSchemaOutput, description="A new version."),
                   200: OpenApiResponse(StreamSchemaOutput, description="The subject holds this schema already.")},
        description="Registers a new version under the stream's value subject (tenant admins). The registry's "
        "compatibility rule (BACKWARD) may refuse it. " + SCHEMA_ERRORS,
    )  # fmt: skip
    def post(self, request: Request, tenant: str, pk: int) -> Response:
        stream = tenant_stream(self, pk)
        self.scope.require_admin(stream.tenant)
        data = self.parse(StreamSchemaInput)
        registered, created = services.stream_schema_register(
            actor=self.actor, stream=stream, schema_type=data["schema_type"], schema=data["schema"]
        )
        return Response(StreamSchemaOutput(registered).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)  # fmt: skip


class StreamSchemaCompatibilityApi(ScopedApi):
    """The registry's verdict on a schema as the stream's next version, registering nothing."""

    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"post": (503,)}

    @extend_schema(
        request=SCHEMA_REQUEST,
        responses={200: OpenApiResponse(SchemaVerdictOutput, description="Registering it would be accepted.")},
        description="Asks the registry whether the stream's value subject would accept this schema as its next "
        "version, without registering it (tenant admins). Answers exactly what registering it would: "
        + SCHEMA_ERRORS,
    )  # fmt: skip
    def post(self, request: Request, tenant: str, pk: int) -> Response:
        stream = tenant_stream(self, pk)
        self.scope.require_admin(stream.tenant)
        data = self.parse(StreamSchemaInput)
        verdict = selectors.stream_schema_verdict(stream=stream, schema_type=data["schema_type"],
                                                  schema=data["schema"])  # fmt: skip
        return Response(SchemaVerdictOutput(verdict).data)


class StreamSchemaVersionListApi(ScopedApi):
    """Every version of a stream's schema, newest first."""

    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"get": (503,)}

    @extend_schema(responses=StreamSchemaVersionOutput(many=True),
                   description="Newest first; an empty list while the stream has no schema.")  # fmt: skip
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        stream = tenant_stream(self, pk)
        return self.page(selectors.stream_schema_versions(stream=stream), StreamSchemaVersionOutput)  # type: ignore[arg-type]


class StreamSchemaVersionApi(ScopedApi):
    """One version of a stream's schema."""

    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"get": (503,)}

    @extend_schema(
        responses=StreamSchemaVersionOutput,
        description="404 `schema_version_not_found` when the stream's subject has no such version.",
    )
    def get(self, request: Request, tenant: str, pk: int, version: int) -> Response:
        stream = tenant_stream(self, pk)
        number = path_id(version, "version")
        # Registry versions are 32-bit (the Confluent API's); no other number can name one.
        found = selectors.stream_schema_version(stream=stream, version=number) if 1 <= number < 2**31 else None
        if found is None:
            raise NotFound(f"Stream {pk} has no schema version {number}.", code="schema_version_not_found")
        return Response(StreamSchemaVersionOutput(found).data)


# -- device groups ----------------------------------------------------------------------


class GroupOutput(serializers.ModelSerializer):
    stream = serializers.IntegerField(source="stream_id")
    topic = serializers.CharField(source="stream.topic")
    kafka_principal = serializers.CharField(read_only=True)

    class Meta:
        model = DeviceGroup
        fields = ("slug", "name", "region", "device_type", "stream", "topic", "schema_subject", "credential_policy",
                  "cert_lifetime_days", "cert_key_type", "cert_renewal_window_days", "rate_limit_per_second",
                  "expected_interval_seconds", "kafka_direct", "kafka_principal", "created_at",
                  "updated_at")  # fmt: skip


class GroupInput(StrictSerializer):
    slug = slug_field()
    name = NulFreeCharField(max_length=200, required=False, allow_blank=True)
    region = slug_field(
        required=False,
        help_text="The stream's region (default); another one is refused (409, field code contradicts_stream).",
    )
    device_type = slug_field(
        required=False,
        help_text="The stream's type (default); another one is refused (409, field code contradicts_stream).",
    )
    stream = serializers.IntegerField(min_value=1, max_value=MAX_ID, help_text="A stream of this tenant (404 if none).")
    schema_subject = NulFreeCharField(
        max_length=255, required=False,
        help_text="Registry subject in this tenant's namespace (403 foreign_subject otherwise); "
        "default: '<stream topic>-value'.",
    )  # fmt: skip
    credential_policy = serializers.ChoiceField(DeviceGroup.CredentialPolicy.choices, required=False)
    cert_lifetime_days = serializers.IntegerField(min_value=1, max_value=3650, required=False)
    cert_key_type = serializers.ChoiceField(DeviceGroup.KeyType.choices, required=False)
    cert_renewal_window_days = serializers.IntegerField(min_value=1, max_value=3650, required=False)
    rate_limit_per_second = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)
    expected_interval_seconds = serializers.IntegerField(
        min_value=EXPECTED_INTERVAL_MIN, max_value=EXPECTED_INTERVAL_MAX, required=False,
        help_text=f"How often its devices report, in seconds ({EXPECTED_INTERVAL_MIN} to {EXPECTED_INTERVAL_MAX}; "
        f"default {EXPECTED_INTERVAL_DEFAULT}): a device silent for longer is listed as silent.",
    )  # fmt: skip
    kafka_direct = serializers.BooleanField(
        required=False, help_text="Its credentials may also produce to Kafka directly (one ACL each); default false."
    )


class GroupUpdateInput(GroupInput):
    slug = None  # type: ignore[assignment]


class GroupListApi(ScopedApi):
    @extend_schema(responses=GroupOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(selectors.group_list(scope=self.tenant_scope), GroupOutput)

    @extend_schema(request=GroupInput, responses={201: GroupOutput})
    def post(self, request: Request, tenant: str) -> Response:
        group = services.group_create(actor=self.actor, tenant=self.writable_tenant(), **self.parse(GroupInput))
        return Response(GroupOutput(group).data, status=status.HTTP_201_CREATED)


class GroupDetailApi(ScopedApi):
    def get_group(self, slug: str) -> DeviceGroup:
        return selectors.group_get(scope=self.tenant_scope, slug=slug)

    @extend_schema(responses=GroupOutput)
    def get(self, request: Request, tenant: str, group: str) -> Response:
        return Response(GroupOutput(self.get_group(group)).data)

    @extend_schema(request=GroupUpdateInput, responses=GroupOutput)
    def patch(self, request: Request, tenant: str, group: str) -> Response:
        target = self.get_group(group)
        self.scope.require_admin(target.tenant)
        changes = self.parse(GroupUpdateInput, partial=True)
        return Response(GroupOutput(services.group_update(actor=self.actor, group=target, **changes)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, group: str) -> Response:
        target = self.get_group(group)
        self.scope.require_admin(target.tenant)
        services.group_delete(actor=self.actor, group=target)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- consumers --------------------------------------------------------------------------


class ConsumerOutput(serializers.ModelSerializer):
    streams = serializers.SerializerMethodField(help_text="The ids of the streams it reads (all_streams: every one).")
    topics = serializers.SerializerMethodField(help_text="The topics its credentials may read, DLQ included.")
    kafka_principal_prefix = serializers.CharField(read_only=True, help_text="Each credential's principal starts so.")
    group_prefix = serializers.CharField(read_only=True, help_text="Its consumer group ids must start so.")

    class Meta:
        model = Consumer
        fields = ("slug", "name", "status", "all_streams", "streams", "dead_letters", "topics",
                  "kafka_principal_prefix", "group_prefix", "created_at", "updated_at")  # fmt: skip

    def get_streams(self, obj: Consumer) -> list[int]:
        streams = selectors.stream_list(scope=Scope.of_tenant(obj.tenant)) if obj.all_streams else obj.streams.all()
        return sorted(s.pk for s in streams)

    def get_topics(self, obj: Consumer) -> list[str]:
        return selectors.consumer_topics(consumer=obj)


class ConsumerInput(StrictSerializer):
    slug = slug_field()
    name = NulFreeCharField(max_length=200, required=False, allow_blank=True)
    all_streams = serializers.BooleanField(
        required=False, help_text="Read every stream of the tenant, present and future (default unless streams)."
    )
    streams = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), required=False, max_length=1000,
        help_text="Read these streams of this tenant only (404 for one it does not have).",
    )  # fmt: skip
    dead_letters = serializers.BooleanField(required=False, help_text="Also read the tenant's DLQ; default false.")
    status = serializers.ChoiceField(Consumer.Status.choices, required=False)


class ConsumerUpdateInput(ConsumerInput):
    slug = None  # type: ignore[assignment]


class ConsumerListApi(ScopedApi):
    @extend_schema(responses=ConsumerOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(selectors.consumer_list(scope=self.tenant_scope), ConsumerOutput)

    @extend_schema(request=ConsumerInput, responses={201: ConsumerOutput})
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        consumer = services.consumer_create(actor=self.actor, tenant=target, **self.parse(ConsumerInput))
        return Response(ConsumerOutput(consumer).data, status=status.HTTP_201_CREATED)


class ConsumerDetailApi(ScopedApi):
    def get_consumer(self, slug: str) -> Consumer:
        return selectors.consumer_get(scope=self.tenant_scope, slug=slug)

    @extend_schema(responses=ConsumerOutput)
    def get(self, request: Request, tenant: str, consumer: str) -> Response:
        return Response(ConsumerOutput(self.get_consumer(consumer)).data)

    @extend_schema(request=ConsumerUpdateInput, responses=ConsumerOutput)
    def patch(self, request: Request, tenant: str, consumer: str) -> Response:
        """Disabling a consumer takes every Kafka grant of its credentials away at once;
        narrowing its streams takes those topics'."""
        target = self.get_consumer(consumer)
        self.scope.require_admin(target.tenant)
        changes = self.parse(ConsumerUpdateInput, partial=True)
        return Response(ConsumerOutput(services.consumer_update(actor=self.actor, consumer=target, **changes)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, consumer: str) -> Response:
        """Delete the consumer: its certificates are revoked, its OAuth clients removed, and
        its Kafka grants go at once."""
        target = self.get_consumer(consumer)
        self.scope.require_admin(target.tenant)
        services.consumer_delete(actor=self.actor, consumer=target)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- devices ----------------------------------------------------------------------------


class DeviceOutput(serializers.ModelSerializer):
    group = serializers.CharField(source="group.slug")

    class Meta:
        model = Device
        fields = ("device_id", "group", "status", "labels", "last_seen_at", "created_at", "updated_at")


class LabelValue(serializers.CharField):
    """A label value: a string, never a number or boolean coerced into one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Labels(serializers.DictField):
    """A device's labels: string keys to string values; a key may not hold NUL (no database
    can store it, and the document says so with ``propertyNames``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=LabelValue(max_length=256, allow_blank=True), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict) and any(isinstance(key, str) and "\x00" in key for key in data):
            raise serializers.ValidationError("A label's name may not contain a NUL character.")
        return super().to_internal_value(data)


class DeviceInput(StrictSerializer):
    device_id = device_id_field()
    group = slug_field(help_text="A device group of this tenant, by slug (404 if none).")
    status = serializers.ChoiceField(Device.Status.choices, required=False)
    labels = Labels(required=False)


class DeviceUpdateInput(DeviceInput):
    device_id = None  # type: ignore[assignment]


class DeviceFilter(django_filters.FilterSet):
    group = django_filters.CharFilter(field_name="group__slug")
    status = django_filters.ChoiceFilter(choices=Device.Status.choices)
    device_id_prefix = django_filters.CharFilter(field_name="device_id", lookup_expr="startswith")

    class Meta:
        model = Device
        fields = ("group", "status", "device_id_prefix")


DEVICE_PARAMETERS = [
    OpenApiParameter("group", str, description="Devices of this group (slug)."),
    OpenApiParameter("status", str, enum=Device.Status.values),
    OpenApiParameter("device_id_prefix", str, description="Devices whose id starts with this."),
]


class DeviceListApi(ScopedApi):
    @extend_schema(parameters=DEVICE_PARAMETERS, responses=DeviceOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        devices = selectors.device_list(scope=self.tenant_scope)
        return self.page(self.filtered(DeviceFilter, devices), DeviceOutput)

    @extend_schema(request=DeviceInput, responses={201: DeviceOutput})
    def post(self, request: Request, tenant: str) -> Response:
        device = services.device_create(actor=self.actor, tenant=self.writable_tenant(), **self.parse(DeviceInput))
        return Response(DeviceOutput(device).data, status=status.HTTP_201_CREATED)


class DeviceDetailApi(ScopedApi):
    @extend_schema(responses=DeviceOutput)
    def get(self, request: Request, tenant: str, device_id: str) -> Response:
        return Response(DeviceOutput(selectors.device_get(scope=self.tenant_scope, device_id=device_id)).data)

    @extend_schema(request=DeviceUpdateInput, responses=DeviceOutput)
    def patch(self, request: Request, tenant: str, device_id: str) -> Response:
        device = selectors.device_get(scope=self.tenant_scope, device_id=device_id)
        self.scope.require_admin(device.tenant)
        changes = self.parse(DeviceUpdateInput, partial=True)
        return Response(DeviceOutput(services.device_update(actor=self.actor, device=device, **changes)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, device_id: str) -> Response:
        device = selectors.device_get(scope=self.tenant_scope, device_id=device_id)
        self.scope.require_admin(device.tenant)
        services.device_delete(actor=self.actor, device=device)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CsvParser(BaseParser):
    """``text/csv`` with a header row: device_id,group[,status][,label:<key>...]."""

    media_type = "text/csv"

    # The rows are a list, as a JSON array's request.data is; the stubs allow a parser a mapping only.
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> list[dict[str, Any]]:  # type: ignore[override]
        try:
            text = stream.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidInput("The CSV is not UTF-8.") from None
        try:
            reader = csv.DictReader(io.StringIO(text), strict=True)
            if not reader.fieldnames:
                raise InvalidInput("The CSV has no header row.")
            rows: list[dict[str, Any]] = []
            for record in reader:
                if None in record:
                    raise InvalidInput(f"CSV line {reader.line_num} has more values than the header has columns.")
                row: dict[str, Any] = {}
                labels: dict[str, str] = {}
                for key, value in record.items():
                    if key.startswith("label:"):
                        if value:
                            labels[key[len("label:") :]] = value
                    elif value is not None and value != "":
                        row[key] = value
                if labels:
                    row["labels"] = labels
                rows.append(row)
        except csv.Error as exc:
            raise InvalidInput(f"Malformed CSV: {exc}.") from None
        return rows


class DeviceRow(StrictSerializer):
    """One device of a bulk import (the same fields as creating one)."""

    device_id = device_id_field()
    group = slug_field(help_text="A device group of this tenant, by slug (404 if none).")
    status = serializers.ChoiceField(Device.Status.choices, required=False)
    labels = Labels(required=False)


class BulkImportInput(StrictSerializer):
    # many=True hands min_length to the ListSerializer; the stubs' Serializer.__init__ omits it.
    devices = DeviceRow(many=True, allow_empty=False, min_length=1,  # type: ignore[call-arg]
                        help_text=f"At most {settings.SLUICE_BULK_IMPORT_MAX_ROWS} (413 beyond).")  # fmt: skip


class BulkImportOutput(serializers.Serializer):
    created = serializers.IntegerField(help_text="Devices created (all of the request's, or none).")


def import_rows(request: Request) -> list[dict[str, Any]]:
    """The rows of an import request (JSON ``{"devices": [...]}`` or a CSV with a header
    row), each checked like a single device; for devices/bulk and for import jobs."""
    data = request.data
    if request.content_type.startswith(CsvParser.media_type):
        if not data:
            raise InvalidInput("The CSV has no header row.")
    elif not isinstance(data, dict):
        raise InvalidInput('Send {"devices": [...]} as JSON or a CSV with a header row.')
    return _rows(data)


def _rows(data: Any) -> list[dict[str, Any]]:
    """The rows of a JSON import, each checked like a single device (types included): every
    problem is reported at /rows/<index>/<field>, the pointers the service uses."""
    if isinstance(data, dict) and set(data) - {"devices"}:
        unknown = sorted(set(data) - {"devices"})
        raise InvalidInput('The JSON body is {"devices": [...]}; unknown keys: ' + json.dumps(unknown),
                           fields=[{"pointer": f"/{key}", "code": "unknown_field", "message": "Unknown field."}
                                   for key in unknown])  # fmt: skip
    rows = data.get("devices") if isinstance(data, dict) else data
    if not isinstance(data, dict | list) or not isinstance(rows, list):
        must = {"pointer": "/devices", "code": "invalid", "message": "Must be an array."}
        raise InvalidInput('Send {"devices": [...]} as JSON or a CSV with a header row.', fields=[must])
    limit = settings.SLUICE_BULK_IMPORT_MAX_ROWS
    if len(rows) > limit:
        raise PayloadTooLarge(f"A bulk import takes at most {limit} devices; this one has {len(rows)}.")
    if not rows:
        raise InvalidInput("The import has no rows.", fields=[{"pointer": "/devices", "code": "empty",
                                                                 "message": "At least one device."}])  # fmt: skip
    errors: list[dict[str, str]] = []
    for index, row in enumerate(rows):
        errors += _row_shape_errors(row, f"/rows/{index}")
    if errors:
        bad_rows = len({e["pointer"].split("/")[2] for e in errors})
        raise InvalidInput(f"{bad_rows} row(s) are invalid; nothing was imported.", fields=errors)
    return rows


ROW_RULES = {"device_id": device_id_rule, "group": slug_rule}


def _row_shape_errors(row: Any, pointer: str) -> list[dict[str, str]]:
    """What the service's own row checks cannot see: a row that is not an object, a value
    of another JSON type than a string (the service would turn 12 into "12"), and a name the
    model's "$"-anchored rules let through with a final newline.  Everything else (the
    rules, unknown fields, groups, duplicates) the service reports, every row at once."""
    if not isinstance(row, dict):
        return [{"pointer": pointer, "code": "invalid", "message": "Each row must be an object."}]
    errors = []
    for name in ("device_id", "group", "status"):
        value = row.get(name)
        if name in row and not isinstance(value, str):
            errors.append({"pointer": f"{pointer}/{name}", "code": "invalid", "message": "Must be a string."})
        elif isinstance(value, str) and name in ROW_RULES and "\n" in value:
            rule = ROW_RULES[name]
            errors.append({"pointer": f"{pointer}/{name}", "code": str(rule.code), "message": str(rule.message)})
    labels = row.get("labels")
    if isinstance(labels, dict) and any(isinstance(key, str) and "\x00" in key for key in labels):
        errors.append({"pointer": f"{pointer}/labels", "code": "invalid",
                       "message": "A label's name may not contain a NUL character."})  # fmt: skip
    return errors


class DeviceBulkImportApi(ScopedApi):
    parser_classes = (JSONParser, CsvParser)
    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"post": (413,)}

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise PayloadTooLarge(
                f"The import body is {length} bytes; the limit is {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}."
            )

    @extend_schema(
        request={"application/json": BulkImportInput,
                 "text/csv": {"type": "string", "format": "sluice-devices-csv"}},
        responses={201: BulkImportOutput},
        description=f"All or nothing: up to {settings.SLUICE_BULK_IMPORT_MAX_ROWS} devices as "
        '{"devices": [...]} or a CSV (header row device_id,group[,status][,label:<key>...]). '
        "Every bad row is reported at /rows/<index>/<field>; more rows than the limit is 413.",
    )  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        rows = import_rows(request)
        created = services.device_bulk_import(actor=self.actor, tenant=target, rows=rows)
        return Response({"created": len(created)}, status=status.HTTP_201_CREATED)
