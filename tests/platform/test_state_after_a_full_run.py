"""After a full run -- every part started by the launcher and made to write its files -- nothing
under the state directory that holds data or secrets is open to other users; the public
list (sluicectl.private_state.PUBLIC) is the only exception, and it holds nothing secret."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.platform_pki import PlatformPki
from config.env import BASE_DIR, Runtime, load_runtime
from devices.registry_client import registry_client_for
from ingest.kafka import admin_config, client_config
from sluicectl.launcher import child_env
from sluicectl.private_state import public_rule, too_open, walk
from tests.conftest import unique_slug

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}
# Sent where a careless client might put a secret: in query strings.  It must reach no log.
LEAKED = f"leaked-{secrets.token_hex(8)}"
# A value in records' payloads, accepted and refused: no log may hold a record's payload.
PAYLOAD = f"payload-{secrets.token_hex(8)}"
# A bearer token nobody issued, refused by ingest: no log may hold a presented credential.
FORGED = f"forged-{secrets.token_hex(16)}"


class Platform:
    """``sluice up`` (the launcher ``platform/bin/sluice`` hands over to) on a scratch state
    directory and port offset; its output is drained by a thread once it is ready."""

    def __init__(self, state: Path, offset: int) -> None:
        self.env = child_env({
            "SLUICE_ENV": "development", "SLUICE_STATE_DIR": str(state), "SLUICE_PORT_OFFSET": str(offset),
            "SLUICE_DEFAULT_PARTITIONS": "2", "SLUICE_WORKER_CONCURRENCY": "1", "SLUICE_WEB_WORKERS": "1",
        })  # fmt: skip
        self.runtime = load_runtime(self.env)
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluicectl", "up"], env=self.env, cwd=BASE_DIR,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append("[password withheld]\n" if "password" in line.lower() else line)
            if "ready in" in line:
                self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            pytest.fail("the platform never became ready:\n" + "".join(self.output[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def manage(self, *args: str) -> str:
        result = subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], env=self.env, cwd=BASE_DIR,
                                capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        return result.stdout.strip()


@dataclass(frozen=True)
class Exercised:
    """A platform that every part has written to, then stopped; and the secrets it was given."""

    platform: Platform
    tenant: str
    secrets: dict[str, str]
    refused_api_status: int


@pytest.fixture(scope="module")
def exercised(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exercised]:
    # Beside this run's own state directory (so nginx's workers can pass through its parents,
    # as they would in var/data), on this run's port offset + 500.
    state = runtime.state_dir.parent / f"full-run-{secrets.token_hex(4)}"
    offset = int(runtime.environ.get("SLUICE_PORT_OFFSET", "10000")) + 500
    started = Platform(state, offset)
    try:
        started.wait_ready(timeout=240)
        tenant, refused, given = exercise(started, tmp_path_factory.mktemp("full-run"))
        started.stop()
        yield Exercised(started, tenant, given, refused)
    finally:
        started.stop()
        shutil.rmtree(state, ignore_errors=True)


class Https:
    """The scratch platform's HTTPS listener, with an optional client certificate."""

    def __init__(self, runtime: Runtime, certificate: tuple[Path, Path] | None = None) -> None:
        self.base = f"https://127.0.0.1:{runtime.ports.web}"
        self.context = ssl.create_default_context(cafile=str(PlatformPki(runtime.pki_dir).trust_bundle))
        if certificate is not None:
            self.context.load_cert_chain(*certificate)

    def __call__(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                 form: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
        data = form if form is not None else (json.dumps(body).encode() if body is not None else None)
        kind = "application/x-www-form-urlencoded" if form is not None else "application/json"
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method,  # noqa: S310
                                         headers={"Content-Type": kind, **(headers or {})})  # fmt: skip
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:  # noqa: S310
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw


