"""OAuth clients over REST, under ``/api/v1/tenants/<tenant>/oauth-clients/``.  Members of
the tenant read them, its admins (and operators) create, revoke and rotate them; the
secret appears once, in the answer that made it.  Scoping comes from ``ScopedApi``.

In the top layer (beside ``config/api_urls.py``): a client is the tenants app's, but the body
names the device or group it speaks for, read through devices' scoped selectors."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import NotFound
from devices import selectors as device_selectors
from devices.models import Consumer, Device, DeviceGroup
from tenants.api_base import NulFreeCharField, ScopedApi, StrictSerializer, slug_field
from tenants.oauth import openapi as _openapi  # noqa: F401 - registers the spec's security schemes
from tenants.oauth import scopes as oauth_scopes
from tenants.oauth import selectors, services
from tenants.oauth.models import OAuthClient
from tenants.oauth.views import metadata_document


class OAuthClientOutput(serializers.ModelSerializer):
    scopes = serializers.ListField(child=serializers.ChoiceField(oauth_scopes.ALL))
    device = serializers.CharField(source="device.device_id", default=None, read_only=True, allow_null=True)
    group = serializers.CharField(source="effective_group.slug", default=None, read_only=True, allow_null=True)
    consumer = serializers.CharField(source="consumer.slug", default=None, read_only=True, allow_null=True)
    kafka_principal = serializers.CharField(default=None, read_only=True, allow_null=True)

    class Meta:
        model = OAuthClient
        fields: tuple[str, ...] = (
            "client_id",
            "name",
            "kind",
            "scopes",
            "device",
            "group",
            "consumer",
            "kafka_principal",
            "status",
            "created_at",
            "last_used_at",
            "secret_rotated_at",
            "revoked_at",
        )


class OAuthClientSecretOutput(OAuthClientOutput):
    """A client with its secret: only in the answers to create and rotate-secret."""

    client_secret = serializers.SerializerMethodField()
    token_endpoint = serializers.SerializerMethodField()

    class Meta(OAuthClientOutput.Meta):
        fields = (*OAuthClientOutput.Meta.fields, "client_secret", "token_endpoint")

    def get_client_secret(self, obj: OAuthClient) -> str:
        return str(self.context["secret"])

    def get_token_endpoint(self, obj: OAuthClient) -> str:
        return str(metadata_document()["token_endpoint"])


class OAuthClientInput(StrictSerializer):
    """``device`` (a device id) and ``group`` (a group slug) are looked up in the URL's
    tenant only (the ``scope`` in the context), so another tenant's object reads as one that
    does not exist."""

    name = NulFreeCharField(max_length=100)
    kind = serializers.ChoiceField(OAuthClient.Kind.choices)
    scopes = serializers.ListField(child=serializers.ChoiceField(oauth_scopes.ALL), allow_empty=False, min_length=1)
    device = serializers.CharField(
        max_length=128,
        required=False,
        allow_null=True,
        trim_whitespace=False,
        help_text="device clients: the device's id (404 if none in this tenant).",
    )
    group = slug_field(
        required=False,
        allow_null=True,
        help_text="gateway clients: the device group's slug (404 if none in this tenant).",
    )
    consumer = slug_field(
        required=False,
        allow_null=True,
        help_text="consumer clients: the consumer's slug (404 if none in this tenant).",
    )

    def _missing(self, what: str) -> serializers.ValidationError:
        return serializers.ValidationError(
            serializers.ErrorDetail(f"No such {what} in this tenant.", code="does_not_exist")
        )

    def validate_device(self, value: str | None) -> Device | None:
        if value is None:
            return None
        try:
            return device_selectors.device_get(scope=self.context["scope"], device_id=value)
        except NotFound:
            raise self._missing("device") from None

    def validate_group(self, value: str | None) -> DeviceGroup | None:
        if value is None:
            return None
        try:
            return device_selectors.group_get(scope=self.context["scope"], slug=value)
        except NotFound:
            raise self._missing("device group") from None

    def validate_consumer(self, value: str | None) -> Consumer | None:
        if value is None:
            return None
        try:
            return device_selectors.consumer_get(scope=self.context["scope"], slug=value)
        except NotFound:
            raise self._missing("consumer") from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A name a kind does not have is refused even as null: each kind's input is exactly
        # what the spec's CLIENT_REQUEST says.
        names = {
            OAuthClient.Kind.DEVICE: ("consumer",),
            OAuthClient.Kind.GATEWAY: ("device", "consumer"),
            OAuthClient.Kind.SERVICE: ("device", "group", "consumer"),
            OAuthClient.Kind.CONSUMER: ("device", "group"),
        }
        present = sorted(set(names.get(attrs.get("kind", ""), ())) & set(self.initial_data))
        if present:
            raise serializers.ValidationError({
                name: [serializers.ErrorDetail(f"A {attrs['kind']} client has no {name}.", code="not_allowed")]
                for name in present
            })  # fmt: skip
        device, group = attrs.get("device"), attrs.get("group")
        is_device = attrs.get("kind") == OAuthClient.Kind.DEVICE
        if is_device and device is not None and group is not None and group.pk != device.group_id:
            message = "A device client always uses its device's group."
            raise serializers.ValidationError({"group": [serializers.ErrorDetail(message, code="group_mismatch")]})
        return attrs


def _scopes(allowed: frozenset[str]) -> serializers.ListField:
    return serializers.ListField(child=serializers.ChoiceField(sorted(allowed)), min_length=1)


class DeviceClientInput(StrictSerializer):
    """A client that speaks for one device of a group whose policy allows OAuth2."""

    name = NulFreeCharField(max_length=100)
    kind = serializers.ChoiceField(["device"])
    scopes = _scopes(oauth_scopes.DEVICE_SCOPES)
    device = serializers.CharField(max_length=128, help_text="The device's id (404 if none in this tenant).")
    group = slug_field(required=False, allow_null=True, help_text="If given, the device's own group (409 if not).")


class GatewayClientInput(StrictSerializer):
    """A client that speaks for a device group (a gateway forwarding many devices)."""

    name = NulFreeCharField(max_length=100)
    kind = serializers.ChoiceField(["gateway"])
    scopes = _scopes(oauth_scopes.DEVICE_SCOPES)
    group = slug_field(help_text="The device group's slug (404 if none in this tenant).")


class ServiceClientInput(StrictSerializer):
    """Automation acting on this tenant through the REST API."""

    name = NulFreeCharField(max_length=100)
    kind = serializers.ChoiceField(["service"])
    scopes = _scopes(oauth_scopes.SERVICE_SCOPES)


class ConsumerClientInput(StrictSerializer):
    """A tenant backend reading the streams its consumer is granted (``kafka:consume`` on the
    broker's OAUTHBEARER listener) and the tenant's schemas (``registry:read``)."""

    name = NulFreeCharField(max_length=100)
    kind = serializers.ChoiceField(["consumer"])
    scopes = _scopes(oauth_scopes.CONSUMER_SCOPES)
    consumer = slug_field(help_text="The consumer's slug (404 if none in this tenant).")


# What OAuthClientInput accepts, as the spec says it: one shape per kind.
CLIENT_REQUEST = PolymorphicProxySerializer(
    component_name="OAuthClientRequest",
    serializers=[DeviceClientInput, GatewayClientInput, ServiceClientInput, ConsumerClientInput],
    resource_type_field_name=None,
)  # fmt: skip


class OAuthClientApiMixin(ScopedApi):
    def get_client(self, client_id: str) -> OAuthClient:
        return selectors.oauth_client_get(scope=self.tenant_scope, client_id=client_id)


class OAuthClientListApi(OAuthClientApiMixin):
    @extend_schema(responses=OAuthClientOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(selectors.oauth_client_list(scope=self.tenant_scope), OAuthClientOutput)

    @extend_schema(request=CLIENT_REQUEST, responses={201: OAuthClientSecretOutput})
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        data = self.parse(OAuthClientInput, context={"scope": self.tenant_scope})
        client, secret = services.oauth_client_create(actor=self.actor, tenant=target, **data)
        body = OAuthClientSecretOutput(client, context={"secret": secret}).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})


class OAuthClientDetailApi(OAuthClientApiMixin):
    @extend_schema(responses=OAuthClientOutput)
    def get(self, request: Request, tenant: str, client_id: str) -> Response:
        return Response(OAuthClientOutput(self.get_client(client_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, client_id: str) -> Response:
        """Revoke the client (kept, for the audit trail, with status ``revoked``)."""
        client = self.get_client(client_id)
        self.scope.require_admin(client.tenant)
        services.oauth_client_revoke(actor=self.actor, client=client)
        return Response(status=status.HTTP_204_NO_CONTENT)


class OAuthClientRotateSecretApi(OAuthClientApiMixin):
    @extend_schema(request=None, responses=OAuthClientSecretOutput)
    def post(self, request: Request, tenant: str, client_id: str) -> Response:
        client = self.get_client(client_id)
        self.scope.require_admin(client.tenant)
        rotated, secret = services.oauth_client_rotate_secret(actor=self.actor, client=client)
        body = OAuthClientSecretOutput(rotated, context={"secret": secret}).data
        return Response(body, headers={"Cache-Control": "no-store"})
