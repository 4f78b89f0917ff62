"""Device certificates over REST: issue (CSR or generated), list, revoke; the tenant's CA chain."""

from __future__ import annotations

import base64

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from certs import services
from certs.models import Certificate, CertificateAuthority
from config.errors import InvalidInput
from devices.services import device_get
from tenants.api_base import ScopedApi, StrictSerializer


class CertificateOutput(serializers.ModelSerializer):
    device = serializers.CharField(source="device_ref")
    ca_serial = serializers.CharField(source="ca.serial")

    class Meta:
        model = Certificate
        fields = (
            "serial", "device", "subject", "fingerprint_sha256", "key_type", "origin", "status", "not_before",
            "not_after", "revoked_at", "revocation_reason", "ca_serial", "certificate_pem", "created_at",
            "renewal_due", "overlap_until",
        )  # fmt: skip


class IssueInput(StrictSerializer):
    csr = serializers.CharField(required=False, max_length=32768)
    generate = serializers.BooleanField(required=False, default=False)
    passphrase = serializers.CharField(required=False, max_length=256, write_only=True)

    def validate(self, attrs: dict) -> dict:
        if bool(attrs.get("csr")) == bool(attrs.get("generate")):
            message = 'Send either "csr" (PEM) or "generate": true with a "passphrase".'
            raise serializers.ValidationError(serializers.ErrorDetail(message, code="csr_or_generate"))
        if attrs.get("generate") and not attrs.get("passphrase"):
            raise serializers.ValidationError({"passphrase": [serializers.ErrorDetail("Required.", code="required")]})
        return attrs


class RevokeInput(StrictSerializer):
    reason = serializers.CharField(required=False, default="unspecified", max_length=32)


class DeviceCertificatesApi(ScopedApi):
    @extend_schema(responses=CertificateOutput(many=True))
    def get(self, request: Request, tenant: str, device_id: str) -> Response:
        device = device_get(tenant=self.tenant, device_id=device_id)
        return self.page(Certificate.objects.filter(device=device).select_related("ca"), CertificateOutput)

    @extend_schema(request=IssueInput, responses={201: dict})
    def post(self, request: Request, tenant: str, device_id: str) -> Response:
        device = device_get(tenant=self.writable_tenant(), device_id=device_id)
        data = self.parse(IssueInput)
        if data.get("csr"):
            issued = services.certificate_issue_from_csr(actor=self.actor, device=device, csr_pem=data["csr"].encode())
        else:
            issued = services.certificate_issue_generated(
                actor=self.actor, device=device, passphrase=data["passphrase"]
            )
        body = dict(CertificateOutput(issued.certificate).data)
        body["chain_pem"] = issued.chain_pem
        if issued.key_pem is not None and issued.pkcs12 is not None:
            # Returned this once; Sluice keeps no copy of a key it generated.
            body["private_key_pem"] = issued.key_pem
            body["pkcs12_base64"] = base64.b64encode(issued.pkcs12).decode()
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class CertificateRevokeApi(ScopedApi):
    @extend_schema(request=RevokeInput, responses=CertificateOutput)
    def post(self, request: Request, tenant: str, serial: str) -> Response:
        certificate = services.certificate_get(tenant=self.writable_tenant(), serial=serial)
        reason = self.parse(RevokeInput)["reason"]
        revoked = services.certificate_revoke(actor=self.actor, certificate=certificate, reason=reason)
        return Response(CertificateOutput(revoked).data)


class CertificateDetailApi(ScopedApi):
    @extend_schema(responses=CertificateOutput)
    def get(self, request: Request, tenant: str, serial: str) -> Response:
        return Response(CertificateOutput(services.certificate_get(tenant=self.tenant, serial=serial)).data)


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
        authorities = CertificateAuthority.objects.filter(tenant=self.tenant).exclude(
            status=CertificateAuthority.Status.RETIRED
        )
        if not authorities.exists():
            raise InvalidInput(f"Tenant '{tenant}' has no issuing CA.")
        return self.page(authorities.select_related("tenant"), CaOutput)


class BulkItem(StrictSerializer):
    device_id = serializers.CharField(max_length=128)
    csr = serializers.CharField(required=False, max_length=32768)


class BulkIssueInput(StrictSerializer):
    items = BulkItem(many=True)


class BulkIssueApi(ScopedApi):
    """Certificates for many devices (e.g. right after a bulk device import)."""

    @extend_schema(request=BulkIssueInput, responses={201: dict})
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
