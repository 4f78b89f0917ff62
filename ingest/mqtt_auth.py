"""``python -m ingest.mqtt_auth``: the decisions behind Sluice's Mosquitto.

Mosquitto terminates MQTT over TLS and checks client certificates against the same trust
and CRL bundles as nginx; its plugin (platform/mosquitto/sluice_auth.c) asks this process,
over a Unix socket, everything else: who may connect, who may publish or subscribe where,
and which open sessions must end.  The decisions are ingest's own
(``ingest.services.certificate_verdict`` / ``token_verdict``, from identities read through
``ingest.identity``), so a device is refused on MQTT exactly when it is refused on HTTPS.

The line protocol (one request line, one answer line; every field lower-case hex of its
UTF-8 bytes, ``-`` for an absent or empty one; ``conn`` is an opaque id of the connection):

* ``AUTH <conn> <client id> <username> <password> <client certificate, DER>`` -> ``OK`` or
  ``NO <code>``.  With a certificate (the
  mTLS listener) the certificate is the credential and a password is refused as ambiguous;
  without one (the token listener) the password must be an access token of a token group's
  device (audience ``sluice-ingest``, scope ``ingest:write``).  The MQTT client id must be
  ``<tenant>/<device>``, or that followed by ``/<anything>`` (several sessions of one
  device): a device can never take over another device's session (Mosquitto ends an older
  session with the same client id).
* ``ACL <conn> <access> <topic> <client id>`` -> ``OK`` or ``NO``.  ``access`` is Mosquitto's
  (1 read, 2 write, 4 subscribe, 8 unsubscribe).  A device writes only to
  ``device_topic(...)`` = ``sluice/<tenant>/<group>/<device>/records``, and subscribes to
  and receives only topics under its own ``sluice/<tenant>/<group>/<device>/``.
* ``BYE <conn>`` -> ``OK``: the connection ended.
* ``KICKS`` -> ``OK[ <client id>...][ | <conn>...]``: sessions to end now (polled every
  ``POLL_MS``), and after ``|`` the connections whose allowed publish the plugin must forget
  (``*``: all of them).  The plugin remembers a publish this process allowed, per connection,
  and lets that connection's next publishes to the same topic through without asking (a
  round trip per record cost a fifth of MQTT's CPU); a connection a change of rights touched
  is named here at the next poll, and from then on asked about again, and refused while it
  is re-checked.  So a change stops a session's publishes within ``POLL_MS`` of reaching this
  process, and ends the session as below.
* ``RESET`` -> ``OK``: Mosquitto (re)started; no connection this process knew is open.

The bridge (``ingest.mqtt_bridge``) connects as ``BRIDGE_USERNAME`` with the platform's bridge
password (``Runtime.mqtt_bridge_password``), a client id ``sluice-bridge`` or
``sluice-bridge-<n>`` (no '/': a device's client id always has one, so no device can take
over a bridge's session), and without a client certificate.  It may subscribe only to
``BRIDGE_SUBSCRIPTION`` (the shared subscription over every device's records topic), receive
only records topics, and publish only to devices' ``acks`` topics (``device_acks_topic``).
The plugin answers the bridge's READ checks itself (by its client id, for records topics
only, as ``bridge_acl_allows``): Mosquitto asks one for every message it delivers, also to
the bridge's session while the bridge is away, and a message must never be withheld from it
(nor cost a second round trip per record).

A connection this process does not know (it restarted while Mosquitto kept the session)
may do nothing, and is ended so that the device connects again and is judged again.

Sessions end (``KICKS``) when a pushed change of rights (``tenants.rights``, the channel
ingest's workers follow) touches their credential, device, group or tenant and the verdict,
re-read from the database, is now a refusal; every session is also re-checked every
``RECHECK_SECONDS`` (the backstop for a lost message, and tokens that expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("sluice.mqtt")

TOPIC_ROOT = "sluice"
# How often the plugin asks for kicks (plugin_opt_poll_ms) and this process re-checks
# sessions a change touched: a pushed change ends a session within about their sum plus a
# database read (the README's stated bound is 5 seconds).
POLL_MS = 250
RECHECK_DIRTY_SECONDS = 0.25
# Every session is re-checked this often even without a message (a lost push; an expired token).
RECHECK_SECONDS = 30.0
READ, WRITE, SUBSCRIBE, UNSUBSCRIBE = 1, 2, 4, 8
MAX_KICKS_LINE = 60_000  # bytes of hex client ids per KICKS answer (the plugin's line holds 64 KiB)
MAX_FORGET_LINE = 4_000  # bytes of connection ids after them (more: "*", forget every connection)


def device_prefix(tenant: str, group: str, device: str) -> str:
    """Everything of one device lives under this topic prefix (ends with '/')."""
    return f"{TOPIC_ROOT}/{tenant}/{group}/{device}/"


def device_topic(tenant: str, group: str, device: str) -> str:
    """The one topic a device publishes its records to."""
    return device_prefix(tenant, group, device) + "records"


def device_acks_topic(tenant: str, group: str, device: str) -> str:
    """Where the bridge tells a device which of its keyed records Kafka acknowledged
    (``ingest.mqtt_bridge``); the device may subscribe to it, as to anything under its prefix."""
    return device_prefix(tenant, group, device) + "acks"


# The bridge's identity at Mosquitto, and the one subscription it may make.
BRIDGE_USERNAME = "sluice-bridge"
BRIDGE_SHARE = "sluice-bridge"
RECORDS_FILTER = f"{TOPIC_ROOT}/+/+/+/records"
BRIDGE_SUBSCRIPTION = f"$share/{BRIDGE_SHARE}/{RECORDS_FILTER}"
_BRIDGE_CLIENT_ID = re.compile(r"^sluice-bridge(-[0-9]{1,4})?$")


def bridge_client_id_allowed(client_id: str) -> bool:
    return bool(_BRIDGE_CLIENT_ID.match(client_id))


def records_topic_parts(topic: str, leaf: str = "records") -> tuple[str, str, str] | None:
    """(tenant, group, device) of a device's records topic (or its ``leaf`` topic), else None."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != TOPIC_ROOT or parts[4] != leaf or not all(parts[1:4]):
        return None
    return parts[1], parts[2], parts[3]


