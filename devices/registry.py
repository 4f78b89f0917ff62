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

import asyncio
import base64
import functools
import io
import json
import logging
import os
import re
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import fastavro
import jsonschema_rs
import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

# The registry client's own HTTP library (httpx2, or httpx): a transport error (connection
# refused, timeout) surfaces as its exception once the client's retries are spent.
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError
from django.conf import settings
from google.protobuf import json_format
from google.protobuf.message import EncodeError
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft7Validator, validator_for
from rest_framework import status

from config.env import Runtime
from config.errors import Conflict, InvalidInput, RegistryUnavailable, SluiceError
from devices.avro_encoder import Encoder, compile_encoder
from devices.avro_json import AVRO_CODES, avro_json_schema
from devices.protobuf import PROTOBUF_CODES, ProtoError, compile_proto, compile_record_type
from devices.registry_client import registry_client_for

log = logging.getLogger("sluice.ingest")
T = TypeVar("T")

# How long ingest trusts its copy of a subject's latest schema (seconds), and how long it
# waits after a refresh failed before it asks the registry again (per subject and worker).
LATEST_SCHEMA_TTL = 30.0
REFRESH_RETRY = 5.0
MAGIC_BYTE = 0

AVRO = "AVRO"
JSON = "JSON"
PROTOBUF = "PROTOBUF"
SCHEMA_TYPES = (AVRO, JSON, PROTOBUF)
SCHEMA_POINTER = "/schema"
# The longest schema text Sluice accepts (the API and the console).
MAX_SCHEMA_CHARS = 65_536


def value_subject(topic: str) -> str:
    """The subject of a topic's record values (the serializers' default TopicNameStrategy)."""
    return f"{topic}-value"


def new_registry_client(runtime: Runtime) -> SchemaRegistryClient:
    """A client built afresh (``registry_client`` hands out a kept one)."""
    # Bounded: callers may hold a database transaction while they wait for the registry.
    return registry_client_for(runtime, timeout=5, max_retries=1)


_kept_lock = threading.Lock()
_kept: tuple[tuple[int, object], SchemaRegistryClient] | None = None  # ((pid, runtime), client)


def registry_client() -> SchemaRegistryClient:
    """The process's registry client, its caches emptied, so it answers like a new one.

    Building a client costs ~75 ms of CPU (its HTTP clients load TLS trust stores): a client
    per call made every schema registration and console page that reads the registry pay
    it, and every ingest worker's refresh of every subject it serves (one worker with a
    thousand tenants' subjects would have spent more than two cores on it).  The client's
    caches (latest versions never expire) are cleared on every hand-out instead, and it opens
    a connection per request (``registry_client_for``).  A new one is built in a forked
    child, when the runtime is replaced, and after ``latest_schema_forget``; an external
    registry still gets a new client per call."""
    global _kept
    runtime = settings.SLUICE_RUNTIME
    if runtime.external_registry is not None:
        # An external registry's client keeps its connections alive (Sluice does not build
        # its transport): a new one per call, as ever, rather than risk a closed one.
        return new_registry_client(runtime)
    made_for = (os.getpid(), runtime)
    with _kept_lock:
        if _kept is None or _kept[0] != made_for:
            _kept = (made_for, new_registry_client(runtime))
        client = _kept[1]
    client.clear_caches()
    return client


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
    if schema_type == PROTOBUF:
        _check_protobuf(schema_str)
        return
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


def _check_protobuf(schema_str: str) -> None:
    """protoc's verdict, and then whether ingest can validate the first message's records."""
    try:
        compiled = compile_record_type(schema_str)
    except ProtoError as exc:
        raise _invalid(f"Not a valid Protobuf schema: {exc}") from None
    try:
        compile_json_schema(compiled.json_schema)
    except (ValueError, jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError) as exc:
        raise _invalid(f"Ingest cannot validate records of this Protobuf schema: {_first_line(exc)}") from None


