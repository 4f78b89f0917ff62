"""The one place that reads the process environment.

Everything Sluice needs to know about where it runs -- state directory, ports, secrets,
heap sizes -- is resolved here into a frozen ``Runtime``.  Django settings, the Celery app,
the launcher (``platform/sluicectl``) and the tests all build on the same object, so a port
or a path is defined exactly once.  This module must not import Django.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Group and other lose every permission on what a Sluice process creates: the state directory
# holds the database (sessions, token hashes), every tenant's telemetry (Kafka's log), keys
# and secrets.  The few paths that are public by design are opened on purpose, in one place
# (platform/sluicectl/private_state.py).
PRIVATE_UMASK = 0o077

DEVELOPMENT = "development"
PRODUCTION = "production"
TEST = "test"
ENVIRONMENTS = (DEVELOPMENT, PRODUCTION, TEST)

# Default ports; SLUICE_PORT_OFFSET shifts all of them at once (the test stack uses +10000).
# The registry has no TCP port for its API (``Runtime.registry_socket``); its management
# port serves health and metrics only.
DEFAULT_PORTS = {
    "web": 8443,
    "kafka": 9092,
    "kafka_controller": 9093,
    "kafka_internal": 9094,
    "kafka_oauth": 9095,
    # Broker 1's Prometheus JMX exporter (a Java agent in the broker's JVM, loopback only).
    "kafka_metrics": 9096,
    "registry_management": 8082,
    "redis": 6379,
    "crl": 8080,
    # The PostgreSQL the launcher starts (SLUICE_DATABASE=postgres), on loopback beside its
    # Unix socket; unused with SQLite or an external DATABASE_URL.
    "postgres": 5432,
    # The Prometheus the launcher starts (on loopback; ``sluice up --no-prometheus`` starts none).
    "prometheus": 9090,
    # Mosquitto's MQTT listeners (``sluice up --no-mqtt`` starts none): devices with a client
    # certificate (mTLS), and devices of token groups (TLS, the access token as the password).
    "mqtt": 8883,
    "mqtt_token": 8884,
}


# A web node's name (``SLUICE_NODE``): it names the node's directories and its Celery worker.
NODE_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
# The ports a web node listens on itself; every other port is the platform's, shared by all nodes.
NODE_PORTS = ("web", "crl")
# How many combined broker+controller nodes Sluice may run itself (SLUICE_KAFKA_BROKERS): a
# KRaft quorum needs a majority of its voters, so an even count adds a node without adding a
# failure it survives (2 survive no loss, like 1; 4 survive one, like 3).
KAFKA_BROKER_COUNTS = (1, 3, 5)
# Broker n (1-based) listens on broker 1's five ports + (n - 1) * this: 9192-9196 and 9292-9296
# for brokers 2 and 3 by default, clear of every port in DEFAULT_PORTS, and shifted by
# SLUICE_PORT_OFFSET (or SLUICE_KAFKA*_PORT) with them.
BROKER_PORT_STRIDE = 100


class ConfigurationError(Exception):
    """The environment describes a Sluice that cannot run; the message says what to set."""


@dataclass(frozen=True)
class Ports:
    """TCP ports on loopback (web: the HTTPS listener nginx serves)."""

    web: int
    kafka: int
    kafka_controller: int
    kafka_internal: int
    kafka_oauth: int
    kafka_metrics: int
    registry_management: int
    redis: int
    crl: int
    postgres: int
    prometheus: int
    mqtt: int
    mqtt_token: int

    def named(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in DEFAULT_PORTS}


@dataclass(frozen=True)
class BrokerPorts:
    """One broker's listeners: MTLS (clients with a certificate), CONTROLLER (the KRaft
    quorum), INTERNAL (replication between brokers), OAUTH (SASL_SSL OAUTHBEARER) and its
    JMX exporter's HTTP port (``/metrics`` for Prometheus, on loopback)."""

    client: int
    controller: int
    internal: int
    oauth: int
    metrics: int


