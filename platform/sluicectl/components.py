"""What each part of the platform is: how to prepare it, the command that runs it, the ports
it owns, and how to tell that it is healthy.

Checks return ``None`` when healthy, otherwise a short reason.  They use the same client
builders as the application (``ingest.kafka``), so "healthy" means what Sluice itself needs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs.crl_files import bundle_path, note_mosquitto_inputs_loaded, note_nginx_inputs_loaded
from certs.platform_pki import PlatformPki, broker_service, ensure_platform_pki, public_root_cert
from certs.principals import KAFKA_PRINCIPAL_MAPPING_RULES, SUPER_USERS
from config.env import (
    BASE_DIR,
    KAFKA_BROKER_COUNTS,
    POSTGRES_DATABASE,
    POSTGRES_ROLE,
    POSTGRES_SUPERUSER,
    TEST,
    Runtime,
)
from sluicectl import fetch
from sluicectl.errors import LaunchError
from sluicectl.supervisor import Process, run_once
from tenants.oauth.keys import ensure_signing_keys, jwks_path

TEMPLATES = BASE_DIR / "platform"
# What the brokers' JMX exporter turns into Prometheus metrics (names documented there).
JMX_EXPORTER_RULES = TEMPLATES / "kafka" / "jmx-exporter.yaml"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

# The console, the REST API and Celery run at a lower CPU priority than the data plane (nginx,
# the ingest workers, Kafka, Redis): on a machine short of CPU, a busy console or a reconcile
# slows down itself, not the devices' requests.
BACKGROUND_NICE = 5
# The console and the REST API go further down: nice 10 under SCHED_BATCH.  Nice alone sets
# a share of the CPU, not how soon a device's request gets it back: with the API answering
# as fast as two processes can (bench/ingest.py's P3 with the REST API busy), single-record
# ingest at 908 requests/s kept its p50 but its p99 went from 10 ms to 80 ms at nice 5 and
# to 46 ms at nice 19; under SCHED_BATCH it stayed near 20-30 ms.  Nice 10 rather than 19
# keeps the console a usable share (about a tenth of a busy core's) while devices saturate
# the machine: an operator must still be able to revoke a device in a flood.  Celery stays
# at BACKGROUND_NICE: it pushes revocations to Kafka.
WEB_NICE = 10


@dataclass
class Context:
    """What every component needs: the resolved runtime and the environment for children."""

    runtime: Runtime
    env: dict[str, str]

    @property
    def pki(self) -> PlatformPki:
        return PlatformPki(self.runtime.pki_dir)

    def log(self, name: str) -> Path:
        return self.runtime.logs_dir / f"{name}.log"


def render(template: Path, target: Path, mode: int = 0o600, **values: Any) -> None:
    """Fill ``{{name}}`` placeholders; a placeholder without a value is an error."""

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise LaunchError(f"{template}: no value for {{{{{match.group(1)}}}}}")
        return str(values[match.group(1)])

    text = PLACEHOLDER.sub(value, template.read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)  # a file from an older version keeps its mode otherwise
        handle.write(text)


def tcp_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something listens on ``port``: a connection that met only itself (see
    ``http_get``) does not count."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            return conn.getsockname() != conn.getpeername()
    except OSError:
        return False


def http_get(url: str, *, timeout: float = 2.0, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """GET ``url``: its status and body.  Raises OSError when nothing answers HTTP there.

    That includes an answer that is not HTTP: a port in the kernel's ephemeral range (a
    large ``SLUICE_PORT_OFFSET``) with nothing listening yet can be connected to itself
    (source port = destination port), and the request then comes back as its own answer
    (http.client's BadStatusLine), which only means "not listening yet"."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except http.client.HTTPException as exc:
        raise OSError(f"no HTTP answer at {url}: {type(exc).__name__}: {exc}") from exc


class Component:
    """Base: subclasses set the class attributes and override what differs."""

    name: str = ""
    ports: tuple[str, ...] = ()
    # Components that must run too (started first by ORDER).
    requires: tuple[str, ...] = ()
    startup_timeout: float = 60.0
    stop_timeout: float = 20.0

    def prepare(self, ctx: Context) -> None:
        """Work before start: configuration files, downloads, migrations."""

    def prepare_restart(self, ctx: Context) -> None:
        """Work before the launcher starts this component again after it exited: by default
        all of ``prepare`` (configuration rendered again, a stale socket removed)."""
        self.prepare(ctx)

    def process(self, ctx: Context) -> Process:
        raise NotImplementedError

    def check(self, ctx: Context) -> str | None:
        raise NotImplementedError

    def after_healthy(self, ctx: Context) -> None:
        """One-off configuration that needs the running service."""

    def after_stop(self, ctx: Context) -> None:
        """Clean-up once the launcher stopped the process it started."""

    def enabled(self, runtime: Runtime) -> bool:
        """Whether this Sluice runs the component at all (not an external cluster's brokers
        or registry, nor brokers beyond SLUICE_KAFKA_BROKERS)."""
        return True

    def port_numbers(self, runtime: Runtime) -> dict[str, int]:
        """The TCP ports it listens on, by their name in ``config.env.DEFAULT_PORTS`` (this web
        node's own for nginx: ``Runtime.listen``)."""
        return {name: getattr(runtime.listen, name) for name in self.ports}


class Redis(Component):
    name = "redis"
    ports = ("redis",)
    startup_timeout = 15.0

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        rt.redis_data_dir.mkdir(parents=True, exist_ok=True)
        render(
            TEMPLATES / "redis" / "redis.conf.in",
            rt.run_dir / "redis.conf",
            mode=0o600,
            port=rt.ports.redis,
            password=rt.redis_password,
            data_dir=rt.redis_data_dir,
        )

    def process(self, ctx: Context) -> Process:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return Process(self.name, [binary, str(ctx.runtime.run_dir / "redis.conf")], ctx.log(self.name))

    def check(self, ctx: Context) -> str | None:
        import redis

        try:
            client = redis.Redis.from_url(ctx.runtime.redis_url(), socket_timeout=1, socket_connect_timeout=1)
            client.ping()
        except redis.RedisError as exc:
            return str(exc)
        return None

    def after_healthy(self, ctx: Context) -> None:
        import redis

        from config.celery import BEAT_KEY

        # Redis persists; a heartbeat left by the previous run must not vouch for this one.
        redis.Redis.from_url(ctx.runtime.redis_url()).delete(BEAT_KEY)


# Debian's PostgreSQL server packages put their programs here, one directory per major version.
POSTGRES_LIB = Path("/usr/lib/postgresql")
POSTGRES_MAJOR = "15"
# Who runs PostgreSQL when the launcher is root: the server refuses to run as root (a
# superuser's SQL could otherwise do anything root can).  Debian's postgresql package
# creates this system user.  Not nginx's ``nobody``: nginx's workers parse whatever the
# network sends, and must not be able to read the database's files.
POSTGRES_OS_USER = "postgres"


def postgres_bin(program: str) -> Path:
    """A program of Debian's PostgreSQL 15 (``postgresql-15``, installed by platform/bin/sluice)."""
    path = POSTGRES_LIB / POSTGRES_MAJOR / "bin" / program
    if not path.exists():
        raise LaunchError(
            f"PostgreSQL {POSTGRES_MAJOR} is not installed ({path} is missing); install the Debian package "
            f"postgresql-{POSTGRES_MAJOR} (platform/bin/sluice does when it runs as root), or use SQLite "
            f"(no --db postgres) or an external PostgreSQL (DATABASE_URL)"
        )
    return path


def postgres_os_user() -> str | None:
    """The user PostgreSQL runs as: the launcher's own, unless that is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise LaunchError(
            f"PostgreSQL refuses to run as root and there is no '{POSTGRES_OS_USER}' user to run it as; install "
            f"Debian's postgresql-{POSTGRES_MAJOR} (it creates that user), or run Sluice as an ordinary user"
        ) from None
    return POSTGRES_OS_USER


def postgres_admin_connection(rt: Runtime, *, timeout: int = 2) -> Any:
    """A connection as the started cluster's bootstrap superuser, through its Unix socket."""
    import psycopg

    return psycopg.connect(
        host=str(rt.postgres_socket_dir),
        port=rt.ports.postgres,
        user=POSTGRES_SUPERUSER,
        password=rt.database_admin_password,
        dbname="postgres",
        connect_timeout=timeout,
        autocommit=True,
    )


class Postgres(Component):
    """Debian's PostgreSQL 15, when ``SLUICE_DATABASE=postgres`` (``--db postgres``): one
    cluster under ``<state>/postgres`` (owner-only), its Unix socket beside it, loopback TCP
    on its own port, password (SCRAM) authentication for every connection, the application's
    role and database created at start.  An external PostgreSQL (``DATABASE_URL``) is never
    started, so this component is then not part of the platform."""

    name = "postgres"
    ports = ("postgres",)
    startup_timeout = 60.0
    stop_timeout = 30.0

    def enabled(self, runtime: Runtime) -> bool:
        return runtime.starts_postgres

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        user = postgres_os_user()
        for directory in (rt.postgres_dir, rt.postgres_data_dir, rt.postgres_socket_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
        if len(os.fsencode(rt.postgres_socket_dir / f".s.PGSQL.{rt.ports.postgres}")) > MAX_SOCKET_PATH:
            raise LaunchError(
                f"PostgreSQL's socket in {rt.postgres_socket_dir} would be longer than a Unix socket path may be "
                f"({MAX_SOCKET_PATH} bytes); choose a shorter SLUICE_STATE_DIR"
            )
        if user is not None:
            self._hand_over(ctx, user)
        if (rt.postgres_data_dir / "PG_VERSION").exists():
            return
        # initdb reads the superuser's password from a file; it lives in the cluster's own
        # directory (owner-only) for the few seconds initdb runs.
        password_file = rt.postgres_dir / "initdb-password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(rt.database_admin_password + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        try:
            run_once(
                "initdb",
                [str(postgres_bin("initdb")), "--pgdata", str(rt.postgres_data_dir),
                 "--username", POSTGRES_SUPERUSER, "--pwfile", str(password_file),
                 "--auth-local", "scram-sha-256", "--auth-host", "scram-sha-256",
                 "--encoding", "UTF8", "--no-locale", "--no-instructions"],
                log_path=ctx.log(self.name),
                cwd=rt.postgres_dir,
                timeout=120,
                user=user,
            )  # fmt: skip
        finally:
            password_file.unlink(missing_ok=True)

    def _hand_over(self, ctx: Context, user: str) -> None:
        """As root: the cluster's directory belongs to the server's user, who must reach it
        through the state directory (0711) and its parents."""
        rt = ctx.runtime
        # Sluice's own var/ (made owner-only by whatever created it first: the downloads, a
        # test stack) is opened for passing through, never for listing; a directory outside
        # it is the operator's to open.
        own = (BASE_DIR / "var").resolve()
        for parent in rt.postgres_dir.parents:
            mode = os.stat(parent).st_mode
            if not mode & stat.S_IXOTH and (parent == own or own in parent.parents):
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
        closed = [p for p in rt.postgres_dir.parents if not os.stat(p).st_mode & stat.S_IXOTH]
        if closed:
            raise LaunchError(
                f"PostgreSQL runs as '{user}' (it refuses root), who cannot pass through {closed[0]} "
                f"(mode {stat.S_IMODE(os.stat(closed[0]).st_mode):04o}); allow it with chmod o+x {closed[0]}, "
                f"or choose a SLUICE_STATE_DIR under an open path"
            )
        entry = pwd.getpwnam(user)
        for directory in (rt.postgres_dir, rt.postgres_data_dir, rt.postgres_socket_dir):
            if os.stat(directory).st_uid != entry.pw_uid:
                os.chown(directory, entry.pw_uid, entry.pw_gid)

    def process(self, ctx: Context) -> Process:
        rt = ctx.runtime
        argv = [
            str(postgres_bin("postgres")),
            "-D", str(rt.postgres_data_dir),
            "-c", f"port={rt.ports.postgres}",
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={rt.postgres_socket_dir}",
            "-c", "unix_socket_permissions=0700",
            "-c", "password_encryption=scram-sha-256",
            # The platform's web, ingest and Celery processes with their threads, and the tests'.
            "-c", "max_connections=200",
            "-c", "shared_buffers=64MB",
            "-c", "logging_collector=off",
        ]  # fmt: skip
        if rt.environment == TEST:
            # The test stack's database is thrown away after every run: durability against a
            # crash of the machine buys nothing there, and its fsyncs would slow every test.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return Process(self.name, argv, ctx.log(self.name), cwd=rt.postgres_dir, user=postgres_os_user(),
                       stop_signal=signal.SIGINT)  # fmt: skip

    def check(self, ctx: Context) -> str | None:
        import psycopg

        try:
            with postgres_admin_connection(ctx.runtime) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error as exc:
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None

    def after_healthy(self, ctx: Context) -> None:
        """The application's role (its password is the ``database-password`` secret, set
        again at every start) and, outside the test stack, its database."""
        from psycopg import sql

        rt = ctx.runtime
        role, database = sql.Identifier(POSTGRES_ROLE), sql.Identifier(POSTGRES_DATABASE)
        # pytest-django creates the test stack's database itself (settings: TEST NAME).
        may_create = sql.SQL("CREATEDB" if rt.environment == TEST else "NOCREATEDB")
        with postgres_admin_connection(rt, timeout=10) as connection:
            exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [POSTGRES_ROLE]).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            connection.execute(
                sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEROLE {} PASSWORD {}").format(
                    verb, role, may_create, sql.Literal(rt.database_password)
                )
            )
            if rt.environment == TEST:
                return
            found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [POSTGRES_DATABASE]).fetchone()
            if not found:
                connection.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(database, role))

    def after_stop(self, ctx: Context) -> None:
        """A server the launcher did not start itself is still this cluster's (restarted by
        hand, or by a fault test): ask it to stop too, so nothing outlives ``sluice down``."""
        pid_file = ctx.runtime.postgres_data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return  # no pid file, or its process is gone
        if b"postgres" not in command:
            return  # a stale file whose pid now names another program
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)