def _check_json_schema(parsed: Any) -> None:
    if not isinstance(parsed, dict | bool):
        raise _invalid("Not a valid JSON Schema: it must be a JSON object (or true/false).")
    try:
        # As compile_json_schema.  true/false are schemas too (types-jsonschema says dict only).
        validator_for(parsed, default=Draft7Validator).check_schema(parsed)  # type: ignore[arg-type]
    except SchemaError as exc:
        where = f" at {exc.json_path}" if exc.json_path != "$" else ""
        raise _invalid(f"Not a valid JSON Schema{where}: {exc.message}") from None
    # What ingest will compile: a pattern the linear-time engine cannot run (lookaround,
    # backreferences) or a reference outside the schema is refused now, not at every POST.
    try:
        compile_json_schema(parsed)
    except (ValueError, jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError) as exc:
        raise _invalid(
            f"Ingest cannot validate with this JSON Schema: {_first_line(exc)} (patterns run on a linear-time "
            "engine without lookaround or backreferences; references must stay inside the schema)"
        ) from None


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
        raise _unreachable(exc) from None


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


def _read(subject: str, read: Callable[[], T], *, absent: tuple[int, ...] = (status.HTTP_404_NOT_FOUND,)) -> T | None:
    """One registry read: None when the registry answers one of ``absent``; its other
    refusals as ``_read_error``; ``RegistryUnavailable`` when it cannot be reached."""
    try:
        return read()
    except SchemaRegistryError as exc:
        if exc.http_status_code in absent:
            return None
        raise _read_error(exc, subject) from None
    except httpx.HTTPError as exc:
        raise _unreachable(exc) from None


def _unreachable(exc: httpx.HTTPError) -> RegistryUnavailable:
    return RegistryUnavailable(f"The schema registry is not reachable ({exc}); try again shortly.")


def schema_latest(*, subject: str) -> RegisteredVersion | None:
    """The latest version under ``subject``, read from the registry now (no cache), or None
    when the subject has none.  Raises ``RegistryUnavailable`` when the registry cannot say."""
    return _read(subject, lambda: _version(subject, registry_client().get_latest_version(subject)))


def schema_lookup(*, subject: str, schema_str: str, schema_type: str) -> RegisteredVersion | None:
    """The version of ``subject`` that holds exactly this schema, or None (also when the
    registry cannot read it as the subject's type: then the subject cannot hold it)."""
    schema = Schema(schema_str, schema_type)
    return _read(subject, lambda: _version(subject, registry_client().lookup_schema(subject, schema)),
                 absent=(status.HTTP_404_NOT_FOUND, status.HTTP_422_UNPROCESSABLE_ENTITY))  # fmt: skip


def schema_versions(*, subject: str) -> list[int]:
    """The version numbers under ``subject``, oldest first (empty when it has none)."""
    return _read(subject, lambda: sorted(int(v) for v in registry_client().get_versions(subject))) or []


def schema_version(*, subject: str, version: int) -> RegisteredVersion | None:
    """Version ``version`` of ``subject``, or None when the subject has no such version."""
    # 422: a number the registry cannot take as a version (Confluent: 42202).
    return _read(subject, lambda: _version(subject, registry_client().get_version(subject, version)),
                 absent=(status.HTTP_404_NOT_FOUND, status.HTTP_422_UNPROCESSABLE_ENTITY))  # fmt: skip


def schema_compatibility(*, subject: str, schema_str: str, schema_type: str) -> list[str] | None:
    """Ask the registry whether ``subject``'s compatibility rule would accept this schema as
    its next version, without registering it (Confluent API ``POST /compatibility/subjects/
    <subject>/versions/latest?verbose=true``).  None: it would; else the registry's reasons
    (the Confluent registry names them with ``verbose``; Apicurio's Confluent API answers the
    verdict only, so its own API is asked for them; empty when neither says).  A subject
    without versions accepts anything."""
    schema_check(schema_str=schema_str, schema_type=schema_type)
    client = registry_client()
    # The client's test_compatibility keeps only the verdict; the reasons are in the same answer.
    path = f"compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true"
    try:
        answer = client._rest_client.post(path, body=Schema(schema_str, schema_type).to_dict())
    except SchemaRegistryError as exc:
        if exc.http_status_code == status.HTTP_404_NOT_FOUND:
            return None
        raise _registry_error(exc, subject) from None
    except httpx.HTTPError as exc:
        raise _unreachable(exc) from None
    if answer.get("is_compatible"):
        return None
    return [str(message) for message in answer.get("messages") or []] or _apicurio_reasons(client, subject, schema_str)


CCOMPAT_PATH = "/apis/ccompat/v7"
APICURIO_V3_PATH = "/apis/registry/v3"