@dataclass(frozen=True)
class ExternalKafka:
    """A Kafka cluster Sluice does not start (``SLUICE_KAFKA_BOOTSTRAP``): where it is, and the
    admin credentials Sluice uses on its mTLS listener.  Without a certificate and key Sluice
    uses its own platform admin certificate (``User:sluice-admin``, issued by its root CA,
    which the brokers must then trust); without a CA file, its own trust bundle."""

    bootstrap: str
    oauth_bootstrap: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class ExternalRegistry:
    """A Confluent-compatible schema registry Sluice does not start (``SLUICE_REGISTRY_URL``),
    over http(s), with optional HTTP basic credentials and a CA file for its certificate."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None


COMPRESSIONS = ("none", "lz4", "snappy", "zstd", "gzip")
INGEST_SERVERS = ("uvicorn", "granian")

# SLUICE_DATABASE: SQLite under the state directory (the embedded default), or a PostgreSQL
# that the launcher starts under the state directory.  An external PostgreSQL is named by
# DATABASE_URL instead, and then nothing is started.
SQLITE = "sqlite"
POSTGRES = "postgres"
DATABASES = (SQLITE, POSTGRES)
# The database and role Sluice owns in the PostgreSQL it starts.
POSTGRES_DATABASE = "sluice"
POSTGRES_ROLE = "sluice"
# The cluster's bootstrap superuser (initdb): only the launcher uses it, to create the role
# and the database; the application connects as POSTGRES_ROLE, which is no superuser.
POSTGRES_SUPERUSER = "postgres"


@dataclass(frozen=True)
class IngestSettings:
    """The data plane's processes and its Kafka producer (chosen by measurement: see the
    README's benchmark section)."""

    workers: int = 2
    server: str = "uvicorn"
    compression: str = "lz4"
    linger_ms: int = 5
    batch_bytes: int = 1_000_000
    # How long a request's Idempotency-Key answers retries with its first answer.
    idempotency_seconds: int = 86_400


