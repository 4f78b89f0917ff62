"""Throughput, latency and CPU cost of HTTPS ingest (``POST /ingest/v1/records``), side by side
with the ceiling: a plain idempotent ``acks=all`` producer writing the same records to the
same topic.

Starts its own platform (``platform/bin/sluice up``) on a scratch state directory and port
offset, so the user's platform is untouched, and stops it with SIGINT at the end (also on
error).  Provisions through the Django services: a tenant with quotas that never throttle,
a stream with a JSON Schema value schema in the registry, a device group with a high
``rate_limit_per_second``, one device per client connection and a certificate for each.

Then, in one run, with the ceiling measured before and after Sluice so that drift on a noisy
machine shows (ratios use their mean):

* the direct producer (ceiling): one process with
  Sluice's own ingest producer settings (``ingest.kafka.ingest_producer_config``: platform
  admin certificate, idempotent, ``acks=all``, ``linger.ms=5``) producing the exact bytes
  Sluice writes (Confluent wire format, same key set, same four headers) without waiting
  record by record -> records/s and its own CPU seconds (``getrusage``);
* Sluice, per shape (records per request): ``--clients`` concurrent clients spread over
  ``--client-procs`` processes, each a keep-alive HTTP/1.1 mTLS connection with its own
  device certificate, sending back to back -> records/s, request latency p50/p99, and the
  CPU seconds of the server side (uvicorn workers + nginx; ``psutil`` over the launcher's
  process tree, reaped children included) -> records per server CPU-second.

Every run has a warm-up (connections open, schema cached, producer connected) before a
measured window of ``--duration`` seconds; an idle window shows the server's CPU without
traffic.  The clients run on the same machine and compete
with the server for its cores; their CPU is reported too.  Writes a Markdown report:

    .venv/bin/python bench/ingest.py --out bench/results/ingest.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing
import os
import resource
import secrets
import select
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
# The project's modules (config, ingest, ...) come first in every process, never this file's
# directory: there ``import ingest`` would find this file instead of the ``ingest`` app.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench"))]

PATH = "/ingest/v1/records"
QUOTA = 2_000_000_000  # tenant records/s and bytes/s: far above anything one machine sends
SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "celsius": {"type": "number"},
        "humidity": {"type": "number", "minimum": 0, "maximum": 100},
        "battery": {"type": "integer"},
        "site": {"type": "string"},
    },
    "required": ["celsius", "site"],
}
RECORD: dict[str, Any] = {"celsius": 21.5, "humidity": 48.25, "battery": 87, "site": "berlin-mitte-0042"}


# -- the platform ------------------------------------------------------------------------


class Platform:
    """``platform/bin/sluice up`` on a scratch state directory, read until "ready in"; its
    output is drained by a thread afterwards (a full pipe would block the launcher)."""

    def __init__(self, state: Path, offset: int) -> None:
        self.env = dict(os.environ, SLUICE_STATE_DIR=str(state), SLUICE_PORT_OFFSET=str(offset))
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 300.0) -> float:
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [str(ROOT / "platform" / "bin" / "sluice"), "up"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        while time.monotonic() - began < timeout:
            readable, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if not readable:
                continue
            line = self.proc.stdout.readline()
            self._keep(line)
            if "ready in" in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return time.monotonic() - began
            if line == "" and self.proc.poll() is not None:
                break
        raise RuntimeError("platform never became ready:\n" + "".join(self.output[-40:]))

    def _keep(self, line: str) -> None:
        # The first start prints the one-time admin password; never keep it.
        self.output.append("[password line withheld]\n" if "password" in line.lower() else line)

    def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._keep(line)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def cpu_by_part(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of every process under the launcher, by part.
        Reaped children count for the parent that reaped them (nginx reloads replace
        workers), so deltas between two calls are right even if processes come and go."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        tree = [root, *root.children(recursive=True)]
        web_roots = {p.pid for p in tree if "uvicorn" in _cmdline(p)}
        parts: dict[str, float] = {}
        for proc in tree:
            try:
                cmd = _cmdline(proc)
                times = proc.cpu_times()
                ancestors = {a.pid for a in proc.parents()}
            except psutil.Error:
                continue
            if proc.pid in web_roots or ancestors & web_roots:
                part = "web"
            else:
                part = next((name for key, name in PARTS if key in cmd), "other")
            used = times.user + times.system + times.children_user + times.children_system
            parts[part] = parts.get(part, 0.0) + used
        return parts


PARTS = (("kafka.Kafka", "kafka"), ("GeneratedMain", "registry"), ("redis-server", "redis"), ("celery", "celery"),
         ("nginx", "nginx"), ("sluicectl", "launcher"))  # fmt: skip


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return ""


# -- provisioning (Django services, in this process) -------------------------------------


@dataclass(frozen=True)
class Provisioned:
    topic: str
    partitions: int
    device_ids: list[str]
    credentials: list[tuple[str, str]]  # (chain PEM file, key PEM file) per device
    ca_file: str
    port: int
    wire_value: bytes  # what Sluice writes to Kafka for RECORD


def provision(env: dict[str, str], workdir: Path, devices: int, partitions: int | None) -> Provisioned:
    """Tenant, stream + schema, group, devices and certificates, through the services."""
    os.environ.update({k: env[k] for k in ("SLUICE_STATE_DIR", "SLUICE_PORT_OFFSET")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the registry client logs every call
    from django.conf import settings

    from certs.platform_pki import PlatformPki
    from certs.services import certificate_issue_generated
    from devices.models import Stream
    from devices.services import device_create, group_create, stream_provision, stream_with_schema_create
    from ingest import records
    from ingest.registry import latest_schema
    from tenants.audit import Actor
    from tenants.services import tenant_create

    runtime = settings.SLUICE_RUNTIME
    actor = Actor.system("bench")
    tenant = tenant_create(actor=actor, slug=f"bench-{secrets.token_hex(3)}", name="Ingest benchmark",
                           max_records_per_second=QUOTA, max_bytes_per_second=QUOTA)  # fmt: skip
    extra = {"partitions": partitions} if partitions else {}
    stream, subject, _ = stream_with_schema_create(
        actor=actor, tenant=tenant, schema_type="JSON", schema=json.dumps(SCHEMA), region="eu", type="meter", **extra
    )
    # The Celery worker provisions the topic after commit; doing it here too is idempotent
    # (ensure_topic aligns a topic created meanwhile) and means it exists before we send.
    stream_provision(stream=stream)
    stream = Stream.objects.get(pk=stream.pk)
    group = group_create(actor=actor, tenant=tenant, stream=stream, slug="meters", region="eu", device_type="meter",
                         schema_subject=subject, rate_limit_per_second=QUOTA)  # fmt: skip
    device_ids, credentials = [], []
    for i in range(devices):
        device = device_create(actor=actor, tenant=tenant, group=group, device_id=f"meter-{i:04d}")
        issued = certificate_issue_generated(actor=actor, device=device, passphrase=secrets.token_urlsafe(16))
        chain, key = workdir / f"{device.device_id}.pem", workdir / f"{device.device_id}.key"
        chain.write_text(issued.chain_pem)
        key.write_text(issued.key_pem or "")
        key.chmod(0o600)
        device_ids.append(device.device_id)
        credentials.append((str(chain), str(key)))
    value = records.wire_value(RECORD, latest_schema(subject))
    return Provisioned(
        topic=stream.topic,
        partitions=stream.partitions,
        device_ids=device_ids,
        credentials=credentials,
        ca_file=str(PlatformPki(runtime.pki_dir).trust_bundle),
        port=runtime.ports.web,
        wire_value=value,
    )


def body_for(records_per_request: int) -> bytes:
    if records_per_request == 1:
        return json.dumps(RECORD).encode()
    return json.dumps({"records": [RECORD] * records_per_request}).encode()


def _context(ca_file: str, chain: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(chain, key)
    return context


def _post(conn: http.client.HTTPSConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", PATH, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def wait_until_accepting(prov: Provisioned, deadline_s: float = 90.0) -> None:
    """Every device gets a 200: its tenant CA's CRL is in nginx's bundle, the schema is
    found, Kafka has leaders for the topic.  Fails with the last answer otherwise."""
    deadline = time.monotonic() + deadline_s
    body = body_for(1)
    for chain, key in prov.credentials:
        last = ""
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", prov.port, context=_context(prov.ca_file, chain, key),
                                                   timeout=30)  # fmt: skip
                status, payload = _post(conn, body)
                conn.close()
                if status == 200:
                    break
                last = f"{status} {payload[:300]!r}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest never accepted a record for {chain}: {last}")
            time.sleep(1.0)


# -- measured runs (each in its own processes) -------------------------------------------


@dataclass
class Window:
    """A measured interval in wall-clock time, shared by every process of one run."""

    start_at: float
    end_at: float

    @property
    def seconds(self) -> float:
        return self.end_at - self.start_at


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread, librdkafka's included
    return usage.ru_utime + usage.ru_stime


def _sleep_until(when: float) -> None:
    while (left := when - time.time()) > 0:
        time.sleep(min(left, 0.5))


def client_process(spec: dict[str, Any]) -> dict[str, Any]:
    """One client process: a thread per connection, each POSTing ``body`` back to back."""
    window = Window(spec["start_at"], spec["end_at"])
    body: bytes = spec["body"]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    connects = [0]
    lock = threading.Lock()

    def connection(chain: str, key: str) -> None:
        context = _context(spec["ca_file"], chain, key)
        conn: http.client.HTTPSConnection | None = None
        mine: list[float] = []
        seen: Counter[str] = Counter()
        while True:
            began = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("127.0.0.1", spec["port"], context=context, timeout=60)
                    conn.connect()
                    seen["connect"] += 1
                status, _ = _post(conn, body)
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                status_text = type(exc).__name__
                time.sleep(0.1)
            else:
                status_text = str(status)
                if conn.sock is None:  # the server ended keep-alive (keepalive_requests); reconnect
                    conn = None
            done = time.time()
            if window.start_at <= done <= window.end_at:
                seen[status_text] += 1
                if status_text == "200":
                    mine.append((time.perf_counter() - began) * 1000)
            if done > window.end_at:
                break
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(mine)
            statuses.update({k: v for k, v in seen.items() if k != "connect"})
            connects[0] += seen["connect"]

    threads = [threading.Thread(target=connection, args=pair) for pair in spec["credentials"]]
    for thread in threads:
        thread.start()
    _sleep_until(window.start_at)
    cpu_start = _self_cpu()
    _sleep_until(window.end_at)
    cpu = _self_cpu() - cpu_start
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "statuses": dict(statuses), "cpu": cpu, "connects": connects[0]}


def direct_process(spec: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: Sluice's own producer settings, no HTTP, no waiting per record."""
    os.environ.update(spec["env"])
    from confluent_kafka import Producer

    from config.env import load_runtime
    from ingest.kafka import ingest_producer_config

    window = Window(spec["start_at"], spec["end_at"])
    producer = Producer(ingest_producer_config(load_runtime()))
    counts = {"acked": 0, "failed": 0}

    def on_delivery(error: Any, _message: Any) -> None:
        counts["failed" if error is not None else "acked"] += 1

    keys = [k.encode() for k in spec["device_ids"]]
    value: bytes = spec["value"]
    headers = [("sluice-tenant", spec["tenant"].encode()), ("sluice-group", b"meters"), ("sluice-device", b""),
               ("sluice-request-id", b"")]  # fmt: skip
    start: tuple[int, float, float] | None = None
    end: tuple[int, float, float] | None = None
    produced = loops = 0
    while end is None:
        loops += 1
        key = keys[produced % len(keys)]
        headers[2] = ("sluice-device", key)
        headers[3] = ("sluice-request-id", uuid.uuid4().hex.encode())
        try:
            producer.produce(spec["topic"], key=key, value=value, headers=headers, on_delivery=on_delivery)
            produced += 1
        except BufferError:  # the local queue is full: serve delivery reports, then go on
            producer.poll(0.005)
        if loops % 100 == 0:
            producer.poll(0)
            now = time.time()
            if start is None and now >= window.start_at:
                start = (counts["acked"], _self_cpu(), now)
            elif start is not None and now >= window.end_at:
                end = (counts["acked"], _self_cpu(), now)
    remaining = producer.flush(60)
    assert start is not None
    # One record at a time, waiting for each acknowledgement: what a single-record request
    # waits for at the least (linger.ms, the broker's append, the acks=all answer).
    round_trips: list[float] = []
    for i in range(spec["round_trips"]):
        began = time.perf_counter()
        acked_before = counts["acked"]
        producer.produce(spec["topic"], key=keys[i % len(keys)], value=value, headers=headers, on_delivery=on_delivery)
        while counts["acked"] == acked_before:
            producer.poll(0.001)
        round_trips.append((time.perf_counter() - began) * 1000)
    return {
        "round_trips": round_trips,
        "records": end[0] - start[0],
        "seconds": end[2] - start[2],
        "cpu": end[1] - start[1],
        "failed": counts["failed"],
        "unflushed": remaining,
    }


