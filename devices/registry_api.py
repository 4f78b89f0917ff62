"""A tenant's schemas, read-only, in the Confluent Schema Registry API's shape, at
``/registry/<tenant>/``: what a tenant backend's deserializers need to read its streams.

confluent-kafka's ``SchemaRegistryClient`` (and the Java one) point their ``url`` here and
work unchanged: ``GET schemas/ids/{id}`` (with ``?format=serialized`` a Protobuf schema comes
as its base64 ``FileDescriptorProto``, which ``ProtobufDeserializer`` asks for), ``GET
subjects``, ``GET subjects/{subject}/versions`` and ``GET subjects/{subject}/versions/{version}``
(a number or ``latest``).  Only the tenant's own subjects (``iot.<tenant>.*``) and the ids
they hold exist here: any other is 404, as an id nobody registered.

Who may read: the tenant's consumers -- an OAuth client of kind ``consumer`` with a token for
``registry:read``, or a consumer's client certificate (mTLS, verified by nginx) -- and whoever
may read the tenant through the REST API, with the same credentials (a member's API token or
session, a service client's access token, ``provision:read``); anyone else gets the tenant as
absent (404).  A device's certificate is refused (403): devices write, they do not read.
The authentication classes are set where the URLs are (``config.registry_urls``).  Errors carry the Confluent fields
``error_code`` and ``message`` (which its clients read) beside Sluice's own ``error``.
Not part of the REST API's OpenAPI document: the shape is Confluent's.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import InvalidInput, NotFound, SluiceError
from devices import registry
from tenants.api_base import ScopedApi

# Confluent's error codes (its API reference): subject, version and schema not found.
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
INVALID_VERSION = 42202
SERIALIZED = "serialized"


class _JsonOnly(BaseContentNegotiation):
    """JSON, whatever ``?format=`` says: here it is Confluent's parameter (``serialized``),
    not DRF's renderer choice."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: Any, format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


class RegistryApi(ScopedApi):
    schema = None  # Confluent's API, not an operation of Sluice's
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _JsonOnly

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(response.data, dict) and "error" in response.data:
            error = response.data["error"]
            code = getattr(exc, "confluent_code", response.status_code * 100)
            response.data = {"error_code": code, "message": error.get("message", ""), **response.data}
        return response

    def serialized(self, request: Request) -> bool:
        fmt = request.query_params.get("format") or ""
        if fmt not in ("", SERIALIZED):
            raise InvalidInput(f"Unknown format '{fmt[:40]}'; this registry serves the text or 'serialized'.")
        return fmt == SERIALIZED

    def tenant_slug(self) -> str:
        return self.tenant.slug  # 404 for a tenant outside the caller's scope


class _Absent(NotFound):
    """404 with Confluent's code for what is absent (another tenant's included)."""

    def __init__(self, message: str, confluent_code: int) -> None:
        super().__init__(message, code="schema_not_found")
        self.confluent_code = confluent_code


class _InvalidVersion(SluiceError):
    code = "invalid_version"
    status = 422
    confluent_code = INVALID_VERSION


class SchemaById(RegistryApi):
    def get(self, request: Request, tenant: str, schema_id: int) -> Response:
        if schema_id >= 2**31:  # the registry's ids are 32-bit: no need to ask it
            self.tenant_slug()
            raise _Absent(f"Schema {schema_id} not found.", SCHEMA_NOT_FOUND)
        found = registry.tenant_schema_by_id(tenant_slug=self.tenant_slug(), schema_id=schema_id,
                                             serialized=self.serialized(request))  # fmt: skip
        if found is None:
            raise _Absent(f"Schema {schema_id} not found.", SCHEMA_NOT_FOUND)
        return Response(found)


class Subjects(RegistryApi):
    def get(self, request: Request, tenant: str) -> Response:
        return Response(registry.tenant_subjects(tenant_slug=self.tenant_slug()))


class SubjectVersions(RegistryApi):
    def get(self, request: Request, tenant: str, subject: str) -> Response:
        versions = registry.tenant_subject_versions(tenant_slug=self.tenant_slug(), subject=subject)
        if versions is None:
            raise _Absent(f"Subject '{subject[:200]}' not found.", SUBJECT_NOT_FOUND)
        return Response(versions)


class SubjectVersion(RegistryApi):
    def get(self, request: Request, tenant: str, subject: str, version: str) -> Response:
        number = _version(version)
        found = registry.tenant_subject_version(tenant_slug=self.tenant_slug(), subject=subject, version=number,
                                                serialized=self.serialized(request))  # fmt: skip
        if found is None:
            if registry.tenant_subject_versions(tenant_slug=self.tenant_slug(), subject=subject) is None:
                raise _Absent(f"Subject '{subject[:200]}' not found.", SUBJECT_NOT_FOUND)
            raise _Absent(f"Version {version} of subject '{subject[:200]}' not found.", VERSION_NOT_FOUND)
        return Response(found)


def _version(text: str) -> int | None:
    """``latest`` (or -1, as Confluent's clients may send) is None; otherwise a positive number."""
    if text in ("latest", "-1"):
        return None
    if re.fullmatch(r"[0-9]{1,10}", text) and 0 < int(text) < 2**31:
        return int(text)
    raise _InvalidVersion(f"The version must be a positive number or 'latest', not '{text[:40]}'.")
