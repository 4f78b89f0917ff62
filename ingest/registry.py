"""The one place that talks to the schema registry (Apicurio, through its Confluent-compatible
``/apis/ccompat/v7`` API) and the one place that decides whether a schema's text is valid.

Schemas are checked here before any network call, so a typo comes back as a field error
on ``/schema`` with the parser's own words instead of a registry round trip.  The registry's
refusals are mapped into the domain's exception hierarchy (``config.errors``): 409 (the
subject's compatibility rule refuses the new version) becomes ``Conflict``, 422 (the registry
cannot parse it) ``InvalidInput``, and an unreachable or failing registry
``RegistryUnavailable``.

Ingest reads the latest schema of a subject through ``latest_schema``, which keeps each
answer (already compiled into a validator) for ``LATEST_SCHEMA_TTL`` seconds per process, so
the registry sees a handful of requests per subject per minute however hot the stream is.
A new schema version therefore applies to ingest within that time.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
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
from ingest.registry_client import registry_client_for

# How long ingest trusts its copy of a subject's latest schema (seconds).
LATEST_SCHEMA_TTL = 30.0

AVRO = "AVRO"
JSON = "JSON"
SCHEMA_TYPES = (AVRO, JSON)
SCHEMA_POINTER = "/schema"


def value_subject(topic: str) -> str:
    """The subject of a topic's record values (the serializers' default TopicNameStrategy)."""
    return f"{topic}-value"


def registry_client() -> SchemaRegistryClient:
    # Bounded: callers may hold a database transaction while they wait for the registry.
    return registry_client_for(settings.SLUICE_RUNTIME, timeout=5, max_retries=1)


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


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a subject as the registry holds it (for the REST API, not ingest)."""

    subject: str
    schema_id: int
    version: int
    schema_type: str
    schema_str: str


def _version(subject: str, registered: Any) -> RegisteredVersion:
    schema = registered.schema
    return RegisteredVersion(subject, int(registered.schema_id), int(registered.version or 0),
                             schema.schema_type or AVRO, schema.schema_str)  # fmt: skip


def _read_error(exc: SchemaRegistryError, subject: str) -> SluiceError:
    return RegistryUnavailable(
        _sentence(f"The schema registry refused to read subject '{subject}': {exc.error_message or exc}")
    )


def schema_latest(*, subject: str) -> RegisteredVersion | None:
    """The latest version under ``subject``, read from the registry now (no cache), or None
    when the subject has none.  Raises ``RegistryUnavailable`` when the registry cannot say."""
    try:
        return _version(subject, registry_client().get_latest_version(subject))
    except SchemaRegistryError as exc:
        if exc.http_status_code == status.HTTP_404_NOT_FOUND:
            return None
        raise _read_error(exc, subject) from None
    except httpx.HTTPError as exc:
        raise RegistryUnavailable(f"The schema registry is not reachable ({exc}); try again shortly.") from None


def schema_lookup(*, subject: str, schema_str: str, schema_type: str) -> RegisteredVersion | None:
    """The version of ``subject`` that holds exactly this schema, or None (also when the
    registry cannot read it as the subject's type: then the subject cannot hold it)."""
    try:
        return _version(subject, registry_client().lookup_schema(subject, Schema(schema_str, schema_type)))
    except SchemaRegistryError as exc:
        if exc.http_status_code in (status.HTTP_404_NOT_FOUND, status.HTTP_422_UNPROCESSABLE_ENTITY):
            return None
        raise _read_error(exc, subject) from None
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


@dataclass(frozen=True)
class LatestSchema:
    """The latest version of a subject, parsed once: ``parsed`` is the fastavro schema (AVRO)
    or the JSON Schema document (JSON), ``validator`` the compiled JSON Schema validator."""

    subject: str
    schema_id: int
    version: int
    schema_type: str
    schema_str: str
    parsed: Any
    validator: Any = None