@dataclass
class Result:
    name: str
    kind: str  # "direct" or "sluice"
    records_per_request: int
    clients: int
    seconds: float
    records: int
    requests: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    statuses: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # part -> CPU seconds in the window
    connects: int = 0
    note: str = ""

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds

    @property
    def measured_cpu(self) -> float:
        """Sluice: its server side (web + nginx); direct: the producer process."""
        if self.kind == "direct":
            return self.cpu["producer"]
        return self.cpu.get("web", 0.0) + self.cpu.get("nginx", 0.0)

    @property
    def per_cpu_second(self) -> float:
        return self.records / self.measured_cpu if self.measured_cpu > 0 else float("nan")

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measured_window(warmup: float, duration: float) -> Window:
    start = time.time() + warmup
    return Window(start, start + duration)


def run_direct(platform: Platform, prov: Provisioned, tenant: str, warmup: float, duration: float, name: str,
               round_trips: int = 0) -> Result:  # fmt: skip
    window = measured_window(warmup + 2.0, duration)  # + process start and first metadata
    spec = {"env": {k: platform.env[k] for k in ("SLUICE_STATE_DIR", "SLUICE_PORT_OFFSET")},
            "start_at": window.start_at, "end_at": window.end_at, "device_ids": prov.device_ids,
            "value": prov.wire_value, "topic": prov.topic, "tenant": tenant, "round_trips": round_trips}  # fmt: skip
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(direct_process, spec)
        _sleep_until(window.start_at)
        before = platform.cpu_by_part()
        _sleep_until(window.end_at)
        after = platform.cpu_by_part()
        out = future.result(timeout=duration + 120)
    cpu = {part: after[part] - before.get(part, 0.0) for part in after}
    cpu["producer"] = out["cpu"]
    note = f"{out['failed']} failed, {out['unflushed']} unflushed" if out["failed"] or out["unflushed"] else ""
    return Result(name=name, kind="direct", records_per_request=1, clients=1, seconds=out["seconds"],
                  records=out["records"], cpu=cpu, note=note, latencies=out["round_trips"])  # fmt: skip