class KafkaBroker(Component):
    """One combined broker+controller node of the KRaft quorum Sluice runs itself (node 1
    alone, or nodes 1-3 / 1-5 with ``SLUICE_KAFKA_BROKERS``).  Combined nodes because the
    quorum lives on one machine anyway: separate controller processes would add three JVMs
    (~1 GB) and protect against nothing a machine failure would not take down with them."""

    requires = ("nginx",)
    startup_timeout = 120.0
    stop_timeout = 45.0

    def __init__(self, node: int) -> None:
        self.node = node
        self.name = "kafka" if node == 1 else f"kafka-{node}"
        # nginx serves the CRLs every TLS handshake of the broker checks, and the JWKS the
        # OAUTHBEARER listener must fetch while the broker starts (RefreshingHttpsJwks.init).
        self.ports = ("kafka", "kafka_controller", "kafka_internal", "kafka_oauth", "kafka_metrics")

    def enabled(self, runtime: Runtime) -> bool:
        return runtime.runs_kafka and self.node <= runtime.kafka_brokers

    def port_numbers(self, runtime: Runtime) -> dict[str, int]:
        ports = runtime.broker_ports(self.node)
        return {"kafka": ports.client, "kafka_controller": ports.controller, "kafka_internal": ports.internal,
                "kafka_oauth": ports.oauth, "kafka_metrics": ports.metrics}  # fmt: skip

    def _java(self, ctx: Context, libs: Path, *, heap: str | None, agent: Path | None = None) -> list[str]:
        argv = [str(fetch.kafka_java(ctx.runtime.kafka_java))]
        if heap:
            argv += [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
        if agent is not None:
            # Kafka's own metrics for Prometheus (job "kafka"): the JMX exporter in the broker's
            # JVM, on loopback, reading only the MBeans its rules name (JMX_EXPORTER_RULES).
            port = ctx.runtime.broker_ports(self.node).metrics
            argv.append(f"-javaagent:{agent}=127.0.0.1:{port}:{JMX_EXPORTER_RULES}")
        argv += [
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            # Revocation: the JDK's PKIX validator (Kafka's default trust manager) checks
            # every certificate of a TLS peer's chain against the CRL its distribution
            # point names (fetched over HTTP from nginx, cached ~30 s by the JDK).
            "-Dcom.sun.net.ssl.checkRevocation=true",
            "-Dcom.sun.security.enableCRLDP=true",
            "-Dcom.sun.security.crl.timeout=5",
            "-Dcom.sun.security.crl.readtimeout=5",
            # Kafka 4.x fetches no SASL/OAUTHBEARER URL unless it is listed here, matched
            # exactly (BrokerSecurityConfigs.ALLOWED_SASL_OAUTHBEARER_URLS_CONFIG).
            f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={ctx.runtime.jwks_url}",
            f"-Dkafka.logs.dir={ctx.runtime.logs_dir / self.name}",
            f"-Dlog4j2.configurationFile={TEMPLATES / 'kafka' / 'log4j2.yaml'}",
            "-cp",
            f"{libs}/*",
        ]
        return argv

    def properties(self, runtime: Runtime) -> Path:
        return runtime.kafka_node_dir(self.node) / "server.properties"

    def data_dir(self, runtime: Runtime) -> Path:
        return runtime.kafka_node_dir(self.node) / "data"

    def render(self, runtime: Runtime, pki: PlatformPki) -> None:
        """Write this node's server.properties from the template (every start)."""
        rt = runtime
        ports = rt.broker_ports(self.node)
        voters = ",".join(f"{n}@127.0.0.1:{rt.broker_ports(n).controller}" for n in rt.kafka_nodes)
        replication = min(3, rt.kafka_brokers)
        render(
            TEMPLATES / "kafka" / "server.properties.in",
            self.properties(rt),
            node_id=self.node,
            quorum_voters=voters,
            controller_port=ports.controller,
            internal_port=ports.internal,
            client_port=ports.client,
            oauth_port=ports.oauth,
            jwks_url=rt.jwks_url,
            oauth_issuer=rt.oauth_issuer,
            client_bind="127.0.0.1" if rt.web_bind == "127.0.0.1" else "0.0.0.0",  # noqa: S104
            advertised_host=rt.kafka_advertised_host,
            keystore=pki.keystore(broker_service(self.node)),
            truststore=pki.trust_bundle,
            principal_mapping_rules=KAFKA_PRINCIPAL_MAPPING_RULES,
            super_users=";".join(SUPER_USERS),
            log_dirs=self.data_dir(rt),
            replication_factor=replication,
            min_insync_replicas=min(2, replication),
        )

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        libs = fetch.kafka_libs(rt)
        fetch.jmx_exporter_agent(rt)
        pki = ensure_platform_pki(rt)
        self.render(rt, pki)
        if not (self.data_dir(rt) / "meta.properties").exists():
            # Every node of the quorum is formatted with the same cluster id: broker 1's.
            cluster_id_file = rt.kafka_node_dir(1) / "cluster-id"
            if not cluster_id_file.exists():
                cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
                # 16 random bytes, URL-safe base64 without padding, as StorageTool random-uuid.
                raw = uuid.uuid4().bytes
                cid = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
                cluster_id_file.write_text(("A" + cid[1:] if cid.startswith("-") else cid) + "\n")
            run_once(
                f"{self.name} storage format",
                [
                    *self._java(ctx, libs, heap=None),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id_file.read_text().strip(),
                    "-c",
                    str(self.properties(rt)),
                ],
                log_path=ctx.log(self.name),
                timeout=120,
            )

    def process(self, ctx: Context) -> Process:
        rt = ctx.runtime
        java = self._java(ctx, fetch.kafka_libs(rt), heap=rt.kafka_heap, agent=fetch.jmx_exporter_agent(rt))
        return Process(self.name, [*java, "kafka.Kafka", str(self.properties(rt))], ctx.log(self.name))

    def check(self, ctx: Context) -> str | None:
        ports = ctx.runtime.broker_ports(self.node)
        if not tcp_open(ports.client):
            return "client listener not open yet"
        if not tcp_open(ports.oauth):
            return "OAUTHBEARER listener not open yet"
        if not tcp_open(ports.metrics):
            return "JMX exporter (metrics) not open yet"
        from ingest.kafka import kafka_broker_check

        return kafka_broker_check(ctx.runtime, node=self.node, port=ports.client)


# A Unix socket's path must fit sockaddr_un.sun_path (108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 107


class Registry(Component):
    """Apicurio Registry 3.3 (Quarkus), its API on a Unix socket only.

    Vert.x binds a Unix socket only through Netty's native epoll transport, which Apicurio's
    archive lacks, and Quarkus's fast-jar launcher (``quarkus-run.jar``) loads classes only
    from the jars its build indexed (``quarkus/quarkus-application.dat``).  So the JVM runs
    the same application from a plain class path -- the generated and transformed classes
    ahead of the originals they replace, then the app, its libraries and the epoll jars --
    with the two properties ``QuarkusEntryPoint`` would set.  The TCP listener is off
    (``quarkus.http.host-enabled=false``); the management interface (health, metrics; a
    build-time feature that cannot be turned off at run time) stays on loopback.
    """

    name = "registry"
    ports = ("registry_management",)
    startup_timeout = 150.0

    def enabled(self, runtime: Runtime) -> bool:
        return runtime.runs_registry

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        home = fetch.apicurio_home(rt)
        fetch.netty_epoll_jars(rt, home)
        fetch.registry_java(rt.registry_java)
        rt.registry_data_dir.mkdir(parents=True, exist_ok=True)
        rt.run_dir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(rt.registry_socket)) > MAX_SOCKET_PATH:
            raise LaunchError(
                f"the registry's socket path {rt.registry_socket} is longer than a Unix socket path "
                f"may be ({MAX_SOCKET_PATH} bytes); choose a shorter SLUICE_STATE_DIR"
            )
        # Left by a registry that did not stop cleanly; Vert.x will not bind over it (the
        # launcher has made sure no other instance runs on this state directory).
        rt.registry_socket.unlink(missing_ok=True)

    def process(self, ctx: Context) -> Process:
        rt = ctx.runtime
        java = str(fetch.registry_java(rt.registry_java))
        home = fetch.apicurio_home(rt)
        classpath = [
            home / "quarkus" / "generated-bytecode.jar",
            home / "quarkus" / "transformed-bytecode.jar",
            *sorted((home / "app").glob("*.jar")),
            home / "lib" / "boot" / "*",
            home / "lib" / "main" / "*",
            *fetch.netty_epoll_jars(rt, home),
        ]
        data = rt.registry_data_dir
        argv = [
            java,
            f"-Xmx{rt.registry_heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            # What quarkus-run.jar's manifest and QuarkusEntryPoint would set.
            "--enable-native-access=ALL-UNNAMED",
            "-Djava.util.logging.manager=org.jboss.logmanager.LogManager",
            "-Djava.util.concurrent.ForkJoinPool.common.threadFactory="
            "io.quarkus.bootstrap.forkjoin.QuarkusForkJoinWorkerThreadFactory",
            # The API on an owner-only Unix socket (umask 077), no TCP listener.
            "-Dquarkus.vertx.prefer-native-transport=true",
            f"-Dio.netty.native.workdir={data}",
            "-Dquarkus.http.host-enabled=false",
            "-Dquarkus.http.domain-socket-enabled=true",
            f"-Dquarkus.http.domain-socket={rt.registry_socket}",
            # A Unix socket has no peer address, which Apicurio's audit filter reads; Sluice's
            # client names one (devices.registry_client.FORWARDED_FOR).
            "-Dquarkus.http.proxy.proxy-address-forwarding=true",
            "-Dquarkus.http.proxy.allow-x-forwarded=true",
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={rt.ports.registry_management}",
            "-Dapicurio.storage.kind=sql",
            "-Dapicurio.storage.sql.kind=h2",
            # A file database under the state directory: schemas survive restarts.
            f"-Dapicurio.datasource.url=jdbc:h2:file:{data / 'registry'};DB_CLOSE_ON_EXIT=FALSE",
            "-Dapicurio.datasource.jdbc.initial-size=2",
            "-Dapicurio.datasource.jdbc.min-size=2",
            "-Dapicurio.datasource.jdbc.max-size=20",
            f"-Dapicurio.storage.snapshot.location={data}",
            f"-Dapicurio.import.work-dir={data}",
            "-Dquarkus.http.access-log.enabled=false",
            "-cp",
            os.pathsep.join(str(part) for part in classpath),
            "io.quarkus.runner.GeneratedMain",
        ]
        return Process(self.name, argv, ctx.log(self.name), cwd=data)

    def check(self, ctx: Context) -> str | None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        from devices.registry_client import httpx, registry_client_for

        try:
            status, _ = http_get(f"http://127.0.0.1:{ctx.runtime.ports.registry_management}/health/ready")
        except OSError as exc:
            return str(getattr(exc, "reason", exc))
        if status != 200:
            return f"health/ready answered {status}"
        if not ctx.runtime.registry_socket.exists():
            return "API socket not there yet"
        try:
            with registry_client_for(ctx.runtime, timeout=2, max_retries=0) as client:
                client.get_subjects()
        except (SchemaRegistryError, httpx.HTTPError) as exc:
            return f"Confluent API: {exc}"
        return None

    def after_healthy(self, ctx: Context) -> None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        from devices.registry_client import httpx, registry_client_for

        # Apicurio's default compatibility is NONE; Confluent's (and Sluice's) is BACKWARD.
        try:
            with registry_client_for(ctx.runtime, timeout=10) as client:
                client.set_compatibility(level="BACKWARD")
        except (SchemaRegistryError, httpx.HTTPError) as exc:
            raise LaunchError(f"registry: could not set global compatibility BACKWARD: {exc}") from None


