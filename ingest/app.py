"""The ingest data plane: a plain ASGI application for ``/ingest/v1/*``, beside Django.

``POST /ingest/v1/records``: devices send telemetry, authenticated by their mTLS client
certificate (nginx verifies the chain and forwards its verdict, serial number and issuer)
or by an OAuth2 access token (``Authorization: Bearer``, RFC 6750), never both.  One query
parameter: ``invalid=reject`` (the default: one invalid record refuses the batch) or
``invalid=dlq`` (invalid records go to the tenant's dead-letter topic, see ``ingest.pipeline``).

No Django request cycle runs here (no middleware, signals, ``HttpRequest``): a request
costs what ingest itself must do.  In the steady state it touches neither the database nor
Redis: identity comes from the worker's cache (``ingest.identity``, emptied by pushed
changes of rights), rate limits from local buckets and leased slices of the tenant's
(``ingest.ratelimit``), the schema from the worker's compiled copy (``devices.registry``),
and the wait for Kafka's acknowledgement is an ``await`` on the worker's one producer.
Counters, sightings and refusals are flushed in the background (``ingest.metrics``).

Every refusal is a ``SluiceError`` rendered as the platform's one error body; success is
**200**, sent only once Kafka has acknowledged every record with ``acks=all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from django.conf import settings
from django.db import DatabaseError

from certs.tls_identity import VERIFY_REASONS
from config.errors import (
    DatabaseUnavailable,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    SluiceError,
    Unauthenticated,
    database_unavailable,
    error_body,
)
from devices.models import Device
from devices.registry import SchemaCache
from ingest import idempotency, identity, metrics, pipeline, records, services
from ingest.idempotency import Claim, Idempotency, Replay
from ingest.identity import Identity, IdentityCache, Writer
from ingest.kafka import IngestProducer, ingest_producer
from ingest.ratelimit import RateLimiter, Verdict, policy_header, redis_client, remaining_header
from ingest.rights_listener import listen
from tenants.oauth import tokens

log = logging.getLogger("sluice.ingest")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREFIX = "/ingest/"
RECORDS_PATH = "/ingest/v1/records"
MAX_TOKENS_CACHED = 100_000
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{8,64}$")
_BASE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]


class Worker:
    """What one ingest worker holds between requests; created on its event loop.  The MQTT
    bridge (ingest.mqtt_bridge) holds one too: its own ``cache`` (the rights listener feeds
    it) and ``transport`` (the dead letters' metric label)."""

    def __init__(self, cache: IdentityCache | None = None, transport: str = "https") -> None:
        runtime = settings.SLUICE_RUNTIME
        self.runtime = runtime
        self.cache = cache if cache is not None else IdentityCache()
        self.limiter = RateLimiter(runtime.redis_url())
        self.schemas = SchemaCache()
        self.outcomes = metrics.Outcomes(transport)
        self.idempotency = Idempotency(lambda: self.limiter.client, runtime.ingest.idempotency_seconds)
        self.tokens: dict[str, tuple[float, tokens.AccessClaims]] = {}
        self._producer: IngestProducer | None = None
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(listen(self.cache, runtime.redis_url()), name="sluice-rights-listener"),
            loop.create_task(self._flush_forever(), name="sluice-ingest-metrics"),
        ]

    @property
    def producer(self) -> IngestProducer:
        if self._producer is None or not self._producer.usable:
            self._producer = ingest_producer(self.runtime)
        return self._producer

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._flush()
        # The producer delivers what it still holds first: keys waiting for their records'
        # outcome get it (its reports reach them through the loop), then the waits end.
        if self._producer is not None:
            await self._producer.aclose()
        await self.idempotency.close()
        await self.limiter.close()

    # -- identity ----------------------------------------------------------------------

    async def identity(self, key: tuple[str, str], load: Callable[[], Identity | None]) -> Identity | None:
        entry = self.cache.get(key)
        if entry is not None:
            return entry.identity
        generation = self.cache.generation
        try:
            found = await identity.read(load)
        except DatabaseError as exc:
            if not database_unavailable(exc):
                raise
            # The database is away: nobody can change a right meanwhile (every change is a
            # database write, pushed after its commit), so what this worker read before the
            # entry's TTL ran out is still the truth -- as long as the push channel is live
            # (``stale`` answers only then).  A credential never seen here gets a 503.
            kept = self.cache.stale(key)
            if kept is None:
                raise DatabaseUnavailable(
                    "The database is unavailable, and this credential was not seen recently; retry shortly."
                ) from None
            return kept.identity
        self.cache.put(key, found, read_at_generation=generation)
        return found

    async def certificate_writer(self, headers: dict[bytes, bytes]) -> Writer:
        verdict = headers.get(b"x-sluice-client-verify", b"NONE")
        if verdict != b"SUCCESS":
            reason = verdict.decode("latin-1").removeprefix("FAILED:")
            code, error, message = VERIFY_REASONS.get(
                reason, ("certificate_invalid", Unauthenticated, f"The client certificate was not accepted: {reason}.")
            )
            raise error(message, code=code)
        serial = services.certificate_serial(headers.get(b"x-sluice-client-serial", b"").decode("latin-1"))
        found = await self.identity(identity.certificate_key(serial), lambda: identity.load_certificate(serial))
        issuer = headers.get(b"x-sluice-client-issuer", b"").decode("utf-8", "replace")
        try:
            return services.certificate_verdict(found, issuer=issuer, now=time.time())
        except SluiceError as error:
            if found is not None:
                error.tenant = found.writer.tenant_slug if found.writer is not None else ""
                self.refused_credential(found.grant.tenant_id, found.grant.device_pk, error)
            raise

    async def token_writer(self, authorization: bytes) -> Writer:
        token = services.bearer_token(authorization.decode("latin-1"))
        claims = await self._claims(token)
        services.token_scope_check(claims)
        key = identity.client_key(claims.client_id)
        found = await self.identity(key, lambda: identity.load_client(client_id=claims.client_id,
                                                                       tenant_slug=claims.tenant))  # fmt: skip
        try:
            return services.token_verdict(claims, found)
        except LookupError:
            # The token does not match its client (rare: only a token minted wrongly); read
            # whether the device it names exists, to say why it is refused.
            try:
                exists = await identity.read(lambda: _device_exists(claims.tenant, claims.device))
            except DatabaseError as exc:
                raise (DatabaseUnavailable() if database_unavailable(exc) else exc) from None
            return services.token_verdict(claims, found, device_exists=exists)
        except SluiceError as error:
            if found is not None:
                error.tenant = found.writer.tenant_slug if found.writer is not None else ""
                self.refused_credential(found.grant.tenant_id, found.grant.device_pk, error)
            raise

    def refused_credential(self, tenant_id: int, device_pk: int | None, error: SluiceError) -> None:
        """A credential of a known device was refused (revoked, device disabled, ...): the
        console shows it on that device's page."""
        if device_pk is not None:
            self.outcomes.refused_device(tenant_id, device_pk, error.code)

    async def _claims(self, token: str) -> tokens.AccessClaims:
        """The token's verified claims; a verified token is remembered until it expires
        (the signature and times cannot change; the client is re-read separately)."""
        now = time.time()
        known = self.tokens.get(token)
        if known is not None and known[0] > now:
            return known[1]
        try:
            claims = await asyncio.to_thread(
                tokens.verify_access_token, self.runtime, token, audience=tokens.AUD_INGEST
            )
        except Unauthenticated as exc:
            raise services.TokenRefused(exc.message, code=exc.code, error="invalid_token") from None
        if len(self.tokens) >= MAX_TOKENS_CACHED:
            self.tokens = {t: v for t, v in self.tokens.items() if v[0] > now}
            if len(self.tokens) >= MAX_TOKENS_CACHED:
                self.tokens.clear()
        self.tokens[token] = (claims.expires_at.timestamp() + tokens.LEEWAY_SECONDS, claims)
        return claims

    # -- bookkeeping ---------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(metrics.FLUSH_SECONDS)
            await self._flush()

    async def _flush(self) -> None:
        flush = self.outcomes.take()
        try:
            if flush.metrics is not None:
                queued = self._producer.queued if self._producer is not None else 0
                metrics.push_to_prometheus(flush.metrics, producer_queue=queued)
        except Exception:
            log.warning("ingest: could not update the Prometheus metrics", exc_info=True)
        try:
            if flush:
                await asyncio.to_thread(metrics.flush_to_redis, _counter_client(), flush)
        except Exception:
            log.warning("ingest: could not flush counters, sightings or refusals to Redis", exc_info=True)
        try:
            if flush.due_for_database:
                await asyncio.to_thread(metrics.write_last_seen, flush.due_for_database)
        except Exception:
            log.warning("ingest: could not write last_seen_at", exc_info=True)