def _apicurio_reasons(client: SchemaRegistryClient, subject: str, schema_str: str) -> list[str]:
    """Apicurio's reasons for refusing ``schema_str`` under ``subject``, which its Confluent API
    does not give on a compatibility check (only when registering): its own API's dry run of a
    new version (``POST /apis/registry/v3/groups/default/artifacts/<subject>/versions?dryRun=true``,
    where the Confluent API keeps its subjects) answers them, as ``causes`` of description and
    place, and registers nothing.  Empty when the registry is not Apicurio or does not say."""
    rest = client._rest_client
    base = str(rest.base_urls[0]).rstrip("/")
    if not base.endswith(CCOMPAT_PATH):
        return []
    url = f"{base.removesuffix(CCOMPAT_PATH)}{APICURIO_V3_PATH}/groups/default/artifacts/{quote(subject, safe='')}"
    version = {"content": {"content": schema_str, "contentType": "application/json"}}
    try:
        answer = rest.session.post(f"{url}/versions", params={"dryRun": "true"}, json=version)
        body = answer.json() if answer.is_client_error else None
    except (httpx.HTTPError, ValueError):
        return []
    causes = body.get("causes") if isinstance(body, dict) else None
    if not isinstance(causes, list):
        return []
    return [f"{c['description']} (at {c['context']} in the schema)" if c.get("context") else str(c["description"])
            for c in causes if isinstance(c, dict) and c.get("description")]  # fmt: skip


# Apicurio words a compatibility refusal as "..., list of diff types: [<reason> at <pointer>,
# <reason> at <pointer>]"; each reason becomes a field error of its own.
_DIFF_LIST = re.compile(r"list of diff types: \[(?P<diffs>.*)\]\s*$", re.DOTALL)
_DIFF = re.compile(r"(?P<reason>.+?) at (?P<where>/\S*)(?:, |$)")


def incompatible(subject: str, reasons: list[str]) -> Conflict:
    """The domain's answer to "the subject's compatibility rule refuses this schema": 409,
    one field error at ``/schema`` (code ``incompatible_schema``) per reason the registry gave."""
    refused = f"The registry refused this schema for subject '{subject}' as incompatible with its latest version"
    why = (": " + "; ".join(reasons)) if reasons else (
        " (the subject's rule is BACKWARD: consumers using the new schema must read every record written with the "
        "latest one)"
    )  # fmt: skip
    summary = _sentence(refused + why)
    messages = [_sentence(f"Incompatible with the latest version: {reason}") for reason in reasons] or [summary]
    fields = [{"pointer": SCHEMA_POINTER, "code": "incompatible_schema", "message": m} for m in messages]
    return Conflict(summary, fields=fields)


def incompatibility_reasons(message: str) -> list[str]:
    """The registry's reasons out of its 409 message: Apicurio's diff list, one per reason
    ("Additional properties are no longer allowed (at /additionalProperties)"), or the
    whole message when it is worded some other way."""
    found = _DIFF_LIST.search(message)
    if found:
        reasons = [f"{m['reason']} (at {m['where']} in the schema)" for m in _DIFF.finditer(found["diffs"])]
        if reasons:
            return reasons
    return [message.split("RuleViolationException: ", 1)[-1]]


def _registry_error(exc: SchemaRegistryError, subject: str) -> SluiceError:
    reason = exc.error_message or "no reason given"
    if exc.http_status_code == status.HTTP_409_CONFLICT:
        return incompatible(subject, incompatibility_reasons(reason))
    if exc.http_status_code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
        return RegistryUnavailable(_sentence(f"The schema registry failed: {reason}"))
    return _invalid(f"The registry refused this schema for subject '{subject}': {reason}")


JSON_SCHEMA_OPTIONS: dict[str, Any] = {
    # Formats are asserted on every draft (2019-09 and 2020-12 make them annotations by
    # default; a stream that says "date-time" means it).
    "validate_formats": True,
    # Tenants write these schemas: their "pattern"s run on the shared ingest workers, so
    # they run on the linear-time engine (no lookaround, no backreferences: refused when
    # the schema is registered, see schema_check), never a backtracking one.
    "pattern_options": jsonschema_rs.RegexOptions(),
}


def _no_remote(uri: str) -> Any:
    # Sluice registers self-contained schemas; fetching a $ref from the network would let a
    # schema make the ingest workers call out (and stall) on every compile.
    raise ValueError(f"references outside the schema are not supported: {uri}")


