"""The one place that talks to the schema registry (Apicurio, through its Confluent-compatible
``/apis/ccompat/v7`` API) and the one place that decides whether a schema's text is valid.

Schemas are checked here before any network call, so a typo comes back as a field error
on ``/schema`` with the parser's own words instead of a registry round trip.  The registry's
refusals are mapped into the domain's exception hierarchy (``config.errors``): 409 (the
subject's compatibility rule refuses the new version) becomes ``Conflict``, 422 (the registry
cannot parse it) ``InvalidInput``, and an unreachable or failing registry
``RegistryUnavailable``.
"""

from __future__ import annotations

import json
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

# The registry client's own HTTP library (httpx2, or httpx): a transport error (connection
# refused, timeout) surfaces as its exception once the client's retries are spent.
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError
from django.conf import settings
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from rest_framework import status

from config.errors import Conflict, InvalidInput, RegistryUnavailable, SluiceError

AVRO = "AVRO"
JSON = "JSON"
SCHEMA_TYPES = (AVRO, JSON)
SCHEMA_POINTER = "/schema"


def value_subject(topic: str) -> str:
    """The subject of a topic's record values (the serializers' default TopicNameStrategy)."""
    return f"{topic}-value"


def registry_client() -> SchemaRegistryClient:
    # Bounded: callers may hold a database transaction while they wait for the registry.
    return SchemaRegistryClient(
        {"url": settings.SLUICE_RUNTIME.registry_url, "timeout": 5, "max.retries": 1, "retries.wait.ms": 200}
    )


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _invalid(message: str, pointer: str = SCHEMA_POINTER, code: str = "invalid_schema") -> InvalidInput:
    message = _sentence(message)
    return InvalidInput(message, fields=[{"pointer": pointer, "code": code, "message": message}])


def _parse_json(schema_str: str) -> Any:
    try:
        return json.loads(schema_str)
    except json.JSONDecodeError as exc:
        raise _invalid(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None


def schema_check(*, schema_str: str, schema_type: str) -> None:
    """Raise ``InvalidInput`` (pointer ``/schema``) unless ``schema_str`` is a valid schema
    of ``schema_type``.  Pure: no network."""
    if schema_type not in SCHEMA_TYPES:
        raise _invalid(f"Schema type must be one of {', '.join(SCHEMA_TYPES)}.", "/schema_type", "invalid_choice")
    if not schema_str.strip():
        raise _invalid("A schema is required.", code="required")
    parsed = _parse_json(schema_str)
    if schema_type == AVRO:
        _check_avro(parsed)
    else:
        _check_json_schema(parsed)


def _check_avro(parsed: Any) -> None:
    if not isinstance(parsed, dict | list | str):
        raise _invalid("Not a valid Avro schema: it must be a JSON object, an array (a union) or a type name.")
    # fastavro reports most mistakes as SchemaParseException or UnknownType (a ValueError),
    # and some shapes (a bare number, an object without "type") as TypeError or KeyError.
    try:
        fastavro.parse_schema(parsed)
    except fastavro.schema.UnknownType as exc:
        raise _invalid(
            f"Not a valid Avro schema: unknown type '{exc.name}' (neither a primitive type nor a named type "
            "defined before it)."
        ) from None
    except KeyError as exc:
        raise _invalid(f"Not a valid Avro schema: missing {exc}.") from None
    except (fastavro.schema.SchemaParseException, TypeError, ValueError, AttributeError) as exc:
        raise _invalid(f"Not a valid Avro schema: {exc}") from None


def _check_json_schema(parsed: Any) -> None:
    if not isinstance(parsed, dict | bool):
        raise _invalid("Not a valid JSON Schema: it must be a JSON object (or true/false).")
    try:
        validator_for(parsed).check_schema(parsed)
    except SchemaError as exc:
        where = f" at {exc.json_path}" if exc.json_path != "$" else ""
        raise _invalid(f"Not a valid JSON Schema{where}: {exc.message}") from None


def schema_register(*, subject: str, schema_str: str, schema_type: str) -> int:
    """Register ``schema_str`` under ``subject`` and return its registry id.  Registering the
    same schema again returns the same id; a version the subject's compatibility rule
    refuses raises ``Conflict`` with the registry's reason."""
    schema_check(schema_str=schema_str, schema_type=schema_type)
    try:
        return int(registry_client().register_schema(subject, Schema(schema_str, schema_type)))
    except SchemaRegistryError as exc:
        raise _registry_error(exc, subject) from None
    except httpx.HTTPError as exc:
        raise RegistryUnavailable(f"The schema registry is not reachable ({exc}); try again shortly.") from None


def _registry_error(exc: SchemaRegistryError, subject: str) -> SluiceError:
    reason = exc.error_message or "no reason given"
    if exc.http_status_code == status.HTTP_409_CONFLICT:
        message = _sentence(f"The registry refused this schema for subject '{subject}' as incompatible: {reason}")
        return Conflict(
            message, fields=[{"pointer": SCHEMA_POINTER, "code": "incompatible_schema", "message": message}]
        )
    if exc.http_status_code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
        return RegistryUnavailable(_sentence(f"The schema registry failed: {reason}"))
    return _invalid(f"The registry refused this schema for subject '{subject}': {reason}")
