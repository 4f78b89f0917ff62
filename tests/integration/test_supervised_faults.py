"""Every part of a platform started by ``sluice up`` killed in turn (``kill -9``) under light
HTTPS ingest: the launcher restarts it, the rest keeps serving, the platform is whole again
within 30 s of the part's return, and no request that got a 200 is missing from Kafka.

While the registry is away, ingest keeps validating with the schema it holds (200) and
refuses only a subject it never read (503 ``registry_unavailable`` + Retry-After); /healthz
names the part that is down.  Bounded: about 4-6 minutes on 2 busy cores, most of it the
JVMs starting again (the platform itself ~60 s, Kafka ~20 s, the registry ~30 s)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import Schema
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.platform_pki import PlatformPki
from config.env import Runtime
from devices.registry_client import registry_client_for
from ingest.kafka import admin_config
from sluicectl.launcher import ORDER
from tests.conftest import unique_slug
from tests.platform.test_state_after_a_full_run import Https, Platform, eventually

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}
# From the part's return (the launcher says it runs again) to the whole platform answering.
RECOVERY_BOUND = 30.0
# From the kill to the part's return: the registry's JVM is the slowest to start.
RETURN_BOUND = 150.0


@dataclass
class Answer:
    request_id: str
    status: int  # 0: no HTTP answer at all (the connection was refused or broke)
    code: str | None
    retry_after: str | None


class Device:
    """A device's HTTPS client (its own certificate), one connection per request."""

    def __init__(self, runtime: Runtime, chain: Path, key: Path) -> None:
        self.url = f"https://127.0.0.1:{runtime.ports.web}/ingest/v1/records"
        self.context = ssl.create_default_context(cafile=str(PlatformPki(runtime.pki_dir).trust_bundle))
        self.context.load_cert_chain(chain, key)

    def post(self, request_id: str, record: dict[str, Any]) -> Answer:
        body = json.dumps({"records": [record]}).encode()
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:  # noqa: S310
                return Answer(request_id, response.status, None, None)
        except urllib.error.HTTPError as exc:
            try:
                code = json.loads(exc.read())["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "not-json"
            return Answer(request_id, exc.code, code, exc.headers.get("Retry-After"))
        except (OSError, ssl.SSLError):
            return Answer(request_id, 0, None, None)


@dataclass
class Load:
    """One device sending one record every 100 ms, each request with its own id."""

    device: Device
    answers: list[Answer] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        prefix = secrets.token_hex(4)
        n = 0
        while not self.stopping.is_set():
            n += 1
            self.answers.append(self.device.post(f"load-{prefix}-{n:06d}", {"celsius": n / 10}))
            time.sleep(0.1)

    def ok_since(self, since: int) -> bool:
        return any(a.status == 200 for a in self.answers[since:])


def supervision(platform: Platform) -> dict[str, dict[str, Any]]:
    path = platform.runtime.run_dir / "launcher.json"
    for _ in range(20):
        try:
            return json.loads(path.read_text())["supervision"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)  # being replaced this instant
    pytest.fail(f"no readable supervision in {path}")


def healthz(platform: Platform) -> tuple[int, dict[str, Any]]:
    status, report = Https(platform.runtime)("GET", "/healthz")
    return status, report if isinstance(report, dict) else {}


def device_credential(api: Https, admin: dict[str, str], tenant: str, device: str, folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    status, issued = api("POST", f"/api/v1/tenants/{tenant}/devices/{device}/certificates/", {"csr": pem},
                         headers=admin)  # fmt: skip
    assert status == 201, issued
    chain, key_path = folder / f"{device}.crt", folder / f"{device}.key"
    chain.write_text(issued["chain_pem"])
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return chain, key_path


@pytest.fixture
def platform(runtime: Runtime) -> Iterator[Platform]:
    state = runtime.state_dir.parent / f"faults-{secrets.token_hex(4)}"
    offset = int(runtime.environ.get("SLUICE_PORT_OFFSET", "10000")) + 700
    started = Platform(state, offset)
    try:
        started.wait_ready(timeout=240)
        yield started
    finally:
        started.stop()
        shutil.rmtree(state, ignore_errors=True)


# The platform's start (up to 240 s on a loaded machine) and eight kills, each bounded.
@pytest.mark.timeout(1200)
def test_every_part_killed_in_turn_comes_back_and_no_acknowledged_record_is_lost(
    platform: Platform, tmp_path: Path
) -> None:
    rt = platform.runtime
    api = Https(rt)
    admin = {"Authorization": f"Bearer {platform.manage('sluice_token', 'admin')}"}
    # given a tenant with two streams, each with its schema, a group and a device
    tenant = unique_slug("fault")
    assert api("POST", "/api/v1/tenants/", {"slug": tenant, "name": "Faults"}, headers=admin)[0] == 201
    devices: dict[str, Device] = {}
    topics: dict[str, str] = {}
    for kind, device in (("temp", "d1"), ("humid", "d2")):
        status, stream = api("POST", f"/api/v1/tenants/{tenant}/streams/", {"region": "eu", "type": kind},
                             headers=admin)  # fmt: skip
        assert status == 201, stream
        topics[device] = f"iot.{tenant}.eu.{kind}"
        subject = f"{topics[device]}-value"
        registry_client_for(rt).register_schema(subject, Schema(json.dumps(SCHEMA), "JSON"))
        group = {"slug": f"g-{kind}", "region": "eu", "device_type": kind, "stream": stream["id"],
                 "schema_subject": subject}  # fmt: skip
        assert api("POST", f"/api/v1/tenants/{tenant}/groups/", group, headers=admin)[0] == 201
        body = {"device_id": device, "group": f"g-{kind}"}
        assert api("POST", f"/api/v1/tenants/{tenant}/devices/", body, headers=admin)[0] == 201
        devices[device] = Device(rt, *device_credential(api, admin, tenant, device, tmp_path))
    # and d1 sending (Celery has created its topic), while d2 has not sent anything yet
    eventually("d1's first record", lambda: (devices["d1"].post(f"first-{secrets.token_hex(4)}", {"celsius": 1})
                                             .status == 200, None))  # fmt: skip
    load = Load(devices["d1"])
    sender = threading.Thread(target=load.run, daemon=True)
    sender.start()
    timeline: list[str] = []
    try:
        running = supervision(platform)
        parts = [name for name in ORDER if name in running]  # one broker here: "kafka"
        assert len(parts) == 12, parts  # with Prometheus, Mosquitto, its auth process and the bridge (`sluice up`)
        for name in parts:
            before = supervision(platform)[name]
            mark = len(load.answers)
            # when the part is killed outright
            os.kill(before["pid"], signal.SIGKILL)
            killed = time.monotonic()

            if name == "registry":
                # then, while it is away, d1's known subject is still validated and written...
                time.sleep(2)
                assert supervision(platform)["registry"]["state"] != "running"
                assert devices["d1"].post(f"reg-{secrets.token_hex(4)}", {"celsius": 2}).status == 200
                # ...a subject no worker has read is refused, to retry later...
                unknown = devices["d2"].post(f"reg-{secrets.token_hex(4)}", {"celsius": 3})
                assert (unknown.status, unknown.code, unknown.retry_after) == (503, "registry_unavailable", "5")
                # ...and /healthz names the registry as down, and as restarting
                status, report = healthz(platform)
                assert status == 503, report
                assert report["components"]["registry"]["status"] == "down"
                assert report["processes"]["registry"]["state"] in ("restarting", "starting")
                assert report["processes"]["registry"]["last_exit"].startswith("killed by SIGKILL")

            # then the launcher starts it again, under a new pid
            deadline = killed + RETURN_BOUND
            now = supervision(platform)[name]
            while time.monotonic() < deadline and not (now["restarts"] == 1 and now["state"] == "running"):
                time.sleep(0.5)
                now = supervision(platform)[name]
            assert now["state"] == "running", f"{name} not back within {RETURN_BOUND:.0f} s: {now}"
            assert now["pid"] != before["pid"]
            back = time.monotonic()
            # and within 30 s of its return the whole platform answers, and ingest writes again
            while time.monotonic() < back + RECOVERY_BOUND:
                if healthz(platform)[0] == 200 and load.ok_since(max(mark, len(load.answers) - 3)):
                    break
                time.sleep(0.5)
            recovered = time.monotonic()
            status, report = healthz(platform)
            assert status == 200, f"{name}: /healthz {RECOVERY_BOUND:.0f} s after its return: {report}"
            assert load.ok_since(mark), f"{name}: no 200 since the kill"
            timeline.append(f"{name}: back {back - killed:.1f} s after the kill, whole {recovered - back:.1f} s later")
    finally:
        load.stopping.set()
        sender.join(timeout=60)

    # then every request that got a 200 is on the topic (by its request id), and every
    # refusal on the way was a 503 with Retry-After or no answer at all: never a 2xx
    # for data that was not written
    consumer = Consumer({**admin_config(rt), "group.id": unique_slug("faults"), "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})  # fmt: skip
    partitions = consumer.list_topics(topics["d1"], timeout=10).topics[topics["d1"]].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topics["d1"], p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topics["d1"], p, 0) for p in partitions])
    found: Counter[str] = Counter()
    deadline = time.monotonic() + 60
    done = {p for p, end in ends.items() if end == 0}
    while len(done) < len(ends) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        found[dict(message.headers() or [])["sluice-request-id"].decode()] += 1
        if message.offset() + 1 >= ends[message.partition()]:
            done.add(message.partition())
    consumer.close()
    answers = load.answers
    acknowledged = {a.request_id for a in answers if a.status == 200}
    missing = acknowledged - set(found)
    outcomes = Counter(f"{a.status} {a.code or ''}".strip() for a in answers)
    report = (f"sent {len(answers)}, 200 {len(acknowledged)}, outcomes {dict(outcomes)}, found {len(found)}, "
              f"missing {len(missing)}, written twice {sum(1 for n in found.values() if n > 1)}; "
              + "; ".join(timeline))  # fmt: skip
    print(report)
    assert len(acknowledged) > len(parts) * 10, report
    assert not missing, report
    assert all(a.status in (0, 200) or (a.status == 503 and a.retry_after) for a in answers), report
    assert not [a for a in answers if 200 < a.status < 300], report