def _device_exists(tenant_slug: str, device_id: str | None) -> bool:
    return Device.objects.filter(tenant__slug=tenant_slug, device_id=device_id).exists()


_counter_redis: Any = None


def _counter_client() -> Any:
    global _counter_redis
    if _counter_redis is None:
        _counter_redis = redis_client()
    return _counter_redis


class IngestApp:
    """The ASGI application for everything under ``/ingest/``."""

    def __init__(self) -> None:
        self._worker: Worker | None = None
        self._proxy_secret = settings.SLUICE_PROXY_SECRET.encode()
        # Request ids made here: this worker's random prefix and a counter (unique without a
        # system call per request).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            self._worker = Worker()
        return self._worker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Everything loaded so far (Django, the apps, the libraries) lives as long as
                # the worker: move it out of the garbage collector's sight, so that a full
                # collection scans only what requests made (147,000 objects took a full
                # collection ~70 ms, a pause every request in flight would wait through).
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._worker is not None:
                    await self._worker.close()
                    self._worker = None
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        tenant = ""
        headers = dict(scope["headers"])
        offered = headers.get(b"x-request-id", b"")
        request_id = offered if _REQUEST_ID.match(offered) else f"{self._id_prefix}{next(self._ids):016x}".encode()
        extra: list[tuple[bytes, bytes]] = []
        try:
            if scope["path"] != RECORDS_PATH:
                raise NotFound(f"No ingest endpoint at {scope['path'][:100]}; devices POST to {RECORDS_PATH}.")
            if scope["method"] != "POST":
                extra.append((b"allow", b"POST"))
                raise MethodNotAllowed("Send records with POST.", code="method_not_allowed")
            status, body, request_id, tenant = await self.records(
                headers, receive, request_id, extra, scope.get("query_string", b"")
            )
        except SluiceError as error:
            status, body = error.status, orjson.dumps(error_body(error.code, error.message, error.fields))
            tenant = error.tenant
            self._refused(error, extra, request_id)
        except Exception:
            log.exception("ingest: unexpected failure (request %s)", request_id.decode())
            status, body = 500, orjson.dumps(error_body("internal_error", "Ingest failed unexpectedly; nothing is "
                                                        "known to have been written. Try again."))  # fmt: skip
        if self._worker is not None:
            self._worker.outcomes.answered(tenant, status, time.perf_counter() - started)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_BASE_HEADERS, (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", request_id), *extra]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    def _refused(self, error: SluiceError, extra: list[tuple[bytes, bytes]], request_id: bytes) -> None:
        # One JSON line per refusal (config.logs): never the body, the credential or the
        # error's fields (they may quote what was sent).
        tenant, group, device = error.subject or (error.tenant, "", "")
        log.info("ingest: refused %s (%s)", error.code, error.status,
                 extra={"request_id": request_id.decode(), "outcome": "refused", "code": error.code,
                        "status": error.status, "tenant": tenant, "group": group, "device": device})  # fmt: skip
        if self._worker is not None:
            self._worker.outcomes.refused(
                error.code, error.tenant, error.scope if isinstance(error, RateLimited) else None
            )
        if error.retry_after is not None:
            extra.append((b"retry-after", str(error.retry_after).encode()))
        challenge = services.www_authenticate(error)
        if challenge is not None:
            extra.append((b"www-authenticate", challenge.encode()))

    async def records(
        self,
        headers: dict[bytes, bytes],
        receive: Receive,
        request_id: bytes,
        extra: list[tuple[bytes, bytes]],
        query: bytes = b"",
    ) -> tuple[int, bytes, bytes, str]:
        """Everything a POST goes through, in the order the refusals are promised: who
        (401/403), then the query (400), the body's size (413), type (415), shape (400),
        the rate limits (429), the Idempotency-Key (409/422), the schema (409/503) and the
        records (422, unless ``invalid=dlq``); then Kafka (503 or 200).  Returns the
        status, the body, the request id (a replayed answer keeps its first request's) and
        the tenant (a refusal carries it once the device is known).  The steps after the
        body are ``ingest.pipeline``'s, which other transports run too."""
        worker = self.worker
        writer = await self.authenticate(worker, headers)
        claim: Claim | None = None
        producing = False
        # A try block costs nothing until something is raised (CPython 3.11's zero-cost
        # exceptions): only a refusal pays for its attribution to the device.
        try:
            options = batch_options(query) if query else pipeline.ALL_OR_NOTHING
            received_at = time.time() if options.dead_letters else None
            key = headers.get(idempotency.HEADER)
            if key is not None:
                key = idempotency.parse_key(key)
            body = await _read_body(headers, receive)
            media = records.check_content_type(headers.get(b"content-type", b"").decode("latin-1"))
            parsed = records.parse_body(body, media)
            budget = pipeline.budget(writer, parsed, len(body))
            extra.append((b"ratelimit-policy", policy_header(budget).encode()))
            try:
                verdict = await pipeline.admit(worker, budget)
            except SluiceError:
                extra.append((b"ratelimit", remaining_header(Verdict(0, 1, 0)).encode()))
                raise
            extra.append((b"ratelimit", remaining_header(verdict).encode()))
            if key is not None:
                # The key names the request: the same body with another option is another request.
                request = (b"invalid=dlq;" if options.dead_letters else b"") + media.encode() + body
                held = await worker.idempotency.claim(writer.tenant_id, writer.pk, key, request, request_id)
                if isinstance(held, Replay):
                    extra.append(idempotency.REPLAYED)
                    return held.status, held.body, held.request_id, writer.tenant_slug
                claim = held
            prepared = await pipeline.prepare(worker, writer, parsed, request_id=request_id.decode(), options=options,
                                              received_at=received_at)  # fmt: skip
            producing = True
            produced_at = time.perf_counter()
            accepted = await pipeline.produce(worker, prepared, idempotent=claim is not None)
        except SluiceError as error:
            error.tenant = writer.tenant_slug
            worker.outcomes.refused_device(writer.tenant_id, writer.pk, error.code)
            error.subject = (writer.tenant_slug, writer.group_slug, writer.device_id)
            if claim is not None:
                await worker.idempotency.refused(claim, error)
            raise
        except BaseException:
            # A bug (500) or a cancelled request: the key is freed if nothing was produced,
            # and otherwise held for as long as librdkafka may still write the records.
            if claim is not None:
                worker.idempotency.abandoned(claim, produced=producing)
            raise
        worker.outcomes.accepted(accepted.produced, writer.pk, writer.tenant_slug, writer.topic, len(body),
                                 time.perf_counter() - produced_at)  # fmt: skip
        if prepared.dead is not None and prepared.dead.errors:
            worker.outcomes.dead_lettered(writer.tenant_slug, (e["code"] for e in prepared.dead.errors.values()))
        answer = accepted.as_json()
        if claim is not None:
            await worker.idempotency.complete(claim, 200, answer)
        return 200, answer, request_id, writer.tenant_slug

    async def authenticate(self, worker: Worker, headers: dict[bytes, bytes]) -> Writer:
        """The device a request may write for, proven by exactly one credential."""
        # Only nginx knows the secret: anyone else reaching the socket is treated as having
        # presented no certificate, whatever headers it sends.
        from_nginx = hmac.compare_digest(headers.get(b"x-sluice-proxy-secret", b""), self._proxy_secret)
        presented = from_nginx and headers.get(b"x-sluice-client-verify", b"NONE") != b"NONE"
        authorization = headers.get(b"authorization")
        if authorization:
            if presented:
                raise services.ambiguous_credentials()
            return await worker.token_writer(authorization)
        if not presented:
            raise services.no_credential()
        return await worker.certificate_writer(headers)


INVALID_PARAMETER = "invalid"
_INVALID_CHOICES = {"reject": pipeline.ALL_OR_NOTHING, "dlq": pipeline.DEAD_LETTERS}


def batch_options(query: bytes) -> pipeline.Options:
    """The batch's options from the query string: ``invalid=reject`` (the default) or
    ``invalid=dlq``.  Anything else is a 400 naming the parameter (``/query/<name>``): a
    misspelt option must not silently mean all or nothing."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        message = "The query string cannot be read; the one parameter is invalid=reject or invalid=dlq."
        fields = [{"pointer": "/query", "code": "invalid_parameter", "message": message}]
        raise InvalidInput(message, code="invalid_parameter", fields=fields) from None
    unknown = sorted({name for name, _ in pairs if name != INVALID_PARAMETER})
    if unknown:
        raise InvalidInput(
            f"Unknown query parameter(s): {', '.join(repr(name[:40]) for name in unknown)}; this endpoint takes "
            f"'{INVALID_PARAMETER}' (reject or dlq).",
            code="unknown_parameter",
            fields=[{"pointer": f"/query/{records.escape_pointer(name[:40])}", "code": "unknown_parameter",
                     "message": "Not a parameter of this endpoint."} for name in unknown],
        )  # fmt: skip
    values = [value for _, value in pairs]
    if len(values) != 1 or values[0] not in _INVALID_CHOICES:
        shown = ", ".join(repr(value[:40]) for value in values)
        message = (f"'{INVALID_PARAMETER}' is {shown}; it is 'reject' (the default: one invalid record refuses the "
                   "batch) or 'dlq' (invalid records go to the tenant's dead-letter topic), given once.")  # fmt: skip
        raise InvalidInput(message, code="invalid_parameter",
                           fields=[{"pointer": f"/query/{INVALID_PARAMETER}", "code": "invalid_parameter",
                                    "message": message}])  # fmt: skip
    return _INVALID_CHOICES[values[0]]


async def _read_body(headers: dict[bytes, bytes], receive: Receive) -> bytes:
    """The body, refused by its declared length before it is read, and read to at most one
    byte more than the limit (so a body without a length cannot fill memory either)."""
    declared = headers.get(b"content-length")
    if declared:
        try:
            records.check_size(int(declared))
        except ValueError:
            raise InvalidInput("Content-Length is not a number.", code="invalid_content_length") from None
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("The client went away before the body was read.", code="client_disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > records.MAX_BODY_BYTES:
                records.check_size(size)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
