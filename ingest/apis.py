"""Ingest's operator API: the tenant's topics compared with Kafka (``/reconcile``)."""

from __future__ import annotations

from typing import ClassVar

from confluent_kafka import KafkaException
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import ServiceUnavailable
from ingest.topic_sync import topics_reconcile
from tenants.api_base import ScopedApi


class DriftOutput(serializers.Serializer):
    drift = serializers.ListField(child=serializers.CharField())
    fixed = serializers.ListField(child=serializers.CharField())
    unmanaged = serializers.ListField(child=serializers.CharField())


FIX = OpenApiParameter("fix", bool, description="Repair the drift found (default true).")


class ReconcileApi(ScopedApi):
    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"post": (503,)}

    @extend_schema(request=None, parameters=[FIX], responses=DriftOutput,
                   description="Compares the tenant's topics with Kafka (operators only).")  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        target = self.tenant
        self.scope.require_operator()
        self.check_query()
        fix = _boolean(request, "fix", default=True)
        try:
            report = topics_reconcile(tenant=target, fix=fix)
        except KafkaException as exc:
            raise ServiceUnavailable(f"Kafka did not answer ({exc}); try again shortly.",
                                     code="kafka_unavailable") from None  # fmt: skip
        return Response({"drift": report.drift, "fixed": report.fixed, "unmanaged": report.unmanaged})


def _boolean(request: Request, name: str, *, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        detail = serializers.ErrorDetail("Must be true or false.", code="invalid")
        raise serializers.ValidationError({name: [detail]})
    return raw == "true"
