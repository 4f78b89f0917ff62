"""What every API view shares: the request's tenant scope, strict input, pagination."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import InvalidInput
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.scoping import Scope, scope_for


class StrictSerializer(serializers.Serializer):
    """Input serializer that refuses fields it does not know, instead of ignoring them."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {key: [serializers.ErrorDetail("Unknown field.", code="unknown_field")] for key in unknown}
                )
        return super().to_internal_value(data)


class ScopedApi(APIView):
    """Base of every API view: ``self.scope`` for the user; ``self.tenant`` for URLs under
    ``/tenants/<tenant>/`` -- a tenant outside the scope is a 404, whatever the verb."""

    @property
    def scope(self) -> Scope:
        if not hasattr(self, "_scope"):
            self._scope = scope_for(self.request.user)
        return self._scope

    @property
    def actor(self) -> Actor:
        return Actor.of(self.request.user)

    @property
    def tenant(self) -> Tenant:
        if not hasattr(self, "_tenant"):
            self._tenant = self.scope.tenant(self.kwargs["tenant"])
        return self._tenant

    def writable_tenant(self) -> Tenant:
        tenant = self.tenant
        self.scope.require_admin(tenant)
        return tenant

    def parse(self, serializer_class: type[serializers.Serializer], *, partial: bool = False) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    def page(self, queryset: QuerySet, output: type[serializers.Serializer]) -> Response:
        paginator = LimitOffsetPagination()
        items = paginator.paginate_queryset(queryset, self.request, view=self)
        return paginator.get_paginated_response(output(items, many=True).data)

    def filtered(self, filterset_class: Any, queryset: QuerySet, request: Request) -> QuerySet:
        filterset = filterset_class(request.query_params, queryset=queryset)
        if not filterset.is_valid():
            from config.errors import field_errors

            fields = field_errors(filterset.errors)
            raise InvalidInput("Invalid filter.", fields=fields)
        return filterset.qs