@dataclass(frozen=True)
class Runtime:
    """Where and how this Sluice instance runs, resolved once from the environment."""

    environment: str
    state_dir: Path
    dist_dir: Path
    ports: Ports
    web_bind: str
    public_hostnames: tuple[str, ...]
    kafka_advertised_host: str
    kafka_heap: str
    registry_heap: str
    kafka_java: str | None
    registry_java: str | None
    database_url: str | None
    database: str
    debug: bool
    default_partitions: int
    default_replication_factor: int
    # The web node this process belongs to: "" is the first node, which also runs what exists
    # once per platform (Redis, Kafka, the registry, Celery beat); another node (``sluice up
    # --node web2``) runs its own nginx, web and ingest workers on the same state directory,
    # database, Redis and Kafka.  Its run, log, nginx, socket and static directories are its
    # own (``node_dir``), and it listens on ``node_ports``.
    node: str = ""
    node_ports: Ports | None = None
    ingest: IngestSettings = field(default_factory=IngestSettings)
    # How many brokers the project's own files run on this state directory (KAFKA_BROKER_COUNTS).
    kafka_brokers: int = 1
    # Set when Sluice runs against a cluster / registry it does not start.
    external_kafka: ExternalKafka | None = None
    external_registry: ExternalRegistry | None = None
    # The JWKS URL as the brokers reach it (SLUICE_JWKS_URL), when not Sluice's own loopback one.
    jwks_url_override: str | None = None
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    _secrets: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    # -- paths -------------------------------------------------------------------------
    @property
    def node_dir(self) -> Path:
        """Where this web node keeps what is its own; the state directory itself for the
        first node, so a single-node platform's layout is unchanged."""
        return self.state_dir / "nodes" / self.node if self.node else self.state_dir

    @property
    def is_first_node(self) -> bool:
        return not self.node

    @property
    def listen(self) -> Ports:
        """The ports this node's nginx listens on: the platform's own (``ports``, which the
        public URLs, token issuer and CRL distribution points name) unless this is another
        node (``SLUICE_NODE_WEB_PORT``, ``SLUICE_NODE_CRL_PORT``)."""
        return self.node_ports or self.ports

    @property
    def nginx_dir(self) -> Path:
        return self.node_dir / "nginx"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def logs_dir(self) -> Path:
        return self.node_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """The node's pid files, its launcher's lock and state, nginx's reload marker."""
        return self.node_dir / "run"

    @property
    def platform_run_dir(self) -> Path:
        """The first node's run directory: what every node reaches there (the registry's socket)."""
        return self.state_dir / "run"

    @property
    def kafka_data_dir(self) -> Path:
        return self.kafka_node_dir(1) / "data"

    def kafka_node_dir(self, node: int) -> Path:
        """Broker ``node``'s configuration and (under ``data``) its log; broker 1 keeps the
        single-broker layout, so a 1-broker state directory grows into a cluster in place."""
        return self.state_dir / ("kafka" if node == 1 else f"kafka-{node}")

    @property
    def kafka_nodes(self) -> range:
        """The node ids of the brokers the project's files run (1-based, = ``node.id``)."""
        return range(1, self.kafka_brokers + 1)

    def broker_ports(self, node: int) -> BrokerPorts:
        shift = (node - 1) * BROKER_PORT_STRIDE
        p = self.ports
        return BrokerPorts(client=p.kafka + shift, controller=p.kafka_controller + shift,
                           internal=p.kafka_internal + shift, oauth=p.kafka_oauth + shift,
                           metrics=p.kafka_metrics + shift)  # fmt: skip

    @property
    def registry_data_dir(self) -> Path:
        return self.state_dir / "registry"

    @property
    def mosquitto_data_dir(self) -> Path:
        """Mosquitto's persistence file (sessions and the messages queued for the bridge)."""
        return self.state_dir / "mosquitto"

    @property
    def redis_data_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def crl_dir(self) -> Path:
        """CRLs as files, served over plain HTTP by nginx (RFC 5280 §4.2.1.13: CRLs are
        signed, and a TLS URL would make revocation checking depend on TLS itself)."""
        return self.state_dir / "crl"

    def crl_url(self, name: str) -> str:
        return f"http://{self.public_hostnames[0]}:{self.ports.crl}/crl/{name}.crl"

    @property
    def public_pki_dir(self) -> Path:
        """The platform root CA's certificate, a copy that nginx's workers may read and serve
        at ``root_ca_url`` (the ``pki`` directory itself, with the keys, stays owner-only)."""
        return self.state_dir / "pki-public"

    @property
    def root_ca_url(self) -> str:
        """Where anyone fetches the root CA's certificate: plain HTTP beside the CRLs, since a
        newcomer needs it before they can verify Sluice's HTTPS (they compare its SHA-256
        fingerprint with the one the console and ``sluice up`` show).  Also served over HTTPS
        at ``<web_url>/pki/root-ca.crt``."""
        return f"http://{self.public_hostnames[0]}:{self.ports.crl}/pki/root-ca.crt"

    @property
    def public_socket_dir(self) -> Path:
        """Sockets nginx's workers connect to (another user when nginx starts as root), so
        this directory is public; the web app trusts a request on it only when it carries
        the proxy secret."""
        return self.node_dir / "public-sockets"

    @property
    def web_socket(self) -> Path:
        return self.public_socket_dir / "web.sock"

    @property
    def mqtt_auth_socket(self) -> Path:
        """Where ingest.mqtt_auth answers Mosquitto's plugin (owner-only: only Mosquitto,
        run as the launcher's user, asks it)."""
        return self.platform_run_dir / "mqtt-auth.sock"

    @property
    def mqtt_bridge_socket(self) -> Path:
        """Mosquitto's listener for ingest.mqtt_bridge alone (a Unix socket in an owner-only
        directory; no device reaches it, and the bridge still authenticates on it)."""
        return self.platform_run_dir / "mqtt-bridge.sock"

    def ingest_socket(self, index: int) -> Path:
        """Each ingest worker listens on its own socket: nginx sends every request of one
        device to the same worker (ingest.ratelimit keeps its bucket there)."""
        return self.public_socket_dir / f"ingest-{index}.sock"

    @property
    def static_root(self) -> Path:
        return self.node_dir / "static"

    @property
    def sqlite_path(self) -> Path:
        return self.state_dir / "db.sqlite3"

    @property
    def starts_postgres(self) -> bool:
        """The launcher starts (and owns) a PostgreSQL under the state directory."""
        return self.database == POSTGRES and self.database_url is None

    @property
    def postgres_dir(self) -> Path:
        """The started PostgreSQL's own directory, owner-only and, when the launcher runs as
        root, owned by the unprivileged user the server runs as (sluicectl.components.Postgres):
        its cluster (``data``) and its Unix socket's directory (``socket``)."""
        return self.state_dir / "postgres"

    @property
    def postgres_data_dir(self) -> Path:
        return self.postgres_dir / "data"

    @property
    def postgres_socket_dir(self) -> Path:
        """Where the started PostgreSQL puts its Unix socket (``.s.PGSQL.<port>``), the one
        the application connects through.  Not the run directory: that is the launcher's
        user's alone, and the server may run as another user."""
        return self.postgres_dir / "socket"

    # -- endpoints ---------------------------------------------------------------------
    @property
    def kafka_bootstrap(self) -> str:
        """Every broker's mTLS listener (a client needs one that answers; all of them let it
        start while any one broker is down)."""
        if self.external_kafka is not None:
            return self.external_kafka.bootstrap
        return ",".join(f"{self.kafka_advertised_host}:{self.broker_ports(n).client}" for n in self.kafka_nodes)

    @property
    def kafka_oauth_bootstrap(self) -> str:
        """The brokers' SASL_SSL listeners for OAUTHBEARER clients holding a Sluice token."""
        if self.external_kafka is not None:
            return self.external_kafka.oauth_bootstrap or ""
        return ",".join(f"{self.kafka_advertised_host}:{self.broker_ports(n).oauth}" for n in self.kafka_nodes)

    @property
    def runs_kafka(self) -> bool:
        """Whether ``sluice up`` starts the brokers (not when SLUICE_KAFKA_BOOTSTRAP names a cluster)."""
        return self.external_kafka is None

    @property
    def runs_registry(self) -> bool:
        """Whether ``sluice up`` starts Apicurio (not when SLUICE_REGISTRY_URL names a registry)."""
        return self.external_registry is None

    @property
    def jwks_url(self) -> str:
        """Where the brokers fetch Sluice's token-signing public keys (RFC 7517): by default
        nginx's plain-HTTP listener on loopback; an external cluster's brokers reach it at
        ``SLUICE_JWKS_URL``.  The broker's JVM must allow exactly this URL
        (``org.apache.kafka.sasl.oauthbearer.allowed.urls``)."""
        return self.jwks_url_override or f"http://127.0.0.1:{self.ports.crl}/oauth/jwks.json"

    @property
    def oauth_issuer(self) -> str:
        """The ``iss`` of Sluice's access tokens (``tenants.oauth.tokens.issuer``), which the
        broker expects (``sasl.oauthbearer.expected.issuer``).  Defined here because the
        launcher renders the broker's configuration without Django."""
        return f"{self.web_url}/oauth"

    @property
    def registry_socket(self) -> Path:
        """Apicurio's only API listener: a Unix socket, owner-only, in the owner-only run
        directory, so no process of another user can read or write schemas (there is no TCP
        port to reach).  Clients come from ``devices.registry_client``."""
        return self.platform_run_dir / "registry.sock"

    @property
    def registry_url(self) -> str:
        """The Confluent-compatible API's base URL: an external registry's (SLUICE_REGISTRY_URL),
        else Apicurio's, spoken over ``registry_socket``.  Its host is then a reserved name no
        resolver answers (RFC 6761 ``.invalid``): a client that is not bound to the socket
        fails instead of reaching whatever listens elsewhere."""
        if self.external_registry is not None:
            return self.external_registry.url
        return "http://registry.invalid/apis/ccompat/v7"

    @property
    def web_url(self) -> str:
        host = self.public_hostnames[0]
        return f"https://{host}:{self.ports.web}"

    def redis_url(self, db: int = 0) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.ports.redis}/{db}"

    # -- secrets -----------------------------------------------------------------------
    @property
    def secret_key(self) -> str:
        return self._secret("django-secret-key", "SLUICE_SECRET_KEY")

    @property
    def redis_password(self) -> str:
        return self._secret("redis-password", "SLUICE_REDIS_PASSWORD")

    @property
    def key_encryption_key(self) -> bytes:
        """Passphrase that encrypts CA private keys at rest (PKCS#8, BestAvailableEncryption)."""
        return self._secret("kek", "SLUICE_KEK").encode()

    @property
    def database_password(self) -> str:
        """The application role's password in the PostgreSQL the launcher starts."""
        return self._secret("database-password", "SLUICE_DATABASE_PASSWORD")

    @property
    def database_admin_password(self) -> str:
        """The started PostgreSQL's bootstrap superuser's password: the launcher's only."""
        return self._secret("database-admin-password", "SLUICE_DATABASE_ADMIN_PASSWORD")

    @property
    def proxy_secret(self) -> str:
        """Shared by nginx and the app: marks requests (and their client-certificate
        headers) as forwarded by nginx."""
        return self._secret("proxy-secret", "SLUICE_PROXY_SECRET")

    @property
    def mqtt_bridge_password(self) -> str:
        """What ingest.mqtt_bridge presents to Mosquitto (ingest.mqtt_auth checks it): the
        one identity that may subscribe to every device's records."""
        return self._secret("mqtt-bridge-password", "SLUICE_MQTT_BRIDGE_PASSWORD")

    @property
    def metrics_scrape_token(self) -> str:
        """The bearer token Prometheus presents to scrape Sluice's ``/metrics`` (read by
        Prometheus from ``metrics_scrape_token_file``); it grants nothing else."""
        return self._secret("metrics-scrape-token", "SLUICE_METRICS_SCRAPE_TOKEN")

    @property
    def metrics_scrape_token_file(self) -> Path:
        """Where ``metrics_scrape_token`` lives when Sluice generated it (development/test);
        with ``SLUICE_METRICS_SCRAPE_TOKEN`` set, the launcher writes it there for Prometheus."""
        return self.secrets_dir / "metrics-scrape-token"

    def ensure_secrets(self) -> None:
        """Resolve (and in development create) every secret now, before processes fork."""
        _ = self.secret_key, self.redis_password, self.key_encryption_key, self.proxy_secret
        _ = self.metrics_scrape_token, self.mqtt_bridge_password
        if self.starts_postgres:
            _ = self.database_password, self.database_admin_password

    def _secret(self, name: str, variable: str) -> str:
        if name in self._secrets:
            return self._secrets[name]
        value = read_or_create_secret(self, name, variable)
        self._secrets[name] = value
        return value