def _django(ctx: Context, *args: str) -> list[str]:
    return [sys.executable, str(BASE_DIR / "manage.py"), *args]


class Web(Component):
    """The Django ASGI app (uvicorn) on a Unix socket that only nginx talks to."""

    name = "web"
    startup_timeout = 60.0

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        # nginx's workers (another user) must reach the socket: its directory is public
        # (sluicectl.private_state.PUBLIC); uvicorn makes the socket itself 0666.
        rt.public_socket_dir.mkdir(parents=True, exist_ok=True)
        if rt.environment != TEST:
            # In the test stack pytest-django creates and migrates the shared database
            # file itself (and would otherwise replace it under a live connection).
            run_once(
                "migrate",
                _django(ctx, "migrate", "--noinput"),
                log_path=ctx.log("migrate"),
                env=ctx.env,
                timeout=300,
            )
        run_once(
            "collectstatic",
            _django(ctx, "collectstatic", "--noinput", "--clear"),
            log_path=ctx.log("migrate"),
            env=ctx.env,
            timeout=120,
        )
        ctx.runtime.web_socket.unlink(missing_ok=True)

    def prepare_restart(self, ctx: Context) -> None:
        # The database and static files are as the first start left them; only the socket
        # of the process that died is in the way (uvicorn will not bind over it).
        ctx.runtime.web_socket.unlink(missing_ok=True)

    def process(self, ctx: Context) -> Process:
        rt = ctx.runtime
        workers = ctx.env.get("SLUICE_WEB_WORKERS", "2")
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--uds",
            str(rt.web_socket),
            "--workers",
            workers,
            # What "auto" picks when uvicorn[standard] is installed, spelled out so a missing
            # extra fails at start instead of quietly serving on the slower pure-Python
            # loop and HTTP parser; no access log (nginx keeps one).
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-server-header",
            "--log-level",
            "warning",
        ]
        return Process(self.name, argv, ctx.log(self.name), env=ctx.env, cwd=BASE_DIR, nice=WEB_NICE, batch=True)

    def check(self, ctx: Context) -> str | None:
        return None if ctx.runtime.web_socket.exists() else "socket not there yet"