def compile_json_schema(document: Any) -> Any:
    """The compiled jsonschema-rs validator of ``document`` (raises on a schema it refuses).

    A schema that names no ``$schema`` is read as draft-07, the draft the registry and the
    Confluent serializers assume, so a consumer validating with them agrees with ingest
    (the libraries' own default, the latest draft, reads tuple ``items`` and
    ``dependencies`` differently)."""
    if isinstance(document, dict) and "$schema" not in document:
        return jsonschema_rs.Draft7Validator(document, retriever=_no_remote, **JSON_SCHEMA_OPTIONS)
    return jsonschema_rs.validator_for(document, retriever=_no_remote, **JSON_SCHEMA_OPTIONS)


@dataclass(frozen=True)
class LatestSchema:
    """The latest version of a subject, compiled once: ``validator`` checks the JSON records
    devices send (the stream's JSON Schema, or for AVRO the JSON Schema equivalent to the
    Avro schema, ``devices.avro_json``), ``parsed`` is the fastavro schema (AVRO) or the JSON
    Schema document (JSON), ``codes`` renames validation keywords into the refusal codes of
    this schema type."""

    subject: str
    schema_id: int
    version: int
    schema_type: str
    schema_str: str
    parsed: Any
    validator: Any = None
    codes: dict[str, str] = field(default_factory=dict)
    prefix: bytes = b""  # the Confluent wire format's magic byte and schema id
    # AVRO: the encoder compiled from ``parsed`` (devices.avro_encoder), the prefix
    # included, or None where the schema holds what only fastavro writes.  PROTOBUF: the
    # first message's encoder (devices.protobuf), prefix and message indexes included.
    encoder: Encoder | None = None

    def encode(self, record: Any) -> bytes:
        """The Confluent wire format of one validated record."""
        if self.schema_type == PROTOBUF:
            return self.encode_all([record])[0]
        if self.schema_type == AVRO:
            if self.encoder is not None:
                return self.encoder(record)
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, self.parsed, record)
            return self.prefix + buffer.getvalue()
        return self.prefix + orjson.dumps(record)

    def encode_all(self, records: list[Any]) -> list[bytes]:
        if self.schema_type == PROTOBUF:
            assert self.encoder is not None
            return _encode_protobuf(self.encoder, records)
        if self.schema_type == AVRO and (encoder := self.encoder) is not None:
            return [encoder(records[0])] if len(records) == 1 else [encoder(record) for record in records]
        if self.schema_type == AVRO:
            out = []
            buffer = io.BytesIO()
            write, parsed, prefix = fastavro.schemaless_writer, self.parsed, self.prefix
            for record in records:
                buffer.seek(0)
                buffer.truncate()
                write(buffer, parsed, record)
                out.append(prefix + buffer.getvalue())
            return out
        prefix, dumps = self.prefix, orjson.dumps
        return [prefix + dumps(record) for record in records]


class RecordNotEncodable(ValueError):
    """Record ``index`` passed validation but its schema's encoder refuses it (Protobuf: two
    fields of one oneof, a 64-bit string out of range)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def _encode_protobuf(encoder: Encoder, records: list[Any]) -> list[bytes]:
    out = []
    for index, record in enumerate(records):
        try:
            out.append(encoder(record))
        except (json_format.ParseError, EncodeError) as exc:
            raise RecordNotEncodable(index, str(exc) or type(exc).__name__) from None
    return out


def _fetch(subject: str) -> LatestSchema:
    """Ask the registry for ``subject``'s latest version and compile it (blocking)."""
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
    return _compile(subject, registered.schema_id, registered.version, registered.schema)


_latest_lock = threading.Lock()
_latest: dict[tuple[str, str], tuple[float, LatestSchema]] = {}


def latest_schema(subject: str) -> LatestSchema:
    """The latest schema registered under ``subject`` (cached ``LATEST_SCHEMA_TTL`` s per
    process; blocking).  The data plane uses ``SchemaCache`` instead.

    Raises ``Conflict`` (code ``schema_not_found``) when the subject has no schema: the
    request is not at fault, the group's configuration is.  Raises ``RegistryUnavailable``
    when the registry cannot answer.  Only answers are cached, never failures."""
    key = (str(settings.SLUICE_RUNTIME.registry_socket), subject)
    now = time.monotonic()
    with _latest_lock:
        cached = _latest.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    latest = _fetch(subject)
    with _latest_lock:
        _latest[key] = (now + LATEST_SCHEMA_TTL, latest)
    return latest


