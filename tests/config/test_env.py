"""config.env: every bad setting is named in the error, and secrets are never invented in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.env import DEFAULT_PORTS, ConfigurationError, load_runtime


def test_port_offset_moves_every_port(tmp_path: Path) -> None:
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_PORT_OFFSET": "10000"})
    assert runtime.ports.named() == {name: port + 10000 for name, port in DEFAULT_PORTS.items()}


def test_a_specific_port_wins_over_the_offset(tmp_path: Path) -> None:
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_PORT_OFFSET": "5", "SLUICE_KAFKA_PORT": "19092"})
    assert runtime.ports.kafka == 19092
    assert runtime.ports.redis == DEFAULT_PORTS["redis"] + 5


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SLUICE_KAFKA_PORT": "nine"}, "SLUICE_KAFKA_PORT='nine' is not a whole number"),
        ({"SLUICE_WEB_PORT": "70000"}, "SLUICE_WEB_PORT=70000 is not a TCP port"),
        ({"SLUICE_ENV": "staging"}, "SLUICE_ENV='staging'; use one of"),
        ({"SLUICE_HOSTNAMES": " , "}, "SLUICE_HOSTNAMES must name at least one host"),
        ({"SLUICE_DATABASE": "mysql"}, "SLUICE_DATABASE='mysql'; use one of sqlite, postgres"),
        (
            {"SLUICE_DATABASE": "postgres", "DATABASE_URL": "postgres://u:p@db.example/sluice"},
            "starts a PostgreSQL of Sluice's own, and DATABASE_URL names an external one; set only one of them",
        ),
        ({"DATABASE_URL": "mysql://u:p@db.example/sluice"}, "DATABASE_URL must start with postgres://"),
        ({"SLUICE_INGEST_IDEMPOTENCY_SECONDS": "60"}, "SLUICE_INGEST_IDEMPOTENCY_SECONDS=60; use 600"),
        ({"SLUICE_INGEST_IDEMPOTENCY_SECONDS": "day"}, "SLUICE_INGEST_IDEMPOTENCY_SECONDS='day' is not a whole number"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        load_runtime({"SLUICE_STATE_DIR": str(tmp_path), **environ})


def test_the_idempotency_window_is_a_day_unless_set(tmp_path: Path) -> None:
    assert load_runtime({"SLUICE_STATE_DIR": str(tmp_path)}).ingest.idempotency_seconds == 86_400
    set_ = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_INGEST_IDEMPOTENCY_SECONDS": "3600"})
    assert set_.ingest.idempotency_seconds == 3600


def test_development_generates_secrets_once_and_keeps_them_private(tmp_path: Path) -> None:
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path)})
    key = runtime.secret_key
    assert load_runtime({"SLUICE_STATE_DIR": str(tmp_path)}).secret_key == key
    assert (tmp_path / "secrets" / "django-secret-key").stat().st_mode & 0o077 == 0


def test_production_refuses_to_invent_secrets(tmp_path: Path) -> None:
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_ENV": "production"})
    with pytest.raises(ConfigurationError, match="SLUICE_KEK must be set"):
        _ = runtime.key_encryption_key
    assert not (tmp_path / "secrets").exists()


def test_concurrent_first_reads_agree_on_one_secret(tmp_path: Path) -> None:
    # given several processes that all start at once on an empty state directory
    # (spawned, not forked: a fork copies whatever locks other threads of the test process hold,
    # such as a Kafka client's, and the child can hang on one forever)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as pool:
        keys = list(pool.map(_secret_key_of, [str(tmp_path)] * 8))
    # then every one of them sees the same secret, and no temporary file is left behind
    assert len(set(keys)) == 1
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["django-secret-key"]


def _secret_key_of(state_dir: str) -> str:
    return load_runtime({"SLUICE_STATE_DIR": state_dir}).secret_key


@pytest.mark.parametrize(
    ("environ", "starts"),
    [
        ({}, False),
        ({"SLUICE_DATABASE": "sqlite"}, False),
        ({"SLUICE_DATABASE": "postgres"}, True),
        ({"DATABASE_URL": "postgres://u:p@db.example:5432/sluice"}, False),
    ],
)
def test_only_sluice_database_postgres_starts_a_postgresql(
    tmp_path: Path, environ: dict[str, str], starts: bool
) -> None:
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), **environ})
    assert runtime.starts_postgres is starts
    # and its socket lives in the state directory, on the offset port
    assert runtime.postgres_socket_dir == tmp_path / "postgres" / "socket"
    assert runtime.ports.postgres == DEFAULT_PORTS["postgres"]


def test_another_web_node_has_its_own_directories_and_listen_ports_and_shares_the_rest(tmp_path: Path) -> None:
    # given the environment `sluice up --node web2 --web-port 9443 --crl-port 9080` gives its processes
    first = load_runtime({"SLUICE_STATE_DIR": str(tmp_path)})
    node = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_NODE": "web2", "SLUICE_NODE_WEB_PORT": "9443",
                         "SLUICE_NODE_CRL_PORT": "9080"})  # fmt: skip

    # then its run, log, socket, static and nginx directories are its own ...
    own = tmp_path / "nodes" / "web2"
    assert (node.run_dir, node.logs_dir, node.public_socket_dir) == (own / "run", own / "logs", own / "public-sockets")
    assert (node.static_root, node.nginx_dir) == (own / "static", own / "nginx")
    # ... it listens on its own ports, while the platform's URLs (token issuer, CRL
    # distribution points, JWKS for the broker) stay the first node's
    assert (node.listen.web, node.listen.crl, node.listen.redis) == (9443, 9080, first.ports.redis)
    assert (node.web_url, node.oauth_issuer, node.jwks_url) == (first.web_url, first.oauth_issuer, first.jwks_url)
    assert node.crl_url("x") == first.crl_url("x")
    # ... and what is the platform's is shared: PKI, CRLs, secrets, the database, the registry's socket
    assert (node.pki_dir, node.crl_dir, node.secrets_dir) == (first.pki_dir, first.crl_dir, first.secrets_dir)
    assert (node.sqlite_path, node.registry_socket) == (first.sqlite_path, first.registry_socket)
    # and the first node's layout is what it always was
    assert (first.run_dir, first.listen) == (tmp_path / "run", first.ports)


def test_three_brokers_get_their_own_ports_clear_of_every_other_and_a_bootstrap_of_all(tmp_path: Path) -> None:
    # given a 3-broker profile on the test offset
    runtime = load_runtime({"SLUICE_STATE_DIR": str(tmp_path), "SLUICE_PORT_OFFSET": "20000",
                            "SLUICE_KAFKA_BROKERS": "3"})  # fmt: skip

    # when every listener of every broker is listed
    broker_ports = [p for n in runtime.kafka_nodes for p in vars(runtime.broker_ports(n)).values()]

    # then none collides with another or with the platform's other ports
    assert len(set(broker_ports)) == 15
    assert not set(broker_ports) & {p for name, p in runtime.ports.named().items() if not name.startswith("kafka")}
    assert runtime.broker_ports(2).client == 29192
    assert runtime.kafka_bootstrap == "localhost:29092,localhost:29192,localhost:29292"
    # and new topics get 3 replicas there, 1 on a single broker
    assert runtime.default_replication_factor == 3
    assert load_runtime({"SLUICE_STATE_DIR": str(tmp_path)}).default_replication_factor == 1


def test_an_external_cluster_and_registry_are_used_as_configured(tmp_path: Path) -> None:
    # given the files an operator hands Sluice for its admin client
    for name in ("ca.pem", "admin.pem", "admin.key"):
        (tmp_path / name).write_text("PEM")
    runtime = load_runtime({
        "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_KAFKA_BOOTSTRAP": "b-1.kafka:9094, b-2.kafka:9094",
        "SLUICE_KAFKA_CA_FILE": str(tmp_path / "ca.pem"), "SLUICE_KAFKA_CERT_FILE": str(tmp_path / "admin.pem"),
        "SLUICE_KAFKA_KEY_FILE": str(tmp_path / "admin.key"), "SLUICE_REGISTRY_URL": "https://registry.example/apis/",
        "SLUICE_REGISTRY_USERNAME": "sluice", "SLUICE_REGISTRY_PASSWORD": "s3cret",
        "SLUICE_JWKS_URL": "https://sluice.example/oauth/jwks.json",
    })  # fmt: skip
    # then Sluice starts neither, talks to both, and tells the brokers its JWKS URL
    assert not runtime.runs_kafka
    assert not runtime.runs_registry
    assert runtime.kafka_bootstrap == "b-1.kafka:9094,b-2.kafka:9094"
    assert runtime.registry_url == "https://registry.example/apis"
    assert runtime.jwks_url == "https://sluice.example/oauth/jwks.json"
    assert runtime.default_replication_factor == 3
    assert "s3cret" not in repr(runtime.external_registry)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SLUICE_NODE": "Web 2"}, "SLUICE_NODE='Web 2'; a node name is a lowercase letter"),
        ({"SLUICE_NODE": "web2", "SLUICE_NODE_CRL_PORT": "9080"}, "SLUICE_NODE=web2 needs SLUICE_NODE_WEB_PORT"),
        ({"SLUICE_NODE": "web2", "SLUICE_NODE_WEB_PORT": "0", "SLUICE_NODE_CRL_PORT": "9080"},
         "SLUICE_NODE_WEB_PORT=0 is not a TCP port"),
        ({"SLUICE_NODE_WEB_PORT": "9443"}, "SLUICE_NODE_WEB_PORT set without SLUICE_NODE"),
    ],
)  # fmt: skip
def test_bad_node_settings_are_named(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_runtime({"SLUICE_STATE_DIR": str(tmp_path), **environ})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SLUICE_KAFKA_BROKERS": "2"}, "SLUICE_KAFKA_BROKERS=2; use 1, 3, 5"),
        ({"SLUICE_DEFAULT_REPLICATION_FACTOR": "3"}, "more than the 1 broker"),
        ({"SLUICE_KAFKA_BOOTSTRAP": "kafka-1"}, "'kafka-1' is not host:port"),
        ({"SLUICE_KAFKA_BOOTSTRAP": "k:9092", "SLUICE_KAFKA_CERT_FILE": "/nonexistent.pem"}, "no such file"),
        ({"SLUICE_KAFKA_BOOTSTRAP": "k:9092", "SLUICE_KAFKA_CERT_FILE": "/etc/hostname"}, "go together"),
        ({"SLUICE_KAFKA_CA_FILE": "/etc/hostname"}, "without SLUICE_KAFKA_BOOTSTRAP"),
        ({"SLUICE_REGISTRY_URL": "registry:8080"}, "is not an http(s) URL"),
        ({"SLUICE_REGISTRY_URL": "http://r", "SLUICE_REGISTRY_USERNAME": "u"}, "go together"),
        ({"SLUICE_REGISTRY_PASSWORD": "p"}, "without SLUICE_REGISTRY_URL"),
        ({"SLUICE_JWKS_URL": "file:/tmp/jwks.json"}, "is not an http(s) URL"),
    ],
)
def test_bad_cluster_settings_are_named(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_runtime({"SLUICE_STATE_DIR": str(tmp_path), **environ})