class Ingest(Component):
    """The device data plane (ingest.app): ``SLUICE_INGEST_WORKERS`` ASGI server processes,
    each on its own Unix socket that only nginx talks to, supervised by ingest.serve."""

    name = "ingest"
    startup_timeout = 60.0

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        rt.public_socket_dir.mkdir(parents=True, exist_ok=True)
        for index in range(rt.ingest.workers):
            rt.ingest_socket(index).unlink(missing_ok=True)

    def process(self, ctx: Context) -> Process:
        argv = [sys.executable, "-m", "ingest.serve", "config.asgi:application"]
        return Process(self.name, argv, ctx.log(self.name), env=ctx.env, cwd=BASE_DIR)

    def check(self, ctx: Context) -> str | None:
        rt = ctx.runtime
        missing = [i for i in range(rt.ingest.workers) if not rt.ingest_socket(i).exists()]
        return f"worker socket(s) {missing} not there yet" if missing else None


def _nginx_user_directive(ctx: Context) -> str:
    """As root, nginx's workers run as ``nobody``: they parse whatever the network sends, so
    they get only what they need -- the public paths of the state directory (CRLs, JWKS,
    static files, the web socket; sluicectl.private_state.PUBLIC) and nothing else.  They reach
    those through the state directory (0711) and its parents; when a parent is closed to
    others, fall back to the launcher's user."""
    if os.geteuid() != 0:
        return ""
    for path in [ctx.runtime.state_dir, *ctx.runtime.state_dir.parents]:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return f"user {pwd.getpwuid(os.geteuid()).pw_name};"
    return "user nobody nogroup;"