def use_private_umask() -> None:
    """From now on this process creates files 0600 and directories 0700 (``PRIVATE_UMASK``).
    Called first thing by the launcher, so every process it starts inherits it, and by the
    Django settings, so ``manage.py``, Celery and pytest started by hand do the same."""
    os.umask(PRIVATE_UMASK)


def read_or_create_secret(runtime: Runtime, name: str, variable: str) -> str:
    """A secret comes from the environment; in development/test it is generated once under
    ``<state>/secrets`` (mode 0600).  Production refuses to invent one."""
    value = runtime.environ.get(variable)
    if value:
        return value
    path = runtime.secrets_dir / name
    if path.exists():
        return path.read_text().strip()
    if runtime.environment == PRODUCTION:
        raise ConfigurationError(f"{variable} must be set when SLUICE_ENV=production")
    runtime.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written whole to a private temporary file, then linked into place: a concurrent
    # process either wins the link or reads the complete winner, never a partial file.
    tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    value = _int(environ, name, default)
    if not 1 <= value <= 65535:
        raise ConfigurationError(f"{name}={value} is not a TCP port (1-65535)")
    return value


def _ingest_settings(env: Mapping[str, str]) -> IngestSettings:
    defaults = IngestSettings()
    workers = _int(env, "SLUICE_INGEST_WORKERS", defaults.workers)
    if not 1 <= workers <= 64:
        raise ConfigurationError(f"SLUICE_INGEST_WORKERS={workers}; use 1 to 64")
    server = env.get("SLUICE_INGEST_SERVER", defaults.server)
    if server not in INGEST_SERVERS:
        raise ConfigurationError(f"SLUICE_INGEST_SERVER={server!r}; use one of {', '.join(INGEST_SERVERS)}")
    compression = env.get("SLUICE_INGEST_COMPRESSION", defaults.compression)
    if compression not in COMPRESSIONS:
        raise ConfigurationError(f"SLUICE_INGEST_COMPRESSION={compression!r}; use one of {', '.join(COMPRESSIONS)}")
    linger = _int(env, "SLUICE_INGEST_LINGER_MS", defaults.linger_ms)
    if not 0 <= linger <= 1000:
        raise ConfigurationError(f"SLUICE_INGEST_LINGER_MS={linger}; use 0 to 1000")
    batch = _int(env, "SLUICE_INGEST_BATCH_BYTES", defaults.batch_bytes)
    if not 1_000 <= batch <= 16_000_000:
        raise ConfigurationError(f"SLUICE_INGEST_BATCH_BYTES={batch}; use 1000 to 16000000")
    window = _int(env, "SLUICE_INGEST_IDEMPOTENCY_SECONDS", defaults.idempotency_seconds)
    if not 600 <= window <= 7 * 86_400:
        raise ConfigurationError(f"SLUICE_INGEST_IDEMPOTENCY_SECONDS={window}; use 600 (10 minutes) to 604800 (7 days)")
    return IngestSettings(workers=workers, server=server, compression=compression, linger_ms=linger,
                          batch_bytes=batch, idempotency_seconds=window)  # fmt: skip


