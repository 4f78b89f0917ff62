"""Device and consumer certificates over REST: issue (CSR or generated), list, revoke; the tenant's CA chain."""

from __future__ import annotations

import base64
from typing import Any, ClassVar

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from certs import selectors, services
from certs.models import Certificate, CertificateAuthority
from devices.apis import device_id_field
from devices.models import Device
from devices.selectors import consumer_get, device_get
from tenants import policy
from tenants.api_base import NulFreeCharField, ScopedApi, StrictSerializer

MAX_CSR_CHARS = 32_768
CSR_HELP = "A PKCS#10 certificate signing request in PEM (the device keeps its key)."


@extend_schema_field({"type": "string", "format": "pem-csr", "maxLength": MAX_CSR_CHARS})
class CsrField(serializers.CharField):
    """A CSR's PEM text (the spec's format ``pem-csr``); the service parses and checks it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=MAX_CSR_CHARS, **kwargs)


class CertificateOutput(serializers.ModelSerializer):
    device = serializers.CharField(source="device_ref", help_text="Blank for a consumer's certificate.")
    consumer = serializers.CharField(source="consumer.slug", default=None, read_only=True, allow_null=True)
    ca_serial = serializers.CharField(source="ca.serial")

    class Meta:
        model = Certificate
        fields: tuple[str, ...] = (
            "serial", "device", "consumer", "kafka_principal", "subject", "fingerprint_sha256", "key_type", "origin",
            "status", "not_before",
            "not_after", "revoked_at", "revocation_reason", "ca_serial", "certificate_pem", "created_at",
            "renewal_due", "overlap_until",
        )  # fmt: skip


class IssueInput(StrictSerializer):
    csr = CsrField(required=False, help_text=CSR_HELP)
    generate = serializers.BooleanField(required=False, default=False,
                                        help_text="true: Sluice generates the key and returns it once.")  # fmt: skip
    passphrase = NulFreeCharField(required=False, min_length=services.MIN_PASSPHRASE, max_length=256, write_only=True,
                                  help_text="Encrypts the returned PKCS#12 bundle (with generate).")  # fmt: skip

    def validate(self, attrs: dict) -> dict:
        if bool(attrs.get("csr")) == bool(attrs.get("generate")):
            message = 'Send either "csr" (PEM) or "generate": true with a "passphrase".'
            raise serializers.ValidationError(serializers.ErrorDetail(message, code="csr_or_generate"))
        if attrs.get("generate") and not attrs.get("passphrase"):
            raise serializers.ValidationError({"passphrase": [serializers.ErrorDetail("Required.", code="required")]})
        return attrs


@extend_schema_field({"type": "boolean", "enum": [False]})
class FalseField(serializers.BooleanField):
    """``generate`` in a CSR request: absent or false."""


@extend_schema_field({"type": "boolean", "enum": [True]})
class TrueField(serializers.BooleanField):
    """``generate`` in a request for a generated key: true."""


class CsrIssueInput(StrictSerializer):
    """The device sends a CSR and keeps its key."""

    csr = CsrField(help_text=CSR_HELP)
    generate = FalseField(required=False)
    passphrase = NulFreeCharField(required=False, min_length=services.MIN_PASSPHRASE, max_length=256,
                                  help_text="Ignored with a CSR.")  # fmt: skip


class GeneratedIssueInput(StrictSerializer):
    """Sluice generates the key and returns it once, with a PKCS#12 bundle under the passphrase."""

    generate = TrueField()
    passphrase = NulFreeCharField(min_length=services.MIN_PASSPHRASE, max_length=256)


# What IssueInput accepts, as the spec says it: exactly one of the two.
ISSUE_REQUEST = PolymorphicProxySerializer(
    component_name="IssueRequest", serializers=[CsrIssueInput, GeneratedIssueInput], resource_type_field_name=None
)


class IssuedOutput(CertificateOutput):
    chain_pem = serializers.CharField(help_text="The certificate, then its tenant CA.")
    private_key_pem = serializers.CharField(required=False, help_text="Generated keys only: shown once, never kept.")
    pkcs12_base64 = serializers.CharField(required=False, help_text="Generated keys only, under the passphrase.")

    class Meta(CertificateOutput.Meta):
        fields = (*CertificateOutput.Meta.fields, "chain_pem", "private_key_pem", "pkcs12_base64")


class RevokeInput(StrictSerializer):
    reason = serializers.ChoiceField(sorted(services.REASONS), required=False, default="unspecified")


def _issuable(device: Device) -> Device:
    refusal = policy.holder_refusal(policy.Use.CERTIFICATE_REQUEST, tenant_status=device.tenant.status,
                                    device_status=device.status, credential_policy=device.group.credential_policy,
                                    device=device.device_id)  # fmt: skip
    if refusal is not None:
        raise refusal.exception()
    return device


class DeviceCertificatesApi(ScopedApi):
    @extend_schema(responses=CertificateOutput(many=True))
    def get(self, request: Request, tenant: str, device_id: str) -> Response:
        scope = self.tenant_scope
        device = device_get(scope=scope, device_id=device_id)
        return self.page(selectors.device_certificate_list(scope=scope, device=device), CertificateOutput)

    @extend_schema(request=ISSUE_REQUEST, responses={201: IssuedOutput})
    def post(self, request: Request, tenant: str, device_id: str) -> Response:
        self.writable_tenant()
        device = device_get(scope=self.tenant_scope, device_id=device_id)
        data = self.parse(IssueInput)
        _issuable(device)
        if data.get("csr"):
            issued = services.certificate_issue_from_csr(actor=self.actor, device=device, csr_pem=data["csr"].encode())
        else:
            issued = services.certificate_issue_generated(
                actor=self.actor, device=device, passphrase=data["passphrase"]
            )
        return _issued_body(issued)