def _platform_pki_of_first_node(rt: Runtime) -> PlatformPki:
    """Another web node uses the first node's PKI as it is: making or renewing it (and
    republishing the root CRL) is the first node's, so two nodes never race to write it."""
    pki = PlatformPki(rt.pki_dir)
    missing = [p for p in (pki.cert("web"), pki.key("web"), pki.trust_bundle, bundle_path(rt)) if not p.exists()]
    if missing:
        raise LaunchError(
            f"node {rt.node}: {missing[0]} is missing; start the first node on {rt.state_dir} first "
            f"(platform/bin/sluice up), then this one"
        )
    return pki


class Nginx(Component):
    """TLS in front of the web app: HTTPS with the platform certificate, client certificates
    verified against the platform trust bundle and handed to the app as headers."""

    name = "nginx"
    ports = ("web", "crl")
    startup_timeout = 30.0

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        pki = ensure_platform_pki(rt) if rt.is_first_node else _platform_pki_of_first_node(rt)
        prefix = rt.nginx_dir
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        rt.static_root.mkdir(parents=True, exist_ok=True)
        rt.logs_dir.mkdir(parents=True, exist_ok=True)
        rt.crl_dir.mkdir(parents=True, exist_ok=True)
        # nginx serves the token-signing JWKS and the broker fetches it when it starts, so a
        # signing key and the published JWKS must exist before either starts.  (The launcher
        # opens the CRL, JWKS and static directories to nginx's workers after this.)
        ensure_signing_keys(rt)
        render(
            TEMPLATES / "nginx" / "nginx.conf.in",
            prefix / "nginx.conf",
            mode=0o600,  # holds the proxy secret; the master (root or the launcher's user) reads it
            user_directive=_nginx_user_directive(ctx),
            pid_file=rt.run_dir / "nginx.pid",
            logs_dir=rt.logs_dir,
            prefix=prefix,
            mime_types="/etc/nginx/mime.types",
            socket=rt.web_socket,
            ingest_servers="\n        ".join(f"server unix:{rt.ingest_socket(i)};" for i in range(rt.ingest.workers)),
            bind=rt.web_bind,
            port=rt.listen.web,
            server_names=" ".join(rt.public_hostnames),
            certificate=pki.cert("web"),
            certificate_key=pki.key("web"),
            client_ca=pki.trust_bundle,
            static_root=rt.static_root,
            crl_port=rt.listen.crl,
            crl_dir=rt.crl_dir,
            crl_bundle=bundle_path(rt),
            jwks_file=jwks_path(rt),
            root_ca_file=public_root_cert(rt),
            proxy_secret=rt.proxy_secret,
        )
        # What nginx is about to read: the reference for every later reload (reload_nginx and
        # the launcher's follow_nginx_inputs reload only when the CRL bundle or trust differ).
        note_nginx_inputs_loaded(rt)

    def process(self, ctx: Context) -> Process:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        prefix = ctx.runtime.nginx_dir
        argv = [
            binary,
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            str(ctx.log("nginx-error")),
        ]
        return Process(self.name, argv, ctx.log(self.name))

    def check(self, ctx: Context) -> str | None:
        try:
            status, _ = http_get(f"http://127.0.0.1:{ctx.runtime.listen.crl}/crl/platform-root.crl")
        except OSError as exc:
            return f"CRL listener: {getattr(exc, 'reason', exc)}"
        if status != 200:
            return f"CRL listener answered {status} for the root CRL"
        try:
            status, _ = http_get(f"http://127.0.0.1:{ctx.runtime.listen.crl}/oauth/jwks.json")
        except OSError as exc:
            return f"JWKS: {getattr(exc, 'reason', exc)}"
        if status != 200:
            return f"CRL listener answered {status} for the JWKS"
        return None if tcp_open(ctx.runtime.listen.web) else "HTTPS listener not open yet"