def _node(env: Mapping[str, str], ports: Ports) -> tuple[str, Ports | None]:
    """``SLUICE_NODE`` and the ports that node listens on (both required for a node other
    than the first: two nginx on one machine cannot share a port)."""
    node = env.get("SLUICE_NODE", "")
    if not node:
        stray = [variable for name in NODE_PORTS if env.get(variable := f"SLUICE_NODE_{name.upper()}_PORT")]
        if stray:
            raise ConfigurationError(f"{', '.join(stray)} set without SLUICE_NODE; name the node (SLUICE_NODE=web2)")
        return "", None
    if not NODE_NAME.fullmatch(node):
        raise ConfigurationError(
            f"SLUICE_NODE={node!r}; a node name is a lowercase letter, then up to 30 lowercase letters, digits or -"
        )
    own: dict[str, int] = {}
    for name in NODE_PORTS:
        variable = f"SLUICE_NODE_{name.upper()}_PORT"
        if not env.get(variable):
            raise ConfigurationError(f"SLUICE_NODE={node} needs {variable}: the port this node's nginx listens on")
        own[name] = _port(env, variable, 0)
    return node, Ports(**{**ports.named(), **own})


def _existing_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"{name}={raw!r}: no such file")
    return path


def _host_ports(raw: str, name: str) -> str:
    """``host:port[,host:port...]`` as Kafka clients take it, checked."""
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not entries:
        raise ConfigurationError(f"{name} must name at least one host:port")
    for entry in entries:
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigurationError(f"{name}: {entry!r} is not host:port (port 1-65535)")
    return ",".join(entries)