def latest_schema_forget() -> None:
    """Drop every cached schema of this process (tests, and operators after a registry restore)."""
    global _kept
    with _latest_lock:
        _latest.clear()
    with _kept_lock:
        _kept = None
    for cache in list(SchemaCache.instances):
        cache.forget()


class SchemaCache:
    """The data plane's schemas, per worker, by subject, read without blocking the event loop.

    A subject's schema is fetched once and used for ``LATEST_SCHEMA_TTL`` seconds; after that
    the next request still uses it while one refresh runs in the background
    (stale-while-revalidate), so a request never waits for the registry once its subject is
    known, and a new schema version applies within about ``LATEST_SCHEMA_TTL`` seconds.

    While the registry is away, ingest keeps validating against the version it holds, for as
    long as the outage lasts: a schema id never changes meaning (the registry never gives an
    id to other content), so records encoded with it stay readable by every consumer; at
    worst they use the previous version of a subject whose newest version was registered
    in the last ``LATEST_SCHEMA_TTL`` seconds before the outage.  A failed refresh is tried
    again after ``REFRESH_RETRY`` seconds, not on every request.  Only a subject this worker
    never read gets 503 ``registry_unavailable``.  A subject that has no schema (409) is
    not remembered: the next request asks again."""

    instances: ClassVar[weakref.WeakSet[SchemaCache]] = weakref.WeakSet()

    def __init__(self, fetch: Callable[[str], LatestSchema] = _fetch, *, ttl: float = LATEST_SCHEMA_TTL,
                 retry: float = REFRESH_RETRY) -> None:  # fmt: skip
        self._fetch = fetch
        self.ttl = ttl
        self.retry = retry
        self._known: dict[str, tuple[float, LatestSchema]] = {}  # subject -> (ask again after, schema)
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        SchemaCache.instances.add(self)

    def forget(self) -> None:
        self._known.clear()

    async def get(self, subject: str) -> LatestSchema:
        known = self._known.get(subject)
        if known is not None:
            ask_after, schema = known
            if time.monotonic() >= ask_after and subject not in self._refreshing:
                self._refreshing[subject] = asyncio.get_running_loop().create_task(self._refresh(subject))
            return schema
        schema = await asyncio.to_thread(self._fetch, subject)
        self._known[subject] = (time.monotonic() + self.ttl, schema)
        return schema

    async def _refresh(self, subject: str) -> None:
        try:
            schema = await asyncio.to_thread(self._fetch, subject)
            self._known[subject] = (time.monotonic() + self.ttl, schema)
        except Conflict:
            # The subject lost its schemas (deleted in the registry): stop using the old one.
            self._known.pop(subject, None)
        except SluiceError as exc:
            known = self._known.get(subject)
            if known is not None:
                self._known[subject] = (time.monotonic() + self.retry, known[1])
            log.warning(
                "ingest: keeping schema id %s of %s while the registry is away (%s); asking again in %.0f s",
                known[1].schema_id if known else "?", subject, exc.message, self.retry,
            )  # fmt: skip
        finally:
            self._refreshing.pop(subject, None)


# -- a tenant's own schemas, read-only (the scoped registry API, devices/registry_api.py) ---------


def tenant_owns_subject(tenant_slug: str, subject: str) -> bool:
    """Whether ``subject`` lies in the tenant's namespace (its topics' subjects)."""
    return subject.startswith(f"iot.{tenant_slug}.")


def tenant_schema_by_id(*, tenant_slug: str, schema_id: int, serialized: bool = False) -> dict[str, Any] | None:
    """Schema ``schema_id`` as the Confluent API answers ``GET /schemas/ids/{id}``, or None when
    no subject of the tenant holds it (another tenant's id is as absent as an unused one).
    ``serialized``: a Protobuf schema as its base64 ``FileDescriptorProto`` (what
    confluent-kafka's ``ProtobufDeserializer`` asks for; the registry only has the text)."""
    client = registry_client()
    versions = _read(str(schema_id), lambda: client.get_schema_versions(schema_id)) or []
    if not any(tenant_owns_subject(tenant_slug, v.subject) for v in versions if v.subject):
        return None
    schema = _read(str(schema_id), lambda: client.get_schema(schema_id))
    if schema is None:
        return None
    return _confluent_schema(schema.schema_type or AVRO, schema.schema_str or "", serialized=serialized)