# What a web node other than the first waits for: what it serves with.  Celery's worker and
# beat are the first node's; /healthz still reports them.
NODE_NEEDS = ("database", "redis", "kafka", "registry")


def platform_health(ctx: Context, needs: tuple[str, ...] | None = None) -> str | None:
    """The application's own /healthz through nginx: database, Redis, Kafka, the registry,
    the Celery worker and beat as the web app sees them.  None when all are ok (or, with
    ``needs``, when those are)."""
    context = ssl.create_default_context(cafile=str(ctx.pki.trust_bundle))
    try:
        status, body = http_get(f"https://127.0.0.1:{ctx.runtime.listen.web}/healthz", context=context)
    except OSError as exc:
        return str(getattr(exc, "reason", exc))
    if status == 200:
        return None
    try:
        report = json.loads(body)
        bad = [
            f"{k}: {v.get('detail', v.get('status'))}"
            for k, v in report["components"].items()
            if v["status"] != "ok" and (needs is None or k in needs)
        ]
        if needs is not None and not bad:
            return None
        # The platform's own launcher's processes (a web node waits only for what it needs).
        bad += [f"{k}: {v.get('state')}" for k, v in report.get("processes", {}).items() if v.get("state") != "running"]
        return "; ".join(bad) or f"/healthz answered {status}"
    except (ValueError, KeyError, AttributeError):
        return f"/healthz answered {status}"


class CeleryWorker(Component):
    name = "worker"
    startup_timeout = 60.0
    stop_timeout = 30.0

    def process(self, ctx: Context) -> Process:
        concurrency = ctx.env.get("SLUICE_WORKER_CONCURRENCY", "2")
        argv = [
            sys.executable, "-m", "celery", "-A", "config", "worker",
            "--loglevel", "INFO", "--concurrency", concurrency,
            "--hostname", f"worker@{socket.gethostname()}-{ctx.runtime.listen.web}",
        ]  # fmt: skip
        return Process(self.name, argv, ctx.log(self.name), env=ctx.env, cwd=BASE_DIR, nice=BACKGROUND_NICE)

    def check(self, ctx: Context) -> str | None:
        return None  # judged through /healthz (celery_worker), which pings over Redis


class CeleryBeat(Component):
    name = "beat"
    startup_timeout = 60.0

    def prepare(self, ctx: Context) -> None:
        # Left by a beat that was killed; the launcher owns this state directory, so no
        # other beat runs on it.
        (ctx.runtime.run_dir / "beat.pid").unlink(missing_ok=True)

    def process(self, ctx: Context) -> Process:
        schedule = ctx.runtime.state_dir / "celerybeat-schedule"
        argv = [
            sys.executable, "-m", "celery", "-A", "config", "beat",
            "--loglevel", "INFO", "--schedule", str(schedule),
            "--pidfile", str(ctx.runtime.run_dir / "beat.pid"),
        ]  # fmt: skip
        return Process(self.name, argv, ctx.log(self.name), env=ctx.env, cwd=BASE_DIR, nice=BACKGROUND_NICE)

    def check(self, ctx: Context) -> str | None:
        return None  # judged through /healthz (celery_beat), which reads beat's heartbeat


# How often Prometheus scrapes every target and evaluates the alert rules.
SCRAPE_INTERVAL = "15s"
PROMETHEUS_TEMPLATE = TEMPLATES / "prometheus" / "prometheus.yml.in"
# The alert rules Prometheus evaluates (each tested by platform/prometheus/alerts_test.yml).
ALERT_RULES = TEMPLATES / "prometheus" / "alerts.yml"


def debian_binary(name: str, default: str, *, product: str, packages: str, without: str) -> Path:
    """A program a Debian package installs (on PATH, or at ``default``), or why it is missing
    and how to start without it."""
    found = shutil.which(name) or default
    if not Path(found).exists():
        raise LaunchError(
            f"{product} is not installed ({default}); install the Debian {packages} (platform/bin/sluice does "
            f"when it runs as root), or start without it: sluice up {without}"
        )
    return Path(found)