def bridge_acl_allows(access: int, topic: str) -> bool:
    """Pure: the bridge subscribes to the shared subscription over every records topic (as
    Mosquitto names it to the check, with or without its ``$share/<name>/``), receives only
    records topics, and publishes only to devices' acks topics."""
    if access == SUBSCRIBE:
        return topic in (BRIDGE_SUBSCRIPTION, RECORDS_FILTER)
    if access == UNSUBSCRIBE:
        return True
    if access == READ:
        return records_topic_parts(topic) is not None
    if access == WRITE:
        return records_topic_parts(topic, "acks") is not None
    return False


def client_id_allowed(client_id: str, *, tenant: str, device: str) -> bool:
    own = f"{tenant}/{device}"
    return client_id == own or client_id.startswith(own + "/")


def acl_allows(access: int, topic: str, prefix: str) -> bool:
    """Pure: whether a device whose topics live under ``prefix`` may do ``access`` on
    ``topic`` (a topic name, or a filter for subscribe/unsubscribe)."""
    if access == WRITE:
        return topic == prefix + "records"
    if access == UNSUBSCRIBE:
        return True
    if access in (READ, SUBSCRIBE):
        # A filter whose literal start is the device's own prefix cannot match anything
        # outside it ('+' and '#' only widen what follows).
        return topic.startswith(prefix)
    return False


def decode(field: str) -> str:
    return "" if field == "-" else bytes.fromhex(field).decode("utf-8", "replace")


def encode(value: str) -> str:
    return value.encode().hex() or "-"


@dataclass(slots=True)
class Session:
    """An open MQTT connection that was let in, and what lets it stay."""

    conn: str
    client_id: str
    key: tuple[str, str]
    load: Callable[[], Any]
    verdict: Callable[[Any], Any]  # identity -> Writer, or raises SluiceError
    prefix: str
    scopes: frozenset[tuple[str, Any]]
    expires_at: float | None  # a token's expiry (epoch seconds)
    checked_at: float


class Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Authority:
    """The sessions and the decisions; runs on one event loop."""

    def __init__(self, runtime: Any) -> None:
        from ingest.identity import IdentityCache

        self.runtime = runtime
        self.sessions: dict[str, Session] = {}
        self.bridges: set[str] = set()  # connections of ingest.mqtt_bridge
        self.kicks: list[str] = []
        self.dirty: set[str] = set()
        # Connections whose allowed publish the plugin must forget at its next poll (``None``:
        # every connection's).
        self.forget: set[str] | None = set()
        authority = self

        class _Cache(IdentityCache):
            """The rights listener's cache: every change it applies also marks the
            sessions it touches for a re-check; losing the subscription marks them all."""

            def apply(self, change: Any) -> int:
                from ingest.identity import change_scopes

                touched = set(change_scopes(change))
                authority.mark_dirty({c for c, s in authority.sessions.items() if s.scopes & touched})
                return super().apply(change)

            def set_live(self, live: bool) -> None:
                if not live:
                    authority.mark_dirty(set(authority.sessions))
                    authority.forget = None
                super().set_live(live)

        self.cache = _Cache()

    def mark_dirty(self, conns: set[str]) -> None:
        """Sessions to re-check: refused meanwhile, here and (from its next poll) in the plugin."""
        self.dirty |= conns
        if self.forget is not None:
            self.forget |= conns

    # -- connect -------------------------------------------------------------------------

    async def authenticate(self, conn: str, client_id: str, username: str, password: str, der: bytes) -> None:
        from config.errors import SluiceError

        if username == BRIDGE_USERNAME:
            if der:
                raise Refused("ambiguous_credentials")
            self._bridge(conn, client_id, password)
            return
        try:
            if der:
                if password:
                    raise Refused("ambiguous_credentials")
                session = await self._certificate_session(conn, client_id, der)
            elif password:
                session = await self._token_session(conn, client_id, password)
            else:
                raise Refused("client_certificate_required")
        except SluiceError as error:
            raise Refused(error.code) from None
        self.sessions[conn] = session

    def _bridge(self, conn: str, client_id: str, password: str) -> None:
        if not hmac.compare_digest(password.encode(), self.runtime.mqtt_bridge_password.encode()):
            raise Refused("bad_bridge_password")
        if not bridge_client_id_allowed(client_id):
            raise Refused("client_id_mismatch")
        self.bridges.add(conn)

    async def _certificate_session(self, conn: str, client_id: str, der: bytes) -> Session:
        from cryptography import x509

        from ingest import identity, services

        certificate = x509.load_der_x509_certificate(der)
        serial = format(certificate.serial_number, "x")
        issuer = certificate.issuer.rfc4514_string()

        def load() -> Any:
            return identity.load_certificate(serial)

        def verdict(found: Any) -> Any:
            return services.certificate_verdict(found, issuer=issuer, now=time.time())

        writer = verdict(await self._read(load))
        return self._session(conn, client_id, identity.certificate_key(serial), load, verdict, writer, None)

    async def _token_session(self, conn: str, client_id: str, token: str) -> Session:
        from config.errors import Unauthenticated
        from ingest import identity, services
        from tenants.oauth import tokens

        try:
            claims = await asyncio.to_thread(
                tokens.verify_access_token, self.runtime, token, audience=tokens.AUD_INGEST
            )
        except Unauthenticated as exc:
            raise Refused(exc.code) from None
        services.token_scope_check(claims)

        def load() -> Any:
            return identity.load_client(client_id=claims.client_id, tenant_slug=claims.tenant)

        def verdict(found: Any) -> Any:
            if time.time() > claims.expires_at.timestamp():
                raise Refused("token_expired")
            try:
                return services.token_verdict(claims, found)
            except LookupError:
                raise Refused("not_a_device") from None

        writer = verdict(await self._read(load))
        key = identity.client_key(claims.client_id)
        return self._session(conn, client_id, key, load, verdict, writer, claims.expires_at.timestamp())

    def _session(self, conn: str, client_id: str, key: tuple[str, str], load: Callable[[], Any],
                 verdict: Callable[[Any], Any], writer: Any, expires_at: float | None) -> Session:  # fmt: skip
        if not client_id_allowed(client_id, tenant=writer.tenant_slug, device=writer.device_id):
            raise Refused("client_id_mismatch")
        scopes = frozenset(
            (("tenant", writer.tenant_id), ("group", writer.group_id), ("device", writer.pk), (key[0], key[1]))
        )
        prefix = device_prefix(writer.tenant_slug, writer.group_slug, writer.device_id)
        return Session(conn, client_id, key, load, verdict, prefix, scopes, expires_at, time.monotonic())

    async def _read(self, load: Callable[[], Any]) -> Any:
        """An identity, read from the database on a thread (never from a cache: a connect
        is rare next to a publish, and must see a revocation at once)."""
        from ingest import identity

        return await identity.read(load)

    # -- while connected -----------------------------------------------------------------

    def acl(self, conn: str, access: int, topic: str, client_id: str) -> bool:
        if conn in self.bridges or (access == READ and bridge_client_id_allowed(client_id)):
            # (READ: also for the bridge's session while it is away; the plugin answers these
            # itself, this is the same rule.)
            return bridge_acl_allows(access, topic)
        session = self.sessions.get(conn)
        if session is None:
            # Let in before this process started: end it (unless the client id is a live
            # session's, which a kick by client id would end instead).
            live = any(s.client_id == client_id for s in self.sessions.values())
            if client_id and not live and client_id not in self.kicks:
                self.kicks.append(client_id)
            return False
        return conn not in self.dirty and acl_allows(access, topic, session.prefix)

    def bye(self, conn: str) -> None:
        self.bridges.discard(conn)
        self.sessions.pop(conn, None)
        self.dirty.discard(conn)

    def take_kicks(self) -> list[str]:
        """The kicks that fit one answer line of the plugin (its buffer is 64 KiB); the rest
        wait for the next poll.  A client id that a live session holds by now is not kicked:
        the device connected again and was let in (Mosquitto itself ends an older connection
        with the same client id), and a kick by client id would end the new one."""
        live = {session.client_id for session in self.sessions.values()}
        self.kicks = [client_id for client_id in self.kicks if client_id not in live]
        taken, size = 0, 0
        for client_id in self.kicks:
            size += 1 + 2 * len(client_id.encode())
            if size > MAX_KICKS_LINE:
                break
            taken += 1
        kicks, self.kicks = self.kicks[:taken], self.kicks[taken:]
        return kicks

    def take_forget(self) -> list[str]:
        """The KICKS answer's tail: ``|`` and the connections the plugin must ask about again
        (``*`` for all, also when too many for its line)."""
        forget, self.forget = self.forget, set()
        if forget is None or sum(1 + len(conn) for conn in forget) > MAX_FORGET_LINE:
            return ["|", "*"]
        return ["|", *sorted(forget)] if forget else []

    async def recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_DIRTY_SECONDS)
            now = time.monotonic()
            due = {conn for conn, session in self.sessions.items() if self._due(session, now)}
            for conn in list(self.dirty | due):
                await self._recheck(conn)

    @staticmethod
    def _due(session: Session, now: float) -> bool:
        expired = session.expires_at is not None and time.time() > session.expires_at
        return expired or now - session.checked_at > RECHECK_SECONDS

    async def _recheck(self, conn: str) -> None:
        from config.errors import SluiceError

        session = self.sessions.get(conn)
        if session is None:
            self.dirty.discard(conn)
            return
        try:
            session.verdict(await self._read(session.load))
        except (SluiceError, Refused) as error:
            code = getattr(error, "code", "refused")
            log.warning("mqtt: ending the session of client %r (%s)", session.client_id, code)
            self.sessions.pop(conn, None)
            self.kicks.append(session.client_id)
        except Exception:
            # The database is away: keep the session marked, and ask again next round
            # (ACL checks refuse while it is marked: fail closed).
            log.warning("mqtt: could not re-check client %r", session.client_id, exc_info=True)
            return
        else:
            session.checked_at = time.monotonic()
        self.dirty.discard(conn)

    # -- the protocol --------------------------------------------------------------------

    async def answer(self, line: str) -> str:
        verb, *fields = line.split(" ")
        try:
            if verb == "AUTH" and len(fields) == 5:
                conn, client_id, username, password = fields[0], *(decode(f) for f in fields[1:4])
                der = b"" if fields[4] == "-" else bytes.fromhex(fields[4])
                try:
                    await self.authenticate(conn, client_id, username, password, der)
                except Refused as refused:
                    log.info("mqtt: refused client %r: %s", client_id, refused.code)
                    return f"NO {refused.code}"
                return "OK"
            if verb == "ACL" and len(fields) == 4:
                allowed = self.acl(fields[0], int(fields[1]), decode(fields[2]), decode(fields[3]))
                return "OK" if allowed else "NO"
            if verb == "BYE" and len(fields) == 1:
                self.bye(fields[0])
                return "OK"
            if verb == "RESET" and not fields:
                self.sessions.clear()
                self.bridges.clear()
                self.dirty.clear()
                self.kicks.clear()
                self.forget = set()
                return "OK"
            if verb == "KICKS" and not fields:
                return " ".join(["OK", *(encode(c) for c in self.take_kicks()), *self.take_forget()])
        except (ValueError, UnicodeDecodeError):
            pass
        except Exception:
            log.exception("mqtt: could not answer %s", verb)
            return "NO internal_error"
        return "NO bad_request"

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((await self.answer(line.decode("ascii", "replace").strip())).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


async def serve(socket_path: Path) -> None:
    from django.conf import settings

    from ingest.rights_listener import listen

    runtime = settings.SLUICE_RUNTIME
    authority = Authority(runtime)
    socket_path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(authority.serve_connection, path=str(socket_path), limit=1 << 17)
    os.chmod(socket_path, 0o600)
    tasks = [
        asyncio.create_task(listen(authority.cache, runtime.redis_url()), name="sluice-rights-listener"),
        asyncio.create_task(authority.recheck_forever(), name="sluice-mqtt-recheck"),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.warning("mqtt: answering Mosquitto's plugin on %s", socket_path)
    async with server:
        await stop.wait()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings

    asyncio.run(serve(settings.SLUICE_RUNTIME.mqtt_auth_socket))


if __name__ == "__main__":
    main()