def run_idle(platform: Platform, seconds: float) -> Result:
    """The server side with no traffic (workers' producers connected): the fixed cost."""
    time.sleep(1.0)
    began, before = time.time(), platform.cpu_by_part()
    time.sleep(seconds)
    after, ended = platform.cpu_by_part(), time.time()
    cpu = {part: after[part] - before.get(part, 0.0) for part in after}
    return Result(name="idle (no traffic)", kind="idle", records_per_request=0, clients=0, seconds=ended - began,
                  records=0, cpu=cpu)  # fmt: skip


def run_sluice(platform: Platform, prov: Provisioned, records_per_request: int, procs: int, warmup: float,
               duration: float) -> Result:  # fmt: skip
    window = measured_window(warmup + 1.0, duration)
    body = body_for(records_per_request)
    clients = len(prov.credentials)
    groups = [prov.credentials[i::procs] for i in range(procs)]
    specs = [{"start_at": window.start_at, "end_at": window.end_at, "body": body, "ca_file": prov.ca_file,
              "port": prov.port, "credentials": group} for group in groups if group]  # fmt: skip
    with ProcessPoolExecutor(len(specs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(client_process, spec) for spec in specs]
        _sleep_until(window.start_at)
        before = platform.cpu_by_part()
        _sleep_until(window.end_at)
        after = platform.cpu_by_part()
        outs = [f.result(timeout=duration + 120) for f in futures]
    cpu = {part: after[part] - before.get(part, 0.0) for part in after}
    cpu["clients"] = sum(o["cpu"] for o in outs)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    for out in outs:
        statuses.update(out["statuses"])
        latencies.extend(out["latencies"])
    ok = statuses.get("200", 0)
    errors = {k: v for k, v in statuses.items() if k != "200"}
    note = ("errors: " + ", ".join(f"{k}x{v}" for k, v in sorted(errors.items()))) if errors else ""
    return Result(name=f"Sluice, {records_per_request} record(s)/request", kind="sluice",
                  records_per_request=records_per_request, clients=clients, seconds=window.seconds,
                  records=ok * records_per_request, requests=ok, latencies=latencies, statuses=dict(statuses),
                  cpu=cpu, connects=sum(o["connects"] for o in outs), note=note)  # fmt: skip


# -- report ------------------------------------------------------------------------------


def _ms(result: Result, q: float) -> str:
    return f"{result.percentile(q):.1f} ms" if result.latencies else "-"


def report(results: list[Result], args: argparse.Namespace, prov: Provisioned, command: str) -> str:
    ceilings = [r for r in results if r.kind == "direct"]
    ceiling_rate = sum(r.records_per_second for r in ceilings) / len(ceilings)
    ceiling_per_cpu = sum(r.per_cpu_second for r in ceilings) / len(ceilings)
    sample = next(r for r in results if r.kind == "sluice")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores with `{command}` "
        f"(one machine: platform, clients and producer share the cores; {args.duration:.0f} s measured per run "
        f"after {args.warmup:.0f} s warm-up).",
        "",
        f"Topic `{prov.topic}` ({prov.partitions} partitions, replication 1, one broker); "
        f"{sample.clients} devices, one keep-alive HTTP/1.1 mTLS connection each, over {args.client_procs} client "
        f"processes; {os.environ.get('SLUICE_WEB_WORKERS', '2')} uvicorn workers; record value "
        f"{len(prov.wire_value)} bytes in Kafka (Confluent wire format, JSON), "
        f"{len(body_for(1))} bytes as a single-record body.",
        "",
        "| run | records/s | requests/s | p50 | p99 | CPU-s measured | cores busy | CPU per request "
        "| records per CPU-s | per CPU-s vs ceiling | records/s vs ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.kind == "idle":
            continue
        if r.kind == "direct":
            lines.append(
                f"| {r.name} (producer process) | {r.records_per_second:,.0f} | - | {_ms(r, 0.50)} | {_ms(r, 0.99)} "
                f"| {r.measured_cpu:.1f} "
                f"| {r.measured_cpu / r.seconds:.2f} | - | {r.per_cpu_second:,.0f} "
                f"| {r.per_cpu_second / ceiling_per_cpu:.2f} | {r.records_per_second / ceiling_rate:.2f} |"
            )
        else:
            lines.append(
                f"| {r.name} (web + nginx) | {r.records_per_second:,.0f} | {r.requests / r.seconds:,.0f} "
                f"| {r.percentile(0.50):.1f} ms | {r.percentile(0.99):.1f} ms | {r.measured_cpu:.1f} "
                f"| {r.measured_cpu / r.seconds:.2f} | {r.measured_cpu / max(r.requests, 1) * 1000:.1f} ms "
                f"| {r.per_cpu_second:,.0f} | **{r.per_cpu_second / ceiling_per_cpu:.3f}** "
                f"| {r.records_per_second / ceiling_rate:.3f} |"
            )
    timed = next((r for r in ceilings if r.latencies), None)
    if timed is not None:
        lines += ["", f"Latency in a direct-producer row: {len(timed.latencies)} single records produced one at a "
                  "time after its throughput window, each waiting for its `acks=all` acknowledgement (same "
                  "producer settings as Sluice's; the least a single-record request can take)."]  # fmt: skip
    lines += [
        "",
        "Ratios are to the mean of the two direct-producer runs "
        f"({ceiling_rate:,.0f} records/s, {ceiling_per_cpu:,.0f} records per producer CPU-s).",
        "",
        "CPU seconds by part during each measured window:",
        "",
    ]
    parts = ["web", "nginx", "redis", "kafka", "registry", "celery", "launcher", "other", "clients", "producer"]
    present = [p for p in parts if any(abs(r.cpu.get(p, 0.0)) >= 0.05 for r in results)]
    lines += [
        "| run | " + " | ".join(present) + " | notes |",
        "|---|" + "---|" * (len(present) + 1),
    ]
    for r in results:
        extra = [r.note] if r.note else []
        if r.kind == "sluice":
            extra.append(f"{r.connects} TLS connections")
        lines.append(
            f"| {r.name} | " + " | ".join(f"{r.cpu.get(p, 0.0):.1f}" for p in present) + f" | {'; '.join(extra)} |"
        )
    idle = next((r for r in results if r.kind == "idle"), None)
    if idle is not None:
        busy = [r.measured_cpu / r.seconds for r in results if r.kind == "sluice"]
        lines += ["", f"At idle (no traffic, {idle.seconds:.0f} s) the server side (web + nginx) used "
                  f"{idle.measured_cpu / idle.seconds:.3f} cores, against {min(busy):.2f}-{max(busy):.2f} under load"
                  + (": the CPU above is per-request work, not a fixed background cost."
                     if idle.measured_cpu / idle.seconds < 0.1 * min(busy) else
                     "; a noticeable part of the CPU above is background cost, not per-request work.")]  # fmt: skip
    lines += ["", NOTES.strip()]
    return "\n".join(lines) + "\n"


NOTES = """
What the numbers mean:

* **records per CPU-s** is the cost side: for Sluice, records accepted (HTTP 200, so
  acknowledged by Kafka with `acks=all`) per CPU-second of its server processes (uvicorn
  workers, which include Sluice's own librdkafka producer, plus nginx for TLS and proxying);
  for the ceiling, records acknowledged per CPU-second of a producer process with the same
  settings.  Their ratio (**per CPU-s vs ceiling**) is what HTTPS + mTLS + Django
  (authorisation from the database, Redis rate limits, JSON parsing and schema validation,
  one delivery wait per request) cost against writing to Kafka directly.  Redis and the broker
  are not in either side's CPU; they are in the per-part table.
* **records/s vs ceiling** depends on the machine far more than the per-CPU ratio: the clients
  (TLS, Python) run on the same cores as the server and the broker.
* The ingest view is async: the CPU work of a request (identity in one precompiled query,
  body, one Redis round trip for the rate limits, validation, encoding) runs on one
  long-lived thread per worker, and the `acks=all` round trip (`linger.ms=5`, then the
  broker's append and answer; see the direct-producer latency) is awaited without holding a
  thread, so many requests per worker are in flight and share librdkafka's batches.  What
  is left per request is mostly Django's own ASGI cycle (request signals, body, response)
  and TLS at nginx.  Batches amortise the HTTP request, authorisation and rate limits over
  many records; what is left per record is JSON parsing, schema validation and encoding.
* The direct producer pipelines without waiting per record, which no HTTP request/response
  ingest can do; it is a ceiling, not a like-for-like alternative.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1,50,500", help="records per request, comma-separated")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections (one device each)")
    parser.add_argument("--client-procs", type=int, default=2, help="processes the connections are spread over")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measured window")
    parser.add_argument("--partitions", type=int, help="topic partitions (default: the platform's default)")
    parser.add_argument("--offset", type=int, default=50000, help="SLUICE_PORT_OFFSET of the scratch platform")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    shapes = [int(s) for s in args.shapes.split(",") if s.strip()]
    python = ".venv/bin/python" if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve() else "python"
    command = " ".join([python, "bench/ingest.py", *sys.argv[1:]])
    state = Path(tempfile.mkdtemp(prefix="sluice-bench-ingest-"))
    platform = Platform(state / "data", args.offset)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    results: list[Result] = []
    try:
        ready = platform.start()
        print(f"platform ready in {ready:.1f} s (state {state}, port offset {args.offset})", flush=True)
        began = time.monotonic()
        prov = provision(platform.env, state, args.clients, args.partitions)
        wait_until_accepting(prov)
        tenant = prov.topic.split(".")[1]
        print(f"provisioned {prov.topic} and {len(prov.credentials)} devices in {time.monotonic() - began:.1f} s",
              flush=True)  # fmt: skip

        def done(result: Result) -> None:
            results.append(result)
            if result.kind == "idle":
                print(f"  {result.name}: server side {result.measured_cpu:.2f} CPU-s", flush=True)
                return
            print(f"  {result.name}: {result.records_per_second:,.0f} records/s, {result.measured_cpu:.1f} CPU-s, "
                  f"{result.per_cpu_second:,.0f} records/CPU-s {result.note}", flush=True)  # fmt: skip

        done(run_direct(platform, prov, tenant, args.warmup, args.duration, "direct producer, before", 200))
        for shape in shapes:
            done(run_sluice(platform, prov, shape, args.client_procs, args.warmup, args.duration))
        done(run_idle(platform, min(args.duration, 10.0)))
        done(run_direct(platform, prov, tenant, args.warmup, args.duration, "direct producer, after"))
    finally:
        platform.stop()
        shutil.rmtree(state, ignore_errors=True)
    text = report(results, args, prov, command)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