def eventually(what: str, attempt: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``attempt()``'s first truthy answer (Celery provisions topics and ACLs after commit)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = attempt()
        if last and last[0] is True:
            return last
        time.sleep(1)
    pytest.fail(f"{what} did not happen within {timeout:.0f} s; last answer: {last}")


def exercise(platform: Platform, tmp_path: Path) -> tuple[str, int, dict[str, str]]:
    """Make every part write: the database, Celery (topics, ACLs, beat's schedule), Kafka,
    the registry, Redis (rate limits), the PKI and CRLs, the token keys, nginx's logs.
    Returns the tenant, the status of an API call it had refused, and every secret it
    handed over (none of them may reach a log)."""
    rt = platform.runtime
    token = platform.manage("sluice_token", "admin")
    admin = {"Authorization": f"Bearer {token}"}
    api = Https(rt)
    tenant = unique_slug("walk")
    assert api("POST", "/api/v1/tenants/", {"slug": tenant, "name": "Walk"}, headers=admin)[0] == 201
    status, stream = api("POST", f"/api/v1/tenants/{tenant}/streams/", {"region": "eu", "type": "temp"}, headers=admin)
    assert status == 201, stream
    topic = f"iot.{tenant}.eu.temp"
    subject = f"{topic}-value"
    registry_client_for(rt).register_schema(subject, Schema(json.dumps(SCHEMA), "JSON"))
    group = {"slug": "thermo", "region": "eu", "device_type": "temp", "stream": stream["id"],
             "schema_subject": subject, "credential_policy": "both", "kafka_direct": True}  # fmt: skip
    assert api("POST", f"/api/v1/tenants/{tenant}/groups/", group, headers=admin)[0] == 201
    device_body = {"device_id": "d1", "group": "thermo"}
    assert api("POST", f"/api/v1/tenants/{tenant}/devices/", device_body, headers=admin)[0] == 201

    # a device certificate, from a key that never leaves the device
    key = ec.generate_private_key(ec.SECP256R1())
    subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject_name)
    csr_pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    status, issued = api("POST", f"/api/v1/tenants/{tenant}/devices/d1/certificates/", {"csr": csr_pem}, headers=admin)
    assert status == 201, issued
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()  # fmt: skip
    (tmp_path / "d1.crt").write_text(issued["chain_pem"])
    (tmp_path / "d1.key").write_text(key_pem)

    # ingest over mTLS, once Celery has created the topic
    device = Https(rt, (tmp_path / "d1.crt", tmp_path / "d1.key"))

    def ingest() -> tuple[bool, Any]:
        answer = device("POST", "/ingest/v1/records", {"records": [{"celsius": 21.5, "note": PAYLOAD}]})
        return (answer[0] == 200, answer)

    eventually("an ingest POST over mTLS", ingest)
    # refused: a record the schema does not allow (its value is the payload marker), and
    # a token nobody issued
    status, refusal = device("POST", "/ingest/v1/records", {"records": [{"celsius": PAYLOAD}]})
    assert status == 422, refusal
    assert api("POST", "/ingest/v1/records", {"celsius": 1.0}, headers={"Authorization": f"Bearer {FORGED}"})[0] == 401
    # and an API call refused (a second tenant with the same slug)
    refused, answer = api("POST", "/api/v1/tenants/", {"slug": tenant, "name": "Again"}, headers=admin)
    assert refused in (400, 409), answer

    # a token (client credentials), used on ingest
    body = {"kind": "device", "name": "d1", "device": "d1", "scopes": ["ingest:write", "kafka:produce"]}
    status, client = api("POST", f"/api/v1/tenants/{tenant}/oauth-clients/", body, headers=admin)
    assert status == 201, client
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    status, issued_token = api("POST", "/oauth/token", form=b"grant_type=client_credentials",
                               headers={"Authorization": f"Basic {basic}"})  # fmt: skip
    assert status == 200, issued_token
    bearer = {"Authorization": f"Bearer {issued_token['access_token']}"}
    assert api("POST", "/ingest/v1/records", {"celsius": 22.0}, headers=bearer)[0] == 200

    # secrets where they never belong: query strings
    api("GET", f"/api/v1/tenants/?access_token={LEAKED}")
    api("POST", f"/oauth/token?client_secret={LEAKED}", form=b"grant_type=client_credentials")
    # the console's static files are served by nginx's workers (public by design)
    assert api("GET", "/static/admin/css/base.css")[0] == 200

    # Kafka directly with the device's certificate, once Celery has granted the group's ACL
    producer = Producer({**client_config(rt, certificate_pem=issued["chain_pem"], key_pem=key_pem),
                         "enable.idempotence": True, "acks": "all"})  # fmt: skip

    def produce() -> tuple[bool, Any]:
        reports: list[Any] = []
        producer.produce(topic, b"direct", on_delivery=lambda error, _message: reports.append(error))
        producer.flush(15)
        return (reports == [None], reports)

    eventually("a Kafka produce with the device's certificate", produce)
    # and read back by a consumer group (its committed offset lands in __consumer_offsets)
    consumer = Consumer({**admin_config(rt), "group.id": unique_slug("walk"), "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    read: list[Any] = []
    deadline = time.monotonic() + 60
    while len(read) < 3 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and not message.error():
            read.append(message)
    assert len(read) == 3, read
    consumer.commit(asynchronous=False)
    consumer.close()
    return (
        tenant,
        refused,
        {
            "admin token": token,
            "device key": key_pem,
            "device key body": key_pem.splitlines()[1],
            "CSR body": csr_pem.splitlines()[1],
            "client secret": client["client_secret"],
            "access token": issued_token["access_token"],
            "forged token": FORGED,
            "payload": PAYLOAD,
            "query-string secret": LEAKED,
        },
    )


def test_a_full_run_leaves_nothing_private_open_to_other_users(exercised: Exercised) -> None:
    # given a complete platform that every part has written to, then stopped
    platform = exercised.platform
    assert platform.proc.returncode == 0, "".join(platform.output[-20:])
    state = platform.runtime.state_dir

    # when its state directory is walked
    seen: set[str] = set()
    open_private: list[str] = []
    for path, info in walk(state):
        relative = "." if path == state else path.relative_to(state).as_posix()
        seen.add(relative.split("/")[0])
        if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
            continue
        if public_rule(relative) is None:
            open_private.append(f"{relative} {stat.S_IMODE(info.st_mode):04o}")

    # then every part wrote there, and nothing but the public list is open to group or others
    assert {"db.sqlite3", "kafka", "registry", "redis", "secrets", "pki", "oauth", "logs", "crl", "static",
            "oauth-public", "public-sockets", "pki-public"} <= seen, sorted(seen)  # fmt: skip
    assert any(name.startswith("celerybeat-schedule") for name in seen), sorted(seen)
    assert open_private == []
    # and the launcher would start on it again as it is
    assert too_open(platform.runtime) == []

    # and what is public holds nothing secret: CRLs, public keys, static files, the socket
    assert {p.suffix for p in (state / "crl").iterdir()} <= {".crl", ".pem"}
    jwks = json.loads((state / "oauth-public" / "jwks.json").read_text())
    assert jwks["keys"]
    assert all("d" not in key for key in jwks["keys"])
    assert [p.name for p in (state / "public-sockets").iterdir()] in ([], ["web.sock"])
    assert [p.name for p in (state / "pki-public").iterdir()] == ["root-ca.crt"]
    assert (state / "pki-public" / "root-ca.crt").read_bytes() == (state / "pki" / "root-ca.crt").read_bytes()

    # and no log kept the secret sent in query strings
    for path, info in walk(state / "logs"):
        if stat.S_ISREG(info.st_mode):
            assert LEAKED.encode() not in path.read_bytes(), path
    access_log = (state / "logs" / "nginx-access.log").read_text()
    assert '"GET /api/v1/tenants/ HTTP/1.1" ' in access_log


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of one process's log (the launcher's start markers left out)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_the_logs_are_json_lines_with_the_refusals_and_actions_and_no_secret(exercised: Exercised) -> None:
    # given a complete platform that every part has written to, then stopped
    logs = exercised.platform.runtime.state_dir / "logs"
    tenant = exercised.tenant

    # then no log file holds a secret, a private key, a token or a record's payload
    files = [path for path, info in walk(logs) if stat.S_ISREG(info.st_mode)]
    assert {"launcher.log", "web.log", "ingest.log", "worker.log", "beat.log"} <= {p.name for p in files}
    for path in files:
        text = path.read_bytes()
        assert b"PRIVATE KEY" not in text, path
        for what, value in exercised.secrets.items():
            assert value.encode() not in text, f"{what} in {path}"

    # and every Sluice process wrote JSON lines: time, level, logger, message, process
    for name in ("launcher", "web", "ingest", "worker", "beat"):
        lines = json_lines(logs / f"{name}.log")
        assert lines, name
        for line in lines:
            assert {"time", "level", "logger", "message", "process"} <= line.keys(), line
    assert any(line["message"] == "starting web" for line in json_lines(logs / "launcher.log"))

    # and ingest's refusals are there, one line each: with the device when it was known
    refusals = [line for line in json_lines(logs / "ingest.log") if line.get("outcome") == "refused"]
    schema = [line for line in refusals if line.get("status") == 422]
    assert len(schema) == 1, refusals
    expected = {"tenant": tenant, "group": "thermo", "device": "d1", "level": "INFO", "outcome": "refused"}
    assert {key: schema[0].get(key) for key in expected} == expected, schema
    assert schema[0]["request_id"], schema
    assert schema[0]["code"], schema
    forged = [line for line in refusals if line.get("status") == 401]
    assert len(forged) == 1, refusals
    assert forged[0]["request_id"], forged
    assert "device" not in forged[0], forged

    # and every provisioning action: action, actor, tenant, object kind and id, outcome
    web = json_lines(logs / "web.log")
    actions = {
        line["action"]: line for line in web if line.get("logger") == "sluice.audit" and line["tenant"] == tenant
    }
    for action in ("tenant.create", "stream.create", "group.create", "device.create", "certificate.issue",
                   "oauth_client.create"):  # fmt: skip
        assert action in actions, sorted(actions)
        line = actions[action]
        assert {"actor": line["actor"], "outcome": line["outcome"]} == {"actor": "admin", "outcome": "done"}, line
        assert all(line.get(key) for key in ("object_type", "object_id", "request_id")), line
    # and the refused API call, with its code
    refused = [line for line in web if line.get("outcome") == "refused" and line.get("view")]
    assert any(line["status"] == exercised.refused_api_status for line in refused), refused
