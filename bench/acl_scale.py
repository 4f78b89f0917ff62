"""What per-credential Kafka ACLs cost the broker at 1k, 10k and 100k credentials on one topic.

Starts its own platform (``platform/bin/sluice up``) on a scratch state directory and port
offset, and stops it at the end.  Creates one topic and, level by level, WRITE bindings
for ``User:bench.sensors.crt_<n>`` on it (CreateAcls in batches, as the platform admin), so
that at each level the topic holds N bindings; one of them belongs to a probe certificate
(``UID=crt_probe,CN=probe,OU=sensors,O=bench``, mapped by the broker's real rules).  At
each level it measures:

* produce latency of the probe: one idempotent ``acks=all`` record per request, sequential
  (each request is authorized: WRITE on the topic), p50/p99;
* broker CPU per produce request (the Kafka process's CPU seconds over the loop, minus its
  idle rate measured just before, divided by the requests);
* what a credential sync costs: DescribeAcls for one principal (exact filter), a create and
  a delete of one binding and the wait until the broker's authorizer shows it (as
  ``ingest.acl_sync.credential_acls_sync`` does), and DescribeAcls of the whole topic (what a
  tenant sync reads);
* the size of the KRaft metadata log and snapshots, and the broker's resident memory.

Kafka 4.1's ``StandardAuthorizerData`` finds the bindings of a resource in a sorted set and
checks each one in the resource's section for the principal, so its cost per authorize call
grows with the bindings on that topic; this measures how much.

    .venv/bin/python bench/acl_scale.py --out bench/results/acl-scale.md
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench"))]

TENANT, GROUP, TOPIC = "bench", "sensors", "iot.bench.eu.temperature"
PROBE_ID = "crt_probe"
BATCH = 5000


def _platform_class() -> Any:
    """bench/ingest.py's scratch-platform runner (one way to start and stop a platform)."""
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Platform


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _metadata_size(path: Path) -> int:
    """The metadata log's segments and snapshots (not the index files Kafka preallocates)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in (".log", ".checkpoint"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,1000,10000,100000", help="bindings on the topic at each level")
    parser.add_argument("--requests", type=int, default=400, help="produce requests measured per level")
    parser.add_argument("--offset", type=int, default=52000, help="SLUICE_PORT_OFFSET of the scratch platform")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    state = Path(tempfile.mkdtemp(prefix="sluice-acl-scale-"))
    platform = _platform_class()(state / "data", args.offset)
    try:
        print(f"platform ready in {platform.start():.1f} s (state {state})", flush=True)
        os.environ.update({k: platform.env[k] for k in ("SLUICE_STATE_DIR", "SLUICE_PORT_OFFSET")})
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django

        django.setup()
        rows = measure(platform, sizes, args.requests)
    finally:
        platform.stop()
        shutil.rmtree(state, ignore_errors=True)
    text = report(rows, " ".join(["bench/acl_scale.py", *sys.argv[1:]]))
    print(text)
    if args.out:
        args.out.write_text(text)


def measure(platform: Any, sizes: list[int], requests: int) -> list[dict[str, Any]]:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from django.conf import settings

    from certs import ca
    from certs.crl_files import ROOT_CRL_NAME
    from certs.platform_pki import load_root
    from certs.principals import device_subject
    from devices.principals import credential_principal
    from ingest.acls import credential_binding
    from ingest.kafka import admin_config, client_config
    from ingest.kafka_admin import described, principal_filter, topic_filter

    logging.getLogger("sluice.kafka.librdkafka").setLevel(logging.ERROR)
    runtime = settings.SLUICE_RUNTIME
    admin = AdminClient(admin_config(runtime))
    admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])[TOPIC].result(30)
    kafka = next(p for p in psutil.Process(platform.proc.pid).children(recursive=True)
                 if "kafka.Kafka" in " ".join(p.cmdline()))  # fmt: skip
    metadata_dir = next((runtime.state_dir / "kafka").rglob("__cluster_metadata-0"))

    # the probe: a device certificate from the platform root, as Sluice issues them
    key = ca.generate_key()
    cert = ca.issue_leaf(issuer=load_root(runtime), public_key=key.public_key(), usage=ca.Usage.CLIENT, valid_days=1,
                         subject=device_subject(tenant=TENANT, group=GROUP, device="probe", credential_id=PROBE_ID),
                         crl_urls=[runtime.crl_url(ROOT_CRL_NAME)])  # fmt: skip
    probe = credential_principal(tenant=TENANT, group=GROUP, credential_id=PROBE_ID)
    created = 0

    def create(bindings: list[Any]) -> None:
        for start in range(0, len(bindings), BATCH):
            for future in admin.create_acls(bindings[start : start + BATCH], request_timeout=120).values():
                future.result(120)

    create([credential_binding(probe, TOPIC)])
    created = 1
    rows: list[dict[str, Any]] = []
    for size in sizes:
        began = time.monotonic()
        create([credential_binding(credential_principal(tenant=TENANT, group=GROUP, credential_id=f"crt_{n:08d}"),
                                   TOPIC) for n in range(created, size)])  # fmt: skip
        create_seconds = time.monotonic() - began
        added = size - created
        created = size
        # until the broker's authorizer holds them all
        while len(described(admin, [topic_filter(TOPIC)])) < size:
            time.sleep(0.5)
        producer = Producer({**client_config(runtime, certificate_pem=ca.certificate_pem(cert).decode(),
                                             key_pem=ca.private_key_pem(key).decode()),
                             "enable.idempotence": True, "acks": "all", "linger.ms": 0})  # fmt: skip
        for _ in range(50):  # warm-up: connection, producer id, metadata
            producer.produce(TOPIC, value=b"warm-up")
            producer.flush(30)
        idle_before = sum(kafka.cpu_times()[:2])
        time.sleep(5)
        idle_rate = (sum(kafka.cpu_times()[:2]) - idle_before) / 5
        latencies: list[float] = []
        cpu_before, wall_before = sum(kafka.cpu_times()[:2]), time.monotonic()
        for _ in range(requests):
            sent = time.perf_counter()
            producer.produce(TOPIC, value=b'{"celsius": 21.5}')
            assert producer.flush(30) == 0
            latencies.append((time.perf_counter() - sent) * 1000)
        wall = time.monotonic() - wall_before
        cpu = sum(kafka.cpu_times()[:2]) - cpu_before - idle_rate * wall
        del producer
        # what a credential sync does at this size
        began = time.perf_counter()
        assert len(described(admin, [principal_filter(probe)])) == 1
        describe_principal_ms = (time.perf_counter() - began) * 1000
        extra = credential_binding(credential_principal(tenant=TENANT, group=GROUP, credential_id="crt_sync"), TOPIC)
        began = time.perf_counter()
        create([extra])
        while extra not in described(admin, [principal_filter(extra.principal)]):
            time.sleep(0.01)
        for future in admin.delete_acls([principal_filter(extra.principal)]).values():
            future.result(30)
        while described(admin, [principal_filter(extra.principal)]):
            time.sleep(0.01)
        sync_ms = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        on_topic = len(described(admin, [topic_filter(TOPIC)]))
        describe_topic_ms = (time.perf_counter() - began) * 1000
        row = {
            "size": size,
            "create_per_s": added / create_seconds if added else 0.0,
            "p50": statistics.median(latencies),
            "p99": _percentile(latencies, 0.99),
            "cpu_ms_per_request": cpu / requests * 1000,
            "describe_principal_ms": describe_principal_ms,
            "sync_ms": sync_ms,
            "describe_topic_ms": describe_topic_ms,
            "on_topic": on_topic,
            "metadata_mb": _metadata_size(metadata_dir) / 2**20,
            "rss_mb": kafka.memory_info().rss / 2**20,
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Per-credential Kafka ACLs at scale (one topic)",
        "",
        f"Command: `.venv/bin/python {command}` (Kafka 4.1, one KRaft node, 512 MiB heap, 2 shared cores).",
        "",
        "| bindings on the topic | CreateAcls rate | produce p50 / p99 | broker CPU per produce request "
        "| DescribeAcls one principal | one credential sync (create + delete, awaited) | DescribeAcls the topic "
        "| metadata log + snapshots | broker RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {r['create_per_s']:,.0f}/s | {r['p50']:.2f} / {r['p99']:.2f} ms "
            f"| {r['cpu_ms_per_request']:.3f} ms | {r['describe_principal_ms']:.0f} ms | {r['sync_ms']:.0f} ms "
            f"| {r['describe_topic_ms']:.0f} ms ({r['on_topic']:,}) | {r['metadata_mb']:.1f} MiB "
            f"| {r['rss_mb']:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
