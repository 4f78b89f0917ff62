"""Streams, device groups and devices over REST, all under ``/api/v1/tenants/<tenant>/``."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import django_filters
from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import InvalidInput, NotFound, PayloadTooLarge
from devices import services
from devices.models import Device, DeviceGroup, Stream
from tenants.api_base import ScopedApi, StrictSerializer

# -- streams ---------------------------------------------------------------------------


class StreamOutput(serializers.ModelSerializer):
    topic = serializers.CharField(read_only=True)
    retention_ms = serializers.IntegerField(read_only=True)

    class Meta:
        model = Stream
        fields = ("id", "topic", "region", "type", "retention_class", "custom_retention_hours", "retention_ms",
                  "partitions", "replication_factor", "compression", "cleanup_policy", "status", "last_error",
                  "provisioned_at", "created_at", "updated_at")  # fmt: skip


class StreamInput(StrictSerializer):
    region = serializers.CharField(max_length=40)
    type = serializers.CharField(max_length=40)
    retention_class = serializers.ChoiceField(Stream.RetentionClass.choices, required=False)
    custom_retention_hours = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    partitions = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    replication_factor = serializers.IntegerField(min_value=1, max_value=7, required=False)
    compression = serializers.ChoiceField(Stream.Compression.choices, required=False)
    cleanup_policy = serializers.ChoiceField(Stream.CleanupPolicy.choices, required=False)


class StreamUpdateInput(StrictSerializer):
    custom_retention_hours = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    partitions = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    replication_factor = serializers.IntegerField(min_value=1, max_value=7, required=False)
    compression = serializers.ChoiceField(Stream.Compression.choices, required=False)
    cleanup_policy = serializers.ChoiceField(Stream.CleanupPolicy.choices, required=False)


class StreamFilter(django_filters.FilterSet):
    class Meta:
        model = Stream
        fields = ("region", "type", "retention_class", "status")


class StreamListApi(ScopedApi):
    @extend_schema(responses=StreamOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        streams = self.filtered(
            StreamFilter, Stream.objects.filter(tenant=self.tenant).select_related("tenant"), request
        )
        return self.page(streams, StreamOutput)

    @extend_schema(request=StreamInput, responses={201: StreamOutput})
    def post(self, request: Request, tenant: str) -> Response:
        stream = services.stream_create(actor=self.actor, tenant=self.writable_tenant(), **self.parse(StreamInput))
        return Response(StreamOutput(stream).data, status=status.HTTP_201_CREATED)


class StreamDetailApi(ScopedApi):
    def get_stream(self, pk: int) -> Stream:
        stream = Stream.objects.filter(tenant=self.tenant, pk=pk).select_related("tenant").first()
        if stream is None:
            raise NotFound(f"No stream {pk}.")
        return stream

    @extend_schema(responses=StreamOutput)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        return Response(StreamOutput(self.get_stream(pk)).data)

    @extend_schema(request=StreamUpdateInput, responses=StreamOutput)
    def patch(self, request: Request, tenant: str, pk: int) -> Response:
        stream = self.get_stream(pk)
        self.scope.require_admin(stream.tenant)
        changes = self.parse(StreamUpdateInput, partial=True)
        return Response(StreamOutput(services.stream_update(actor=self.actor, stream=stream, **changes)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        stream = self.get_stream(pk)
        self.scope.require_admin(stream.tenant)
        services.stream_delete(actor=self.actor, stream=stream)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- device groups ----------------------------------------------------------------------


class GroupOutput(serializers.ModelSerializer):
    stream = serializers.IntegerField(source="stream_id")
    topic = serializers.CharField(source="stream.topic")
    kafka_principal = serializers.CharField(read_only=True)

    class Meta:
        model = DeviceGroup
        fields = ("slug", "name", "region", "device_type", "stream", "topic", "schema_subject", "credential_policy",
                  "cert_lifetime_days", "cert_key_type", "cert_renewal_window_days", "rate_limit_per_second",
                  "kafka_direct", "kafka_principal", "created_at", "updated_at")  # fmt: skip


class GroupInput(StrictSerializer):
    slug = serializers.CharField(max_length=40)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    region = serializers.CharField(max_length=40)
    device_type = serializers.CharField(max_length=40)
    stream = serializers.IntegerField()
    schema_subject = serializers.CharField(
        max_length=255, required=False, help_text="Registry subject in this tenant; default: '<stream topic>-value'."
    )
    credential_policy = serializers.ChoiceField(DeviceGroup.CredentialPolicy.choices, required=False)
    cert_lifetime_days = serializers.IntegerField(min_value=1, max_value=3650, required=False)
    cert_key_type = serializers.ChoiceField(DeviceGroup.KeyType.choices, required=False)
    cert_renewal_window_days = serializers.IntegerField(min_value=1, required=False)
    rate_limit_per_second = serializers.IntegerField(min_value=1, required=False)
    kafka_direct = serializers.BooleanField(
        required=False, help_text="Its credentials may also produce to Kafka directly (one ACL each); default false."
    )


class GroupUpdateInput(GroupInput):
    slug = None  # type: ignore[assignment]


class GroupListApi(ScopedApi):
    @extend_schema(responses=GroupOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(DeviceGroup.objects.filter(tenant=self.tenant).select_related("tenant", "stream"), GroupOutput)

    @extend_schema(request=GroupInput, responses={201: GroupOutput})
    def post(self, request: Request, tenant: str) -> Response:
        group = services.group_create(actor=self.actor, tenant=self.writable_tenant(), **self.parse(GroupInput))
        return Response(GroupOutput(group).data, status=status.HTTP_201_CREATED)


class GroupDetailApi(ScopedApi):
    def get_group(self, slug: str) -> DeviceGroup:
        group = DeviceGroup.objects.filter(tenant=self.tenant, slug=slug).select_related("tenant", "stream").first()
        if group is None:
            raise NotFound(f"No device group '{slug}'.")
        return group

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


class DeviceInput(StrictSerializer):
    device_id = serializers.CharField(max_length=128)
    group = serializers.CharField(max_length=40)
    status = serializers.ChoiceField(Device.Status.choices, required=False)
    labels = serializers.DictField(child=LabelValue(max_length=256, allow_blank=True), required=False)


class DeviceUpdateInput(DeviceInput):
    device_id = None  # type: ignore[assignment]


class DeviceFilter(django_filters.FilterSet):
    group = django_filters.CharFilter(field_name="group__slug")
    status = django_filters.ChoiceFilter(choices=Device.Status.choices)
    device_id_prefix = django_filters.CharFilter(field_name="device_id", lookup_expr="startswith")

    class Meta:
        model = Device
        fields = ("group", "status", "device_id_prefix")


class DeviceListApi(ScopedApi):
    @extend_schema(responses=DeviceOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        devices = Device.objects.filter(tenant=self.tenant).select_related("group")
        return self.page(self.filtered(DeviceFilter, devices, request), DeviceOutput)

    @extend_schema(request=DeviceInput, responses={201: DeviceOutput})
    def post(self, request: Request, tenant: str) -> Response:
        device = services.device_create(actor=self.actor, tenant=self.writable_tenant(), **self.parse(DeviceInput))
        return Response(DeviceOutput(device).data, status=status.HTTP_201_CREATED)


class DeviceDetailApi(ScopedApi):
    @extend_schema(responses=DeviceOutput)
    def get(self, request: Request, tenant: str, device_id: str) -> Response:
        return Response(DeviceOutput(services.device_get(tenant=self.tenant, device_id=device_id)).data)

    @extend_schema(request=DeviceUpdateInput, responses=DeviceOutput)
    def patch(self, request: Request, tenant: str, device_id: str) -> Response:
        device = services.device_get(tenant=self.tenant, device_id=device_id)
        self.scope.require_admin(device.tenant)
        changes = self.parse(DeviceUpdateInput, partial=True)
        return Response(DeviceOutput(services.device_update(actor=self.actor, device=device, **changes)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, device_id: str) -> Response:
        device = services.device_get(tenant=self.tenant, device_id=device_id)
        self.scope.require_admin(device.tenant)
        services.device_delete(actor=self.actor, device=device)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CsvParser(BaseParser):
    """``text/csv`` with a header row: device_id,group[,status][,label:<key>...]."""

    media_type = "text/csv"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> list[dict[str, Any]]:
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


class DeviceBulkImportApi(ScopedApi):
    parser_classes = (JSONParser, CsvParser)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise PayloadTooLarge(
                f"The import body is {length} bytes; the limit is {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}."
            )

    @extend_schema(request={"application/json": dict, "text/csv": str}, responses={201: dict})
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        data = request.data
        if not data and request.content_type.startswith(CsvParser.media_type):
            raise InvalidInput("The CSV has no header row.")
        rows = data.get("devices") if isinstance(data, dict) else data
        if isinstance(data, dict) and set(data) - {"devices"}:
            raise InvalidInput(
                'The JSON body is {"devices": [...]}; unknown keys: ' + json.dumps(sorted(set(data) - {"devices"}))
            )
        if not isinstance(rows, list):
            raise InvalidInput('Send {"devices": [...]} as JSON or a CSV with a header row.')
        created = services.device_bulk_import(actor=self.actor, tenant=target, rows=rows)
        return Response({"created": len(created)}, status=status.HTTP_201_CREATED)