def prometheus_binary() -> Path:
    return debian_binary("prometheus", "/usr/bin/prometheus", product="Prometheus",
                         packages="package prometheus", without="--no-prometheus")  # fmt: skip


def prometheus_config(rt: Runtime, pki: PlatformPki) -> str:
    """The jobs Prometheus scrapes on this platform, as YAML text (the template's job blocks)."""
    kafka_job = registry_job = ""
    if rt.runs_kafka:
        targets = "\n".join(
            f'      - targets: ["127.0.0.1:{rt.broker_ports(n).metrics}"]\n        labels: {{broker: "{n}"}}'
            for n in rt.kafka_nodes
        )
        kafka_job = f"\n  # Every broker's JMX exporter (platform/kafka/jmx-exporter.yaml).\n  - job_name: kafka\n" \
                    f"    static_configs:\n{targets}\n"  # fmt: skip
    if rt.runs_registry:
        # Apicurio (Quarkus, Micrometer) serves Prometheus text on its management port.
        registry_job = (
            "\n  - job_name: registry\n    metrics_path: /metrics\n    static_configs:\n"
            f'      - targets: ["127.0.0.1:{rt.ports.registry_management}"]\n'
        )
    values = {
        "scrape_interval": SCRAPE_INTERVAL,
        "alert_rules": ALERT_RULES,
        "prometheus_port": rt.ports.prometheus,
        "ca_file": pki.trust_bundle,
        "server_name": rt.public_hostnames[0],
        "token_file": rt.metrics_scrape_token_file,
        "web_port": rt.ports.web,
        "kafka_job": kafka_job,
        "registry_job": registry_job,
    }

    def value(match: re.Match[str]) -> str:
        return str(values[match.group(1)])

    return PLACEHOLDER.sub(value, PROMETHEUS_TEMPLATE.read_text())


class Prometheus(Component):
    """Debian's Prometheus, on loopback: scrapes Sluice's /metrics (HTTPS through nginx, with
    the scrape token), every broker's JMX exporter, the registry and itself, and evaluates
    the alert rules (``ALERT_RULES``).  Its time series live under ``<state>/prometheus``.
    On by default with ``sluice up``; ``--no-prometheus`` leaves it out.  Once per platform
    (the first node): it scrapes the first node's nginx."""

    name = "prometheus"
    ports = ("prometheus",)
    startup_timeout = 60.0

    def enabled(self, runtime: Runtime) -> bool:
        return runtime.is_first_node

    def config_path(self, rt: Runtime) -> Path:
        return rt.run_dir / "prometheus.yml"

    def data_dir(self, rt: Runtime) -> Path:
        return rt.state_dir / "prometheus"

    def prepare(self, ctx: Context) -> None:
        rt = ctx.runtime
        prometheus_binary()
        self.data_dir(rt).mkdir(parents=True, exist_ok=True)
        # The token Prometheus presents comes from a file: with SLUICE_METRICS_SCRAPE_TOKEN set
        # (production) the file is written here, owner-only, from it.
        token, path = rt.metrics_scrape_token, rt.metrics_scrape_token_file
        if not path.exists() or path.read_text().strip() != token:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
        config = self.config_path(rt)
        config.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(prometheus_config(rt, ctx.pki))

    def process(self, ctx: Context) -> Process:
        rt = ctx.runtime
        argv = [
            str(prometheus_binary()),
            f"--config.file={self.config_path(rt)}",
            f"--storage.tsdb.path={self.data_dir(rt)}",
            "--storage.tsdb.retention.time=15d",
            f"--web.listen-address=127.0.0.1:{rt.ports.prometheus}",
            f"--web.external-url={prometheus_url(rt)}/",
        ]
        return Process(self.name, argv, ctx.log(self.name), cwd=self.data_dir(rt), nice=BACKGROUND_NICE)

    def check(self, ctx: Context) -> str | None:
        try:
            status, _ = http_get(f"{prometheus_url(ctx.runtime)}/-/ready")
        except OSError as exc:
            return str(getattr(exc, "reason", exc))
        return None if status == 200 else f"/-/ready answered {status}"


def prometheus_url(rt: Runtime) -> str:
    return f"http://127.0.0.1:{rt.ports.prometheus}"


# The MQTT broker: Debian's Mosquitto 2 with Sluice's auth plugin (built here, at start, from
# its C source against Debian's mosquitto-dev and libmosquitto-dev headers), and the Python process it asks.
MOSQUITTO_TEMPLATE = TEMPLATES / "mosquitto" / "mosquitto.conf.in"
MOSQUITTO_PLUGIN_SOURCE = TEMPLATES / "mosquitto" / "sluice_auth.c"


def mosquitto_binary() -> Path:
    return debian_binary("mosquitto", "/usr/sbin/mosquitto", product="Mosquitto",
                         packages="packages mosquitto and mosquitto-dev", without="--no-mqtt")  # fmt: skip


def mosquitto_plugin(rt: Runtime) -> Path:
    """The auth plugin, compiled once per version of its source (its SHA-256 names the file)."""
    source = MOSQUITTO_PLUGIN_SOURCE.read_bytes()
    target = rt.state_dir / "mosquitto" / f"sluice_auth-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    headers = ("/usr/include/mosquitto_broker.h", "/usr/include/mosquitto.h")
    if compiler is None or not all(Path(header).exists() for header in headers):
        raise LaunchError(
            "building Mosquitto's auth plugin needs a C compiler and Mosquitto's headers: install the Debian "
            "packages gcc, mosquitto-dev, libmosquitto-dev and libssl-dev (platform/bin/sluice does when it runs "
            "as root)"
        )
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = target.with_suffix(".partial")
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(partial), str(MOSQUITTO_PLUGIN_SOURCE), "-lcrypto"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise LaunchError(f"could not build Mosquitto's auth plugin: {result.stderr.strip()[-800:]}")
    os.chmod(partial, 0o700)  # owner-only, like the rest of the state directory (private_state)
    partial.rename(target)
    return target