_latest_lock = threading.Lock()
_latest: dict[tuple[str, str], tuple[float, LatestSchema]] = {}


def latest_schema(subject: str) -> LatestSchema:
    """The latest schema registered under ``subject`` (cached ``LATEST_SCHEMA_TTL`` s).

    Raises ``Conflict`` (code ``schema_not_found``) when the subject has no schema: the
    request is not at fault, the group's configuration is.  Raises ``RegistryUnavailable``
    when the registry cannot answer.  Only answers are cached, never failures, so a schema
    registered after a refusal is used at the next request."""
    key = (str(settings.SLUICE_RUNTIME.registry_socket), subject)
    now = time.monotonic()
    with _latest_lock:
        cached = _latest.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        registered = registry_client().get_latest_version(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code == status.HTTP_404_NOT_FOUND:
            raise Conflict(
                f"No schema is registered under subject '{subject}', so no record can be validated; "
                "register one (the stream's schema) and try again.",
                code="schema_not_found",
            ) from None
        if exc.http_status_code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
            raise RegistryUnavailable(_sentence(f"The schema registry failed: {exc.error_message}")) from None
        raise RegistryUnavailable(
            _sentence(f"The schema registry refused to read subject '{subject}': {exc.error_message}")
        ) from None
    except httpx.HTTPError as exc:
        raise RegistryUnavailable(f"The schema registry is not reachable ({exc}); try again shortly.") from None
    latest = _compile(subject, registered.schema_id, registered.version, registered.schema)
    with _latest_lock:
        _latest[key] = (now + LATEST_SCHEMA_TTL, latest)
    return latest


def latest_schema_forget() -> None:
    """Drop every cached schema (tests, and operators after a registry restore)."""
    with _latest_lock:
        _latest.clear()


def _compile(subject: str, schema_id: int | None, version: int | None, schema: Schema) -> LatestSchema:
    schema_type = schema.schema_type or AVRO  # the Confluent API omits the type for Avro
    if schema_type not in SCHEMA_TYPES or schema_id is None:
        raise Conflict(
            f"The schema under subject '{subject}' is of type {schema_type}; ingest validates AVRO and JSON only.",
            code="schema_not_supported",
        )
    document = json.loads(schema.schema_str)
    if schema_type == AVRO:
        # References to other subjects are not resolved: Sluice registers self-contained schemas.
        return LatestSchema(subject, int(schema_id), int(version or 0), AVRO, schema.schema_str,
                            fastavro.parse_schema(document))  # fmt: skip
    cls = validator_for(document)
    return LatestSchema(subject, int(schema_id), int(version or 0), JSON, schema.schema_str, document,
                        cls(document, format_checker=cls.FORMAT_CHECKER))  # fmt: skip


def subjects_delete(*, prefix: str = "", subjects: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Delete ``subjects`` and every subject starting with ``prefix`` (when given), soft
    then permanently (the Confluent API's two steps), so no later owner of the same names
    inherits their schemas.  Returns the subjects deleted; a subject already gone is skipped."""
    client = registry_client()
    try:
        names = set(subjects)
        if prefix:
            names |= {s for s in client.get_subjects() if s.startswith(prefix)}
        deleted: list[str] = []
        for subject in sorted(names):
            # Each step tolerates 404: a retry after a partial run finds the subject soft-deleted.
            found = False
            for permanent in (False, True):
                try:
                    client.delete_subject(subject, permanent=permanent)
                    found = True
                except SchemaRegistryError as exc:
                    if exc.http_status_code != status.HTTP_404_NOT_FOUND:
                        raise
            if found:
                deleted.append(subject)
        return deleted
    except SchemaRegistryError as exc:
        raise RegistryUnavailable(f"The schema registry refused a deletion: {exc.error_message}.") from None
    except httpx.HTTPError as exc:
        raise RegistryUnavailable(f"The schema registry is not reachable ({exc}); try again shortly.") from None