def tenant_subjects(*, tenant_slug: str) -> list[str]:
    """The tenant's subjects in the registry, sorted."""
    subjects = _read(tenant_slug, lambda: list(registry_client().get_subjects())) or []
    return sorted(s for s in subjects if tenant_owns_subject(tenant_slug, s))


def tenant_subject_versions(*, tenant_slug: str, subject: str) -> list[int] | None:
    """The versions of one of the tenant's subjects, or None (not the tenant's, or none)."""
    if not tenant_owns_subject(tenant_slug, subject):
        return None
    versions = schema_versions(subject=subject)
    return versions or None


def tenant_subject_version(
    *, tenant_slug: str, subject: str, version: int | None, serialized: bool = False
) -> dict[str, Any] | None:
    """Version ``version`` (None: the latest) of one of the tenant's subjects, as the Confluent
    API answers ``GET /subjects/{subject}/versions/{version}``, or None."""
    if not tenant_owns_subject(tenant_slug, subject):
        return None
    found = schema_latest(subject=subject) if version is None else schema_version(subject=subject, version=version)
    if found is None:
        return None
    return {"subject": found.subject, "id": found.schema_id, "version": found.version,
            **_confluent_schema(found.schema_type, found.schema_str, serialized=serialized)}  # fmt: skip


def _confluent_schema(schema_type: str, text: str, *, serialized: bool) -> dict[str, Any]:
    if schema_type == PROTOBUF and serialized:
        text = serialized_descriptor(text)
    body: dict[str, Any] = {"schema": text, "references": []}
    if schema_type != AVRO:  # the Confluent API leaves the type out for Avro
        body["schemaType"] = schema_type
    return body


@functools.lru_cache(maxsize=256)
def serialized_descriptor(text: str) -> str:
    """A ``.proto``'s own ``FileDescriptorProto``, base64 (its imports are the well-known
    types, which every Protobuf runtime has).  Kept per text: protoc costs ~50 ms a run, and
    a schema's text never changes under its id."""
    try:
        return base64.b64encode(compile_proto(text).file[-1].SerializeToString()).decode()
    except ProtoError as exc:
        raise RegistryUnavailable(f"A registered .proto could not be compiled ({exc}).") from None


def _compile(subject: str, schema_id: int | None, version: int | None, schema: Schema) -> LatestSchema:
    schema_type = schema.schema_type or AVRO  # the Confluent API omits the type for Avro
    if schema_type not in SCHEMA_TYPES or schema_id is None:
        raise Conflict(
            f"The schema under subject '{subject}' is of type {schema_type}; ingest validates "
            f"{', '.join(SCHEMA_TYPES)} only.",
            code="schema_not_supported",
        )
    text = schema.schema_str
    assert text is not None  # a registered schema always has its text; confluent-kafka types it optional
    prefix = struct.pack(">bI", MAGIC_BYTE, int(schema_id))
    try:
        if schema_type == PROTOBUF:
            proto = compile_record_type(text)
            return LatestSchema(subject, int(schema_id), int(version or 0), PROTOBUF, text, proto.descriptor,
                                compile_json_schema(proto.json_schema), PROTOBUF_CODES, prefix,
                                proto.encoder(prefix))  # fmt: skip
        document = json.loads(text)
        if schema_type == AVRO:
            # References to other subjects are not resolved: Sluice registers self-contained schemas.
            parsed = fastavro.parse_schema(document)
            validator = compile_json_schema(avro_json_schema(parsed))
            return LatestSchema(subject, int(schema_id), int(version or 0), AVRO, text, parsed,
                                validator, AVRO_CODES, prefix, compile_encoder(parsed, prefix))  # fmt: skip
        return LatestSchema(subject, int(schema_id), int(version or 0), JSON, text, document,
                            compile_json_schema(document), {}, prefix)  # fmt: skip
    except (ValueError, jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError) as exc:
        # (ProtoError is a ValueError: a registered .proto protoc cannot compile here.)
        raise Conflict(
            f"Schema '{subject}' version {version} cannot be used for validation ({_first_line(exc)}); only "
            "self-contained schemas whose patterns need no lookaround or backreferences are supported. "
            "Register a version that is.",
            code="schema_not_supported",
        ) from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


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