# What ``sluice up --no-mqtt`` leaves out.
MQTT_COMPONENTS = ("mqtt-auth", "mosquitto", "mqtt-bridge")


class MqttAuth(Component):
    """ingest.mqtt_auth: answers Mosquitto's plugin (who connects, publishes, subscribes;
    which sessions end) on a Unix socket.  Started before Mosquitto, which refuses every
    device while it cannot ask."""

    name = "mqtt-auth"
    requires = ("redis",)
    startup_timeout = 60.0

    def enabled(self, runtime: Runtime) -> bool:
        return runtime.is_first_node

    def prepare(self, ctx: Context) -> None:
        ctx.runtime.platform_run_dir.mkdir(parents=True, exist_ok=True)
        ctx.runtime.mqtt_auth_socket.unlink(missing_ok=True)

    def process(self, ctx: Context) -> Process:
        argv = [sys.executable, "-m", "ingest.mqtt_auth"]
        return Process(self.name, argv, ctx.log(self.name), env=ctx.env, cwd=BASE_DIR)

    def check(self, ctx: Context) -> str | None:
        return None if ctx.runtime.mqtt_auth_socket.exists() else "socket not there yet"


class Mosquitto(Component):
    """Debian's Mosquitto 2: MQTT over TLS for devices, client certificates verified against
    nginx's trust and CRL bundles (``mqtt``), access tokens as the password (``mqtt_token``);
    Sluice's plugin asks ingest.mqtt_auth for every decision.  On by default with
    ``sluice up``; ``--no-mqtt`` leaves it out.  Once per platform (the first node)."""

    name = "mosquitto"
    ports = ("mqtt", "mqtt_token")
    requires = ("mqtt-auth", "nginx")
    startup_timeout = 30.0

    def enabled(self, runtime: Runtime) -> bool:
        return runtime.is_first_node

    def port_numbers(self, runtime: Runtime) -> dict[str, int]:
        return {name: getattr(runtime.ports, name) for name in self.ports}

    def config_path(self, rt: Runtime) -> Path:
        return rt.run_dir / "mosquitto.conf"

    def prepare(self, ctx: Context) -> None:
        from ingest.mqtt_auth import POLL_MS
        from ingest.mqtt_bridge import INFLIGHT, MAX_PACKET_BYTES, MAX_QUEUED, PERSIST_SECONDS

        rt = ctx.runtime
        mosquitto_binary()
        rt.mosquitto_data_dir.mkdir(parents=True, exist_ok=True)
        rt.mqtt_bridge_socket.unlink(missing_ok=True)
        pki = ensure_platform_pki(rt)
        # As root, Mosquitto would switch to the user 'mosquitto', who cannot read the
        # platform's key (owner-only under the state directory): it keeps the launcher's user.
        user = pwd.getpwuid(os.geteuid()).pw_name
        render(
            MOSQUITTO_TEMPLATE,
            self.config_path(rt),
            mode=0o600,
            pid_file=rt.run_dir / "mosquitto.pid",
            user_directive=f"user {user}",
            plugin=mosquitto_plugin(rt),
            auth_socket=rt.mqtt_auth_socket,
            poll_ms=POLL_MS,
            persistence_dir=rt.mosquitto_data_dir,
            autosave_seconds=PERSIST_SECONDS,
            bridge_inflight=INFLIGHT,
            max_queued=MAX_QUEUED,
            max_packet_size=MAX_PACKET_BYTES,
            bridge_socket=rt.mqtt_bridge_socket,
            mqtt_port=rt.ports.mqtt,
            token_port=rt.ports.mqtt_token,
            bind=rt.web_bind,
            certificate=pki.cert("web"),
            certificate_key=pki.key("web"),
            client_ca=pki.trust_bundle,
            crl_bundle=bundle_path(rt),
        )
        note_mosquitto_inputs_loaded(rt)

    def process(self, ctx: Context) -> Process:
        argv = [str(mosquitto_binary()), "-c", str(self.config_path(ctx.runtime))]
        return Process(self.name, argv, ctx.log(self.name))

    def check(self, ctx: Context) -> str | None:
        rt = ctx.runtime
        closed = [port for port in (rt.ports.mqtt, rt.ports.mqtt_token) if not tcp_open(port)]
        return f"port(s) {closed} not open yet" if closed else None


class MqttBridge(Component):
    """ingest.mqtt_bridge: Mosquitto's shared subscription over every device's records topic
    to Kafka, through ingest's own pipeline; acknowledges each message to Mosquitto once Kafka
    acknowledged it (acks=all)."""

    name = "mqtt-bridge"
    requires = ("mosquitto", "kafka", "registry", "redis")
    startup_timeout = 60.0

    def enabled(self, runtime: Runtime) -> bool:
        return runtime.is_first_node

    def process(self, ctx: Context) -> Process:
        argv = [sys.executable, "-m", "ingest.mqtt_bridge"]
        return Process(self.name, argv, ctx.log(self.name), env=ctx.env, cwd=BASE_DIR)

    def check(self, ctx: Context) -> str | None:
        from ingest.mqtt_bridge import ready_file

        return None if ready_file(ctx.runtime).exists() else "not subscribed yet"

    def prepare(self, ctx: Context) -> None:
        from ingest.mqtt_bridge import ready_file

        ready_file(ctx.runtime).unlink(missing_ok=True)


BROKERS = tuple(KafkaBroker(node) for node in range(1, max(KAFKA_BROKER_COUNTS) + 1))
_EVERY = (
    Redis(),
    Postgres(),
    *BROKERS,
    Registry(),
    Web(),
    Ingest(),
    Nginx(),
    CeleryWorker(),
    CeleryBeat(),
    MqttAuth(),
    Mosquitto(),
    MqttBridge(),
)
ALL: dict[str, Component] = {c.name: c for c in (*_EVERY, Prometheus())}
# What `sluice test` starts: the services the tests talk to (nginx for its CRL listener and
# TLS, and the web app behind it on the test database).  Tests start their own Celery
# workers and launchers where they need them (and Prometheus, from this module's Prometheus).
# Mosquitto, its auth process and the bridge to Kafka come too: the MQTT tests talk to them.
TEST_COMPONENTS = ("redis", "nginx", "kafka", "registry", "web", "ingest", "mqtt-auth", "mosquitto", "mqtt-bridge")