def _issued_body(issued: services.Issued) -> Response:
    body = dict(CertificateOutput(issued.certificate).data)
    body["chain_pem"] = issued.chain_pem
    if issued.key_pem is not None and issued.pkcs12 is not None:
        # Returned this once; Sluice keeps no copy of a key it generated.
        body["private_key_pem"] = issued.key_pem
        body["pkcs12_base64"] = base64.b64encode(issued.pkcs12).decode()
    response = Response(body, status=status.HTTP_201_CREATED)
    response["Cache-Control"] = "no-store"
    return response


class ConsumerCertificatesApi(ScopedApi):
    """A consumer's client certificates: on Kafka each is its own principal
    ``User:<tenant>.consumers.<consumer>.<id>`` with the consumer's READ grants; at nginx it
    reaches the tenant's schemas (``/registry/<tenant>/``).  Valid 365 days, not renewed by
    rotation: issue the next one before it ends."""

    @extend_schema(responses=CertificateOutput(many=True))
    def get(self, request: Request, tenant: str, consumer: str) -> Response:
        scope = self.tenant_scope
        found = consumer_get(scope=scope, slug=consumer)
        return self.page(selectors.consumer_certificate_list(scope=scope, consumer=found), CertificateOutput)

    @extend_schema(request=ISSUE_REQUEST, responses={201: IssuedOutput})
    def post(self, request: Request, tenant: str, consumer: str) -> Response:
        self.writable_tenant()
        found = consumer_get(scope=self.tenant_scope, slug=consumer)
        data = self.parse(IssueInput)
        csr = data["csr"].encode() if data.get("csr") else None
        issued = services.consumer_certificate_issue(actor=self.actor, consumer=found, csr_pem=csr,
                                                     passphrase=None if csr else data["passphrase"])  # fmt: skip
        return _issued_body(issued)


class CertificateRevokeApi(ScopedApi):
    @extend_schema(request=RevokeInput, responses=CertificateOutput)
    def post(self, request: Request, tenant: str, serial: str) -> Response:
        self.writable_tenant()
        certificate = selectors.certificate_get(scope=self.tenant_scope, serial=serial)
        reason = self.parse(RevokeInput)["reason"]
        revoked = services.certificate_revoke(actor=self.actor, certificate=certificate, reason=reason)
        return Response(CertificateOutput(revoked).data)


class CertificateDetailApi(ScopedApi):
    @extend_schema(responses=CertificateOutput)
    def get(self, request: Request, tenant: str, serial: str) -> Response:
        return Response(CertificateOutput(selectors.certificate_get(scope=self.tenant_scope, serial=serial)).data)


class CaOutput(serializers.ModelSerializer):
    crl_url = serializers.SerializerMethodField()

    class Meta:
        model = CertificateAuthority
        fields = ("serial", "subject", "status", "not_before", "not_after", "certificate_pem", "crl_number",
                  "crl_next_update", "crl_url")  # fmt: skip

    def get_crl_url(self, authority: CertificateAuthority) -> str:
        from django.conf import settings

        return settings.SLUICE_RUNTIME.crl_url(services.crl_name(authority))


class TenantCaApi(ScopedApi):
    @extend_schema(responses=CaOutput(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return self.page(selectors.authority_list(scope=self.tenant_scope, current=True), CaOutput)


class BulkItem(StrictSerializer):
    device_id = device_id_field(help_text="A device of this tenant (404 if none).")
    csr = CsrField(required=False, help_text=CSR_HELP + " Without one, Sluice generates the key.")


class BulkIssueInput(StrictSerializer):
    # many=True hands min_length to the ListSerializer; the stubs' Serializer.__init__ omits it.
    items = BulkItem(many=True, allow_empty=False, min_length=1, help_text=f"At most {services.BULK_MAX} (413 beyond).")  # type: ignore[call-arg]


class BulkIssuedItem(serializers.Serializer):
    device_id = serializers.CharField()
    serial = serializers.CharField()
    chain_pem = serializers.CharField()
    private_key_pem = serializers.CharField(required=False, help_text="Generated keys only: shown once.")


class BulkIssuedOutput(serializers.Serializer):
    issued = BulkIssuedItem(many=True)


class BulkIssueApi(ScopedApi):
    """Certificates for many devices (e.g. right after a bulk device import)."""

    extra_error_statuses: ClassVar[dict[str, tuple[int, ...]]] = {"post": (413,)}

    @extend_schema(request=BulkIssueInput, responses={201: BulkIssuedOutput},
                   description="All or nothing; every bad item is reported at /items/<index>/<field>.")  # fmt: skip
    def post(self, request: Request, tenant: str) -> Response:
        target = self.writable_tenant()
        items = [dict(i) for i in self.parse(BulkIssueInput)["items"]]
        issued = services.certificates_issue_bulk(actor=self.actor, tenant=target, items=items)
        body = []
        for one in issued:
            entry = {"device_id": one.certificate.device_ref, "serial": one.certificate.serial,
                     "chain_pem": one.chain_pem}  # fmt: skip
            if one.key_pem is not None:
                entry["private_key_pem"] = one.key_pem  # returned once; never stored
            body.append(entry)
        response = Response({"issued": body}, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response