def _http_url(raw: str, name: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{name}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")


def _external_kafka(env: Mapping[str, str]) -> ExternalKafka | None:
    raw = env.get("SLUICE_KAFKA_BOOTSTRAP", "").strip()
    credentials = ("SLUICE_KAFKA_CA_FILE", "SLUICE_KAFKA_CERT_FILE", "SLUICE_KAFKA_KEY_FILE",
                   "SLUICE_KAFKA_OAUTH_BOOTSTRAP")  # fmt: skip
    if not raw:
        stray = [name for name in credentials if env.get(name, "").strip()]
        if stray:
            raise ConfigurationError(
                f"{', '.join(stray)} set without SLUICE_KAFKA_BOOTSTRAP (the cluster they are for)"
            )
        return None
    cert, key = _existing_file(env, "SLUICE_KAFKA_CERT_FILE"), _existing_file(env, "SLUICE_KAFKA_KEY_FILE")
    if (cert is None) != (key is None):
        raise ConfigurationError("SLUICE_KAFKA_CERT_FILE and SLUICE_KAFKA_KEY_FILE go together (Sluice's admin "
                                 "client certificate and its private key, PEM)")  # fmt: skip
    oauth = env.get("SLUICE_KAFKA_OAUTH_BOOTSTRAP", "").strip()
    return ExternalKafka(
        bootstrap=_host_ports(raw, "SLUICE_KAFKA_BOOTSTRAP"),
        oauth_bootstrap=_host_ports(oauth, "SLUICE_KAFKA_OAUTH_BOOTSTRAP") if oauth else None,
        ca_file=_existing_file(env, "SLUICE_KAFKA_CA_FILE"),
        cert_file=cert,
        key_file=key,
    )


def _external_registry(env: Mapping[str, str]) -> ExternalRegistry | None:
    raw = env.get("SLUICE_REGISTRY_URL", "").strip()
    username, password = env.get("SLUICE_REGISTRY_USERNAME") or None, env.get("SLUICE_REGISTRY_PASSWORD") or None
    if not raw:
        stray = [n for n in ("SLUICE_REGISTRY_USERNAME", "SLUICE_REGISTRY_PASSWORD", "SLUICE_REGISTRY_CA_FILE")
                 if env.get(n, "").strip()]  # fmt: skip
        if stray:
            raise ConfigurationError(f"{', '.join(stray)} set without SLUICE_REGISTRY_URL (the registry they are for)")
        return None
    if (username is None) != (password is None):
        raise ConfigurationError("SLUICE_REGISTRY_USERNAME and SLUICE_REGISTRY_PASSWORD go together (HTTP basic)")
    if username is not None and ":" in username:
        raise ConfigurationError("SLUICE_REGISTRY_USERNAME may not contain ':' (HTTP basic, RFC 7617)")
    return ExternalRegistry(url=_http_url(raw, "SLUICE_REGISTRY_URL"), username=username, password=password,
                            ca_file=_existing_file(env, "SLUICE_REGISTRY_CA_FILE"))  # fmt: skip


def _kafka_brokers(env: Mapping[str, str]) -> int:
    brokers = _int(env, "SLUICE_KAFKA_BROKERS", 1)
    if brokers not in KAFKA_BROKER_COUNTS:
        counts = ", ".join(str(c) for c in KAFKA_BROKER_COUNTS)
        raise ConfigurationError(f"SLUICE_KAFKA_BROKERS={brokers}; use {counts} (a KRaft quorum of an odd size)")
    return brokers


def _replication_factor(env: Mapping[str, str], brokers: int, external: bool) -> int:
    """New topics' replication factor: as set, else 3 on an external cluster (what every
    managed offering runs) or on 3+ brokers of Sluice's own, else the number of brokers."""
    rf = _int(env, "SLUICE_DEFAULT_REPLICATION_FACTOR", 3 if external else min(3, brokers))
    if not 1 <= rf <= 7:
        raise ConfigurationError(f"SLUICE_DEFAULT_REPLICATION_FACTOR={rf}; use 1 to 7")
    if not external and rf > brokers:
        raise ConfigurationError(f"SLUICE_DEFAULT_REPLICATION_FACTOR={rf} is more than the {brokers} broker(s) "
                                 f"Sluice runs (SLUICE_KAFKA_BROKERS)")  # fmt: skip
    return rf


def load_runtime(environ: Mapping[str, str] | None = None) -> Runtime:
    """Build the Runtime from ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    environment = env.get("SLUICE_ENV", DEVELOPMENT)
    if environment not in ENVIRONMENTS:
        raise ConfigurationError(f"SLUICE_ENV={environment!r}; use one of {', '.join(ENVIRONMENTS)}")
    state_dir = Path(env.get("SLUICE_STATE_DIR", BASE_DIR / "var" / "data")).resolve()
    dist_dir = Path(env.get("SLUICE_DIST_DIR", BASE_DIR / "var" / "dist")).resolve()
    offset = _int(env, "SLUICE_PORT_OFFSET", 0)
    ports = Ports(
        **{name: _port(env, f"SLUICE_{name.upper()}_PORT", default + offset) for name, default in DEFAULT_PORTS.items()}
    )
    database = env.get("SLUICE_DATABASE", "") or SQLITE
    if database not in DATABASES:
        raise ConfigurationError(f"SLUICE_DATABASE={database!r}; use one of {', '.join(DATABASES)}")
    database_url = env.get("DATABASE_URL") or None
    if database_url is not None and database == POSTGRES:
        raise ConfigurationError(
            "SLUICE_DATABASE=postgres (or --db postgres) starts a PostgreSQL of Sluice's own, and DATABASE_URL "
            "names an external one; set only one of them"
        )
    if database_url is not None and not database_url.startswith(
        ("postgres://", "postgresql://", "pgsql://", "sqlite://")
    ):
        raise ConfigurationError(
            f"DATABASE_URL must start with postgres:// (or sqlite://); got {database_url.split(':', 1)[0]!r}"
        )
    node, node_ports = _node(env, ports)
    hostnames = tuple(h.strip() for h in env.get("SLUICE_HOSTNAMES", "localhost").split(",") if h.strip())
    if not hostnames:
        raise ConfigurationError("SLUICE_HOSTNAMES must name at least one host")
    brokers = _kafka_brokers(env)
    external_kafka = _external_kafka(env)
    jwks = env.get("SLUICE_JWKS_URL", "").strip()
    return Runtime(
        environment=environment,
        state_dir=state_dir,
        dist_dir=dist_dir,
        ports=ports,
        web_bind=env.get("SLUICE_WEB_BIND", "127.0.0.1"),
        public_hostnames=hostnames,
        kafka_advertised_host=env.get("SLUICE_KAFKA_ADVERTISED_HOST", "localhost"),
        kafka_heap=env.get("SLUICE_KAFKA_HEAP", "512m"),
        registry_heap=env.get("SLUICE_REGISTRY_HEAP", "384m"),
        kafka_java=env.get("SLUICE_KAFKA_JAVA") or None,
        registry_java=env.get("SLUICE_REGISTRY_JAVA") or None,
        database_url=database_url,
        database=database,
        debug=env.get("SLUICE_DEBUG", "") == "1",
        # The brief's 100+ partitions for ingestion topics; the test stack keeps it small.
        default_partitions=_int(env, "SLUICE_DEFAULT_PARTITIONS", 3 if environment == TEST else 100),
        default_replication_factor=_replication_factor(env, brokers, external_kafka is not None),
        node=node,
        node_ports=node_ports,
        ingest=_ingest_settings(env),
        kafka_brokers=brokers,
        external_kafka=external_kafka,
        external_registry=_external_registry(env),
        jwks_url_override=_http_url(jwks, "SLUICE_JWKS_URL") if jwks else None,
        environ=dict(env),
    )
