"""HTTPS ingest (``POST /ingest/v1/records``) per server CPU-second, against its ceiling (a
direct producer writing the same bytes) and its floor (the same nginx + ASGI server in front
of a do-nothing app): issue 9's P1, P2, P3, P5 and P8.  P4 is ``bench/validation.py``.

The final measurement, in a quiet window (nothing else running on the machine: no test
suite, no other benchmark, no other platform left up), is one command of about 20 minutes:
~11 for the measured runs and ~9 for P8 (adding 999 tenants through ``tenant_create`` took
434 s on 2026-12-03, each a tenant CA and its anchor CRL; Celery's 2,000 topics follow):

    .venv/bin/python bench/ingest.py --out bench/results/ingest.md

Without P8, about 11 minutes: ``--only p1,p2,p3,p5``; P8 alone: ``--only p8 --formats json``.
Smoke run (2 s windows, 60 tenants for P8, about 6 minutes; the report is marked SMOKE and
goes to ``bench/results/ingest-smoke.md``):

    .venv/bin/python bench/ingest.py --smoke

One figure only: ``--only p1`` (or p2, p3, p5, p8, comma-separated); one shape or format:
``--shapes 100 --formats json``; shorter windows: ``--window 3 --windows 3 --warmup 2``.

What it does, on a scratch platform of its own (``platform/bin/sluice up`` with a
temporary state directory and ``--offset`` ports; stopped at the end, also on error):

1. Provisions through Sluice's services: a tenant, a JSON Schema stream and an Avro stream
   (``bench/ingestbench/workload.py``: a ~300 B, 8-field record), a device group each, devices
   imported in bulk and certificates issued in bulk; one request per device until each gets
   a 200; then reads back from Kafka the record Sluice wrote (value, key, headers).
2. P1: the ceiling (``ingestbench/ceiling.py``: Sluice's own producer settings, the exact
   bytes read back, pre-built, pipelined) for each format, then Sluice at ``--shapes``
   records per request for each format over keep-alive mTLS, then the ceiling again; the
   ratio uses the mean of the two ceilings.
3. P2 and P5: the floor (``ingestbench/floor.py``, ``bench/noop_app.py``: the launcher's own
   nginx template values and web command, the app swapped) before and after Sluice's
   single-record keep-alive runs, and Sluice with a new TLS handshake per request.
4. P3: Sluice paced at half the single-record keep-alive maximum just measured, latency from
   the scheduled send time; then the same paced run while ``--api-procs`` processes keep
   the REST API busy (``ingestbench/apiload.py``: authenticated list requests back to back).
5. P8: single-record and 100-record runs, then tenants and devices added through the
   services up to ``--p8-tenants`` / ``--p8-devices`` (Celery's provisioning waited for),
   then the same runs again.

MQTT against HTTPS (``--only mqtt``, not in the default set; about 12 minutes with the
defaults, results in ``bench/results/mqtt-vs-https-2026-12-05.md``): on the same platform,
JSON stream and devices, ``--mqtt-rounds`` rounds of HTTPS 1 record/request (P2's client),
HTTPS ``--mqtt-batch`` records/request, and MQTT QoS 1, one record per message, from
``--mqtt-connections`` mTLS connections (``ingestbench/mqtt.py``: a minimal MQTT 5 publisher,
or paho with ``--mqtt-client paho``; up to ``--mqtt-inflight`` PUBLISHes in flight each),
once per ``--mqtt-backlog``.  MQTT's server CPU is Mosquitto + mqtt-auth + mqtt-bridge
(HTTPS's is shown beside, and the other way round); its records are what reached the stream
topic (end offsets), never PUBACKs, and the publishers are held to at most ``--mqtt-backlog``
messages published and not yet in Kafka, so every window starts and ends with a bounded,
steady backlog (reported).  A bridge that takes nothing for 3 s while messages wait is
restarted and that window discarded.

Every run warms up, then takes ``--windows`` clean windows of ``--window`` seconds (up to
``--windows + --extra-windows`` tries).  Server CPU is nginx plus every process of the ASGI
server components (``web``, and any ``*ingest*`` component), workers and reaped children
included; Kafka, Redis, the registry, Celery, the clients and the producer are shown beside.
"""

from __future__ import annotations

import argparse
import math
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The project's modules come first, never this file's directory (here ``import ingest``
# would find this file instead of the ``ingest`` app); the launcher's package too.
sys.path[:] = [
    str(ROOT),
    str(ROOT / "platform"),
    *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")),
]

from bench.ingestbench import provision as prov_mod  # noqa: E402
from bench.ingestbench.apiload import ApiLoad  # noqa: E402
from bench.ingestbench.ceiling import ProducerLoad  # noqa: E402
from bench.ingestbench.clients import ClientLoad  # noqa: E402
from bench.ingestbench.floor import Floor, asgi_components  # noqa: E402
from bench.ingestbench.mqtt import MqttLoad, kafka_end_offsets  # noqa: E402

PRODUCE_APP = "bench.produce_app:app"
from bench.ingestbench.report import (  # noqa: E402
    TITLE,
    Run,
    Summary,
    header_lines,
    mean_of_medians,
    metric_of,
    ratio_spread,
    render,
)
from bench.ingestbench.stack import Platform, Sources, tree_pids  # noqa: E402
from bench.ingestbench.windows import LogWatch, Meter, Plan, Spread, measure  # noqa: E402
from bench.ingestbench.workload import body_for, record_bytes  # noqa: E402

FIGURES = ("p1", "p2", "p3", "p5", "p8", "mqtt")
DEFAULT_FIGURES = ("p1", "p2", "p3", "p5", "p8")  # mqtt is asked for by name
MQTT_PARTS = ("mosquitto", "mqtt-auth", "mqtt-bridge")
PREVIOUS = """Previous figures (2026-11-26, `bench/results/ingest-2026-11-26.md`): a 78 B record and a
ceiling that made a uuid per record, so not comparable ratio for ratio: records per server
CPU-second 372 (1 record/request), 10,186 (50), 20,853 (500); per CPU-second against that
ceiling 0.003, 0.078, 0.159."""


@dataclass
class Context:
    args: argparse.Namespace
    platform: Platform
    meter: Meter
    sources: Sources
    plan: Plan
    prov: prov_mod.Provisioned
    token: str
    server_parts: list[str]


def say(message: str) -> None:
    print(message, flush=True)


def run_load(
    ctx: Context,
    name: str,
    kind: str,
    load: Any,
    *,
    fmt: str,
    rpr: int,
    mode: str,
    server_parts: list[str] | None = None,
    plan: Plan | None = None,
    beside: list[str] | None = None,
    **extra: Any,
) -> Run:
    part = "producer" if isinstance(load, ProducerLoad) else "clients"
    if load is not None:
        ctx.sources.trees[part] = load.pids
    say(f"  {name} ...")
    try:
        windows = measure(ctx.meter, load, plan or ctx.plan, say=say)
    finally:
        ctx.sources.trees.pop(part, None)
    run = Run(
        name=name,
        kind=kind,
        format=fmt,
        records_per_request=rpr,
        mode=mode,
        server_parts=server_parts or ctx.server_parts,
        windows=windows,
        max_foreign=ctx.plan.max_foreign,
        extra=extra,
        beside=beside or [],
    )
    if isinstance(load, MqttLoad):
        run.connections = len(load.devices)
        run.extra.update(mqtt_outcome(load))
    if isinstance(load, ClientLoad):
        run.connections, run.connects, run.rate = len(load.credentials), load.connects, load.rate
    if isinstance(load, ProducerLoad):
        run.extra["run_length"] = load.run_length
        trips = sorted(load.outcome.get("round_trips", []))
        if trips:
            run.extra["one record at a time, acks=all round trip p50/p99"] = (
                f"{trips[len(trips) // 2]:.1f}/{trips[min(len(trips) - 1, round(0.99 * (len(trips) - 1)))]:.1f} ms"
            )
        run.extra["settings"] = load.outcome.get("settings", {})
    metric = (
        "records/cpu"
        if kind in ("ceiling", "mqtt") or (kind in ("sluice", "produce-only") and rpr != 1)
        else "requests/cpu"
    )
    spread = run.spread(metric)
    say(
        f"    {metric.replace('cpu', 'server CPU-s')}: {spread.fmt()}  ({len(run.clean)}/{len(windows)} clean windows, "
        f"{run.spread('records/s').fmt()} records/s)"
    )
    return run


def clients(
    ctx: Context,
    fmt: str,
    rpr: int,
    mode: str,
    *,
    port: int | None = None,
    rate: float = 0.0,
    connections: int | None = None,
) -> ClientLoad:
    devices = ctx.prov.streams[fmt].devices[: connections or ctx.args.clients]
    return ClientLoad(
        mode=mode,
        host="127.0.0.1",
        port=port or ctx.prov.port,
        server_hostname=ctx.prov.hostname,
        ca_file=ctx.prov.ca_file,
        credentials=[(d.chain, d.key) for d in devices],
        body=body_for(rpr),
        records_per_request=rpr,
        user_agent=ctx.token,
        procs=ctx.args.client_procs,
        rate=rate,
    )


def ceiling(ctx: Context, fmt: str, written: prov_mod.Written, when: str) -> Run:
    stream = ctx.prov.streams[fmt]
    env = {k: ctx.platform.env[k] for k in ("SLUICE_STATE_DIR", "SLUICE_PORT_OFFSET")}
    load = ProducerLoad(
        env=env,
        topic=stream.topic,
        value=written.value,
        headers=written.headers,
        sample_key=written.key,
        keys=[d.device_id.encode() for d in stream.devices[: ctx.args.clients]],
        run_length=ctx.args.ceiling_run,
    )
    return run_load(
        ctx,
        f"ceiling {fmt} {when}",
        "ceiling",
        load,
        fmt=fmt,
        rpr=1,
        mode="producer",
        server_parts=["producer"],
        value_bytes=len(written.value),
    )


def main() -> None:
    args = parse_args()
    started = time.time()
    python = ".venv/bin/python" if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve() else "python"
    command = " ".join([python, "bench/ingest.py", *sys.argv[1:]])
    plan = Plan(
        warmup=args.warmup,
        seconds=args.window,
        windows=args.windows,
        max_windows=args.windows + args.extra_windows,
        max_foreign=args.max_foreign,
    )
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-ingest-"))
    # Prometheus scrapes nginx's /metrics: a request that is not the benchmark's in a window
    # (discarded) and CPU in the web app; the benchmark leaves it out unless asked.
    platform = Platform(root / "data", args.offset, [] if args.prometheus else ["--no-prometheus"])
    floor: Floor | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    runs: list[Run] = []
    summary = Summary()
    facts: list[str] = []
    try:
        say(f"starting a scratch platform (state {root}, port offset {args.offset}) ...")
        say(f"  ready in {platform.start():.1f} s")
        prov_mod.setup_django(platform.env)
        token = f"sluice-bench/{secrets.token_hex(6)}"
        began = time.monotonic()
        devices = max(args.clients, args.paced_clients, args.single_clients, args.mqtt_connections)
        prov = prov_mod.provision(root, devices, args.partitions, tuple(args.formats))
        prov_mod.wait_until_accepting(prov, token)
        written = {fmt: prov_mod.read_back(stream.topic) for fmt, stream in prov.streams.items()}
        say(
            f"  provisioned {', '.join(s.topic for s in prov.streams.values())} ({devices} devices each) in "
            f"{time.monotonic() - began:.1f} s"
        )
        server_parts = ["nginx", *asgi_components(list(platform.components), args.asgi_components)]
        sources = Sources(groups=[platform.cpu_by_part])
        logs = [LogWatch("platform", platform.logs / "nginx-access.log", platform.logs / "nginx-error.log")]
        meter = Meter(sources, logs, token.encode())
        ctx = Context(args, platform, meter, sources, plan, prov, token, server_parts)
        facts += describe(ctx, written)

        if args.broker_warmup > 0:
            # A broker started minutes ago still compiles its request path (the JIT's C2
            # threads took ~20 % of a core and each single-record produce cost it ~1-2 ms of
            # CPU in such runs); a platform in service has been up for days.  Warm it with the
            # traffic P2 sends, unmeasured, so Kafka's acknowledgements come at its real pace.
            say(f"  warming the broker with single-record requests for {args.broker_warmup:.0f} s ...")
            warm = clients(ctx, "json", 1, "keepalive", connections=args.single_clients)
            warm.start()
            time.sleep(args.broker_warmup)
            warm.stop()

        if "p1" in args.only:
            before = {fmt: ceiling(ctx, fmt, written[fmt], "before") for fmt in args.formats}
            sluice = {
                (fmt, rpr): run_load(
                    ctx,
                    f"P1 {fmt} {rpr}",
                    "sluice",
                    clients(ctx, fmt, rpr, "keepalive"),
                    fmt=fmt,
                    rpr=rpr,
                    mode="keep-alive",
                )
                for fmt in args.formats
                for rpr in args.shapes
            }
            produce_batches = (
                {rpr: produce_floor_run(ctx, root, facts, rpr) for rpr in args.shapes}
                if args.produce_floor and "json" in args.formats
                else {}
            )
            after = {fmt: ceiling(ctx, fmt, written[fmt], "after") for fmt in args.formats}
            runs += [*before.values(), *sluice.values(), *produce_batches.values(), *after.values()]
            settings = next(iter(before.values())).extra.get("settings", {})
            facts.append(
                "Producer settings (Sluice's `ingest_producer_config`, as the ceiling used them): "
                + ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items()))
                + "."
            )
            for fmt in args.formats:
                top = mean_of_medians([before[fmt], after[fmt]], "records/cpu")
                drift = after[fmt].spread("records/cpu").median / before[fmt].spread("records/cpu").median
                facts.append(
                    f"Ceiling ({fmt}): {top:,.0f} records per producer CPU-second (mean of before and "
                    f"after; after/before = {drift:.2f})."
                )
                for rpr in args.shapes:
                    run = sluice[(fmt, rpr)]
                    target = 0.5 if rpr <= 100 else 0.6
                    summary.add(
                        f"P1 {fmt}, {rpr} records/request: records per server CPU-s ÷ ceiling's",
                        ratio_spread([run.records_per_cpu(w) for w in run.clean], top),
                        target,
                        ".3f",
                    )
                    if fmt == "json" and rpr in produce_batches:
                        batch_bound = produce_batches[rpr]
                        summary.rows.append(
                            (
                                f"P1 bound, {rpr} records/request: produce-only app (parse, write back, produce, wait) "
                                "÷ ceiling's",
                                ratio_spread([batch_bound.records_per_cpu(w) for w in batch_bound.clean], top).fmt(
                                    ".3f"
                                ),
                                "-",
                                "",
                            )
                        )

        single: dict[str, Run] = {}
        if {"p2", "p3", "p5"} & set(args.only):
            with_floor = "p2" in args.only
            floor_runs = []
            if with_floor:
                floor = Floor(platform.env, root / "floor", args.offset + args.floor_offset, args.asgi_components)
                floor.start()
                for name, pid in floor.pid_groups().items():
                    # The default binds this iteration's pid; mypy cannot infer such a lambda.
                    sources.trees[name] = lambda pid=pid: [pid]  # type: ignore[misc]
                meter.logs = [*logs, floor.logs]
                facts.append(
                    f"Floor: nginx `{' '.join(floor.argv['nginx'])}`; ASGI "
                    + "; ".join(f"`{' '.join(a)}`" for n, a in floor.argv.items() if n != "nginx")
                    + "."
                )
                floor_parts = list(floor.pid_groups())
                floor_runs.append(floor_run(ctx, floor, floor_parts, "before"))
            for fmt in args.formats if with_floor else ["json"]:
                single[fmt] = run_load(
                    ctx,
                    f"P2 {fmt} 1 keep-alive",
                    "sluice",
                    clients(ctx, fmt, 1, "keepalive", connections=args.single_clients),
                    fmt=fmt,
                    rpr=1,
                    mode="keep-alive",
                )
                if fmt == "json" and "p5" in args.only:
                    handshake = run_load(
                        ctx,
                        "P5 json 1 new handshake",
                        "sluice",
                        clients(ctx, fmt, 1, "handshake", connections=args.single_clients),
                        fmt=fmt,
                        rpr=1,
                        mode="new TLS handshake per request",
                    )
            produce_only = None
            if with_floor and args.produce_floor:
                produce_only = produce_floor_run(ctx, root, facts, 1)
            if with_floor:
                assert floor is not None
                floor_runs.append(floor_run(ctx, floor, floor_parts, "after"))
                runs += [floor_runs[0], *single.values(), floor_runs[1]]
                bottom = mean_of_medians(floor_runs, "requests/cpu")
                facts.append(f"Floor: {bottom:,.0f} requests per server CPU-second (mean of before and after).")
                for fmt, run in single.items():
                    summary.add(
                        f"P2 {fmt}, 1 record/request: requests per server CPU-s ÷ floor's",
                        ratio_spread([run.requests_per_cpu(w) for w in run.clean], bottom),
                        0.5,
                        ".3f",
                    )
                if produce_only is not None:
                    runs.insert(-1, produce_only)
                    bound = produce_only.spread("requests/cpu").median
                    summary.rows.append(
                        (
                            "P2 bound: produce-only app (read the body, produce it, wait for acks=all) ÷ floor's",
                            ratio_spread([produce_only.requests_per_cpu(w) for w in produce_only.clean], bottom).fmt(
                                ".3f"
                            ),
                            "-",
                            "",
                        )
                    )
                    summary.rows.append(
                        (
                            "P2 json ÷ produce-only app (what Sluice's own work costs beside producing)",
                            ratio_spread([single["json"].requests_per_cpu(w) for w in single["json"].clean], bound).fmt(
                                ".3f"
                            ),
                            "-",
                            "",
                        )
                    )
            else:
                runs += list(single.values())
            if "p5" in args.only:
                runs.append(handshake)
                keepalive = single["json"].spread("requests/cpu").median
                summary.add(
                    "P5 json: requests per server CPU-s, new handshake each ÷ keep-alive",
                    ratio_spread([handshake.requests_per_cpu(w) for w in handshake.clean], keepalive),
                    0.3,
                    ".3f",
                )

        idle = (
            run_load(
                ctx,
                "idle",
                "idle",
                None,
                fmt="-",
                rpr=0,
                mode="idle",
                plan=Plan(1.0, min(args.window, 10.0), 1, 2, math.inf),
            )
            if args.idle
            else None
        )
        if idle is not None:
            runs.append(idle)

        if "p3" in args.only:
            rate = args.p3_rate or single["json"].spread("requests/s").median / 2
            paced = run_load(
                ctx,
                "P3 json 1 paced",
                "sluice",
                clients(ctx, "json", 1, "paced", rate=rate, connections=args.paced_clients),
                fmt="json",
                rpr=1,
                mode="paced keep-alive",
            )
            runs.append(paced)
            summary.add(
                f"P3 json, 1 record/request at {rate:,.0f} requests/s (half the maximum): p99",
                paced.spread("p99"),
                50.0,
                ".1f",
                at_most=True,
                unit=" ms",
            )
            summary.rows.append(("P3 p50 (same run)", paced.spread("p50").fmt(".1f") + " ms", "-", ""))
            summary.rows.append(
                ("P3 p99 pooled over the clean windows", f"{paced.pooled_latency(0.99):.1f} ms", "-", "")
            )
            if args.api_procs:
                runs.append(p3_with_api_load(ctx, summary, facts, rate))

        if "p8" in args.only:
            runs += p8(ctx, summary, facts)

        if "mqtt" in args.only:
            mqtt_figure(ctx, summary, facts, runs)
    except BaseException as exc:  # noqa: BLE001 - reported, then raised again
        # Whatever was measured is still reported, marked incomplete; then the error.
        failure: BaseException | None = exc
        facts.append(f"**INCOMPLETE**: the run stopped with {type(exc).__name__}: {str(exc)[:300]}")
    else:
        failure = None
    finally:
        if floor is not None:
            floor.stop()
        platform.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_report(args, runs, summary, facts, command, started)
    if failure is not None:
        raise failure


def p3_with_api_load(ctx: Context, summary: Summary, facts: list[str], rate: float) -> Run:
    """P3 again while the REST API is kept busy (issue 9, item 7): ingest has its own pool."""
    api_token, paths = prov_mod.api_token(ctx.prov.tenant)
    load = ApiLoad(
        host="127.0.0.1",
        port=ctx.prov.port,
        server_hostname=ctx.prov.hostname,
        ca_file=ctx.prov.ca_file,
        token=api_token,
        user_agent=f"{ctx.token} api-load",
        paths=paths,
        procs=ctx.args.api_procs,
        connections=ctx.args.api_connections,
    )
    with load:
        ctx.sources.trees["api-load"] = load.pids
        try:
            paced = run_load(
                ctx,
                "P3 json 1 paced, REST API busy",
                "sluice",
                clients(ctx, "json", 1, "paced", rate=rate, connections=ctx.args.paced_clients),
                fmt="json",
                rpr=1,
                mode="paced keep-alive, REST API busy",
            )
        finally:
            ctx.sources.trees.pop("api-load", None)
    paced.extra["REST API load"] = load.describe()
    facts.append(f"P3 with the REST API busy: {load.describe()}.")
    summary.add(
        f"P3 json at {rate:,.0f} requests/s while the REST API is busy: p99",
        paced.spread("p99"),
        50.0,
        ".1f",
        at_most=True,
        unit=" ms",
    )
    return paced


def write_report(
    args: argparse.Namespace, runs: list[Run], summary: Summary, facts: list[str], command: str, started: float
) -> None:
    title = (
        "MQTT and HTTPS ingest per server CPU-second, in one run (`bench/ingest.py --only mqtt`)"
        if args.only == ["mqtt"]
        else TITLE
    )
    header = header_lines(command=command, started=started, seconds=time.time() - started, facts=facts, title=title)
    text = render(runs=runs, summary=summary, header=header, notes=[PREVIOUS, "", NOTES.strip()], smoke=args.smoke)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        say(f"written to {args.out}")


def floor_run(ctx: Context, floor: Floor, parts: list[str], when: str) -> Run:
    load = clients(ctx, "json", 1, "keepalive", port=floor.port, connections=ctx.args.single_clients)
    return run_load(ctx, f"floor {when}", "floor", load, fmt="json", rpr=1, mode="keep-alive", server_parts=parts)


def produce_floor_run(ctx: Context, root: Path, facts: list[str], rpr: int) -> Run:
    """Single-record requests to ``bench/produce_app.py`` behind the floor's nginx: the
    produce-only floor (the same server command, Sluice's producer, one acks=all wait)."""
    topic = ctx.prov.streams["json"].topic
    produce_floor = Floor(
        ctx.platform.env,
        root / "produce-floor",
        ctx.args.offset + ctx.args.floor_offset + 500,
        ctx.args.asgi_components,
        app=PRODUCE_APP,
        app_env={
            "SLUICE_BENCH_TOPIC": topic,
            "SLUICE_BENCH_PLATFORM_STATE_DIR": ctx.platform.env["SLUICE_STATE_DIR"],
            "SLUICE_BENCH_PLATFORM_PORT_OFFSET": ctx.platform.env["SLUICE_PORT_OFFSET"],
        },
    )
    produce_floor.start()
    logs = ctx.meter.logs
    try:
        for name, pid in produce_floor.pid_groups().items():
            ctx.sources.trees[f"produce-only {name.removeprefix('floor ')}"] = lambda pid=pid: [pid]  # type: ignore[misc]
        ctx.meter.logs = [*ctx.meter.logs, produce_floor.logs]
        fact = (
            f"Produce-only floor: `{PRODUCE_APP}` (`bench/produce_app.py`) under the floor's commands, producing each "
            f"request's records with Sluice's producer to `{topic}` and waiting for their acknowledgement."
        )
        if fact not in facts:
            facts.append(fact)
        parts = [f"produce-only {name.removeprefix('floor ')}" for name in produce_floor.pid_groups()]
        load = clients(
            ctx,
            "json",
            rpr,
            "keepalive",
            port=produce_floor.port,
            connections=ctx.args.single_clients if rpr == 1 else None,
        )
        return run_load(
            ctx,
            f"produce-only {rpr}",
            "produce-only",
            load,
            fmt="json",
            rpr=rpr,
            mode="keep-alive",
            server_parts=parts,
        )
    finally:
        ctx.meter.logs = logs
        for name in list(ctx.sources.trees):
            if name.startswith("produce-only "):
                del ctx.sources.trees[name]
        produce_floor.stop()


def p8(ctx: Context, summary: Summary, facts: list[str]) -> list[Run]:
    from ingest.kafka_admin import admin_client

    shapes = ctx.args.p8_shapes
    before = {
        rpr: run_load(
            ctx,
            f"P8 json {rpr}, 1 tenant",
            "sluice",
            clients(ctx, "json", rpr, "keepalive"),
            fmt="json",
            rpr=rpr,
            mode="keep-alive",
        )
        for rpr in shapes
    }
    from django.conf import settings

    topics = len(admin_client(settings.SLUICE_RUNTIME).list_topics(timeout=10).topics)
    say(f"  P8: adding tenants up to {ctx.args.p8_tenants:,} and devices up to {ctx.args.p8_devices:,} ...")
    added = prov_mod.populate(tenants=ctx.args.p8_tenants, devices=ctx.args.p8_devices, say=say)
    waited = prov_mod.wait_for_background(topics_expected=topics + 2 * added["tenants_added"], say=say)
    time.sleep(5.0)
    facts.append(
        f"P8 population: {added['tenants']:,} tenants and {added['devices']:,} devices after adding "
        f"{added['tenants_added']:,} tenants in {added['seconds']:.0f} s (+{waited:.0f} s for Celery to "
        "create their topics and ACLs); the same devices send before and after."
    )
    after = {
        rpr: run_load(
            ctx,
            f"P8 json {rpr}, {added['tenants']:,} tenants",
            "sluice",
            clients(ctx, "json", rpr, "keepalive"),
            fmt="json",
            rpr=rpr,
            mode="keep-alive",
        )
        for rpr in shapes
    }
    for rpr in shapes:
        base = before[rpr].spread("cpu/record us").median
        ratios = [metric_of(after[rpr], w, "cpu/record us") / base for w in after[rpr].clean] if base == base else []
        summary.add(
            f"P8 json, {rpr} record(s)/request: server CPU per record, {added['tenants']:,} tenants ÷ 1",
            Spread.of(ratios),
            1.10,
            ".3f",
            at_most=True,
        )
        summary.rows.append(
            (
                f"P8 {rpr}: server CPU per record, 1 tenant → {added['tenants']:,}",
                f"{before[rpr].spread('cpu/record us').fmt(',.1f')} → "
                f"{after[rpr].spread('cpu/record us').fmt(',.1f')} µs",
                "-",
                "",
            )
        )
    return [*before.values(), *after.values()]


def mqtt_outcome(load: MqttLoad) -> dict[str, Any]:
    """What the MQTT load did in all (also outside the windows), for the run's facts."""
    o = load.outcome
    out = {
        "published": f"{o.get('published', 0):,.0f}",
        "PUBACK accepted": f"{o.get('acknowledged', 0):,.0f}",
        "in Kafka after the drain": (
            f"{o.get('delivered', 0):,.0f} ({o.get('drained_in', 0):.1f} s after the last publish)"
        ),
        "acknowledged by Mosquitto, never in Kafka": f"{o.get('lost', 0):,.0f}",
    }
    if o.get("refused"):
        out["PUBACK refused"] = f"{o['refused']:,.0f}"
    if o.get("extra_in_kafka"):
        out["more in Kafka than acknowledged (redelivered?)"] = f"{o['extra_in_kafka']:,.0f}"
    if o.get("errors"):
        out["client errors"] = "; ".join(o["errors"])[:300]
    if o.get("stalls"):
        out["bridge stalls (restarted)"] = "; ".join(o["stalls"])
    return out


def mqtt_load(ctx: Context, kind: str, backlog: int, delivered: Any) -> MqttLoad:
    from django.conf import settings

    from ingest.mqtt_auth import device_topic

    stream = ctx.prov.streams["json"]
    devices = stream.devices[: ctx.args.mqtt_connections]

    def restart_bridge() -> None:
        # ingest.mqtt_bridge before 4b00a82 could stop taking messages for good (a lost
        # wake-up between paho's thread and its event loop); should a bridge stall again, the
        # window is flagged and the bridge restarted rather than the run lost.
        say("    the MQTT bridge stalled: restarting it ...")
        say(f"    mqtt-bridge restarted (pid {ctx.platform.restart('mqtt-bridge')})")

    return MqttLoad(
        host="127.0.0.1",
        port=settings.SLUICE_RUNTIME.ports.mqtt,
        server_hostname=ctx.prov.hostname,
        ca_file=ctx.prov.ca_file,
        devices=[
            (
                f"{ctx.prov.tenant}/{d.device_id}",
                device_topic(ctx.prov.tenant, stream.group, d.device_id),
                d.chain,
                d.key,
            )
            for d in devices
        ],
        payload=body_for(1),
        delivered=delivered,
        client=kind,
        procs=ctx.args.mqtt_procs,
        inflight=ctx.args.mqtt_inflight,
        backlog=backlog,
        poll=ctx.args.mqtt_poll,
        on_stall=restart_bridge,
    )


def mqtt_figure(ctx: Context, summary: Summary, facts: list[str], out: list[Run]) -> None:
    """HTTPS 1 record/request, HTTPS ``--mqtt-batch`` records/request and MQTT QoS 1 (one
    record per message), alternating for ``--mqtt-rounds`` rounds on the same platform,
    devices and stream; each per server CPU-second of its own transport's processes.  Each
    run goes to ``out`` as soon as it is measured (a failure later still reports it)."""
    from django.conf import settings

    from ingest.kafka import admin_config

    args = ctx.args
    components = list(ctx.platform.components)
    missing = [p for p in MQTT_PARTS if p not in components]
    if missing:
        raise RuntimeError(f"the platform has no {', '.join(missing)} (components: {', '.join(components)})")
    mqtt_parts = list(MQTT_PARTS)
    topic = ctx.prov.streams["json"].topic
    delivered = kafka_end_offsets(admin_config(settings.SLUICE_RUNTIME), topic)
    h1: list[Run] = []
    hb: list[Run] = []
    variants = [(kind, backlog) for backlog in args.mqtt_backlog for kind in args.mqtt_client]
    mq: dict[tuple[str, int], list[Run]] = {v: [] for v in variants}
    ordered: list[Run] = []
    for r in range(1, args.mqtt_rounds + 1):
        h1.append(
            run_load(
                ctx,
                f"round {r}: HTTPS json 1 record/request",
                "sluice",
                clients(ctx, "json", 1, "keepalive", connections=args.single_clients),
                fmt="json",
                rpr=1,
                mode="keep-alive",
                beside=mqtt_parts,
            )
        )
        hb.append(
            run_load(
                ctx,
                f"round {r}: HTTPS json {args.mqtt_batch} records/request",
                "sluice",
                clients(ctx, "json", args.mqtt_batch, "keepalive"),
                fmt="json",
                rpr=args.mqtt_batch,
                mode="keep-alive",
                beside=mqtt_parts,
            )
        )
        ordered += [h1[-1], hb[-1]]
        out += [h1[-1], hb[-1]]
        for kind, backlog in variants:
            run = run_load(
                ctx,
                f"round {r}: MQTT json QoS 1 ({kind} client, backlog {backlog})",
                "mqtt",
                mqtt_load(ctx, kind, backlog, delivered),
                fmt="json",
                rpr=1,
                mode=(
                    f"{args.mqtt_connections} connections over {args.mqtt_procs} processes, up to "
                    f"{args.mqtt_inflight} in flight each, at most {backlog} published and not yet in Kafka"
                ),
                server_parts=mqtt_parts,
                beside=ctx.server_parts,
            )
            mq[(kind, backlog)].append(run)
            ordered.append(run)
            out.append(run)
    for run in ordered:
        run.extra["client CPU per record"] = per_record_us_pooled([run], "clients").fmt(",.1f") + " µs"

    def pooled(runs: list[Run], metric: str) -> Spread:
        return Spread.of([metric_of(run, w, metric) for run in runs for w in run.clean])

    def row(figure: str, measured: str) -> None:
        summary.rows.append((figure, measured, "-", ""))

    https = {"HTTPS 1 record/request": h1, f"HTTPS {args.mqtt_batch} records/request": hb}
    labels = {v: f"MQTT QoS 1, 1 record/message ({v[0]} client, backlog {v[1]})" for v in variants}
    for label, these in [*https.items(), *((labels[v], runs) for v, runs in mq.items())]:
        row(
            f"{label}: records per server CPU-s (records/s)",
            f"{pooled(these, 'records/cpu').fmt()} ({pooled(these, 'records/s').fmt()}/s)",
        )
    for v, runs in mq.items():
        for label, base in https.items():
            bottom = mean_of_medians(base, "records/cpu")
            row(
                f"{labels[v]} ÷ {label}, per server CPU-s (MQTT's windows ÷ mean of the HTTPS runs' medians)",
                "**"
                + ratio_spread([run.records_per_cpu(w) for run in runs for w in run.clean], bottom).fmt(".2f")
                + "**",
            )
            rounds = [
                m.spread("records/cpu").median / h.spread("records/cpu").median for m, h in zip(runs, base, strict=True)
            ]
            row(
                "  the same, round by round (MQTT's median ÷ that round's HTTPS median)",
                ", ".join(f"{x:.2f}" for x in rounds),
            )
    for v, runs in mq.items():
        row(
            f"{labels[v]}: server CPU per record, by part",
            "; ".join(f"{part} {per_record_us_pooled(runs, part).fmt(',.1f')} µs" for part in mqtt_parts),
        )
        row(
            f"{labels[v]}: backlog (published, not yet in Kafka) at window ends",
            Spread.of([w.load.get("backlog", math.nan) for run in runs for w in run.clean]).fmt(),
        )
    for label, base in https.items():
        row(
            f"{label}: server CPU per record, by part",
            "; ".join(f"{part} {per_record_us_pooled(base, part).fmt(',.1f')} µs" for part in ctx.server_parts),
        )
    facts.append(
        f"MQTT: server = {' + '.join(mqtt_parts)} (each component's process tree); HTTPS: server = "
        f"{' + '.join(ctx.server_parts)}; each run shows the other transport's parts beside. MQTT records are "
        f"counted as `{topic}`'s end offsets advancing across the window (read with one ListOffsets request "
        f"every {args.mqtt_poll * 1000:.0f} ms by the benchmark process), not by PUBACKs."
    )


def per_record_us_pooled(runs: list[Run], part: str) -> Spread:
    return Spread.of(
        [w.cpu.get(part, 0.0) / w.load["records"] * 1e6 for run in runs for w in run.clean if w.load.get("records")]
    )


def describe(ctx: Context, written: dict[str, prov_mod.Written]) -> list[str]:
    import psutil

    web = ctx.platform.components.get("web")
    web_cmd = " ".join(psutil.Process(web).cmdline()) if web else "?"
    workers = len(tree_pids(web)) - 1 if web else 0
    return [
        f"Server side: {' + '.join(ctx.server_parts)}; web command `{web_cmd}` ({workers} processes below it).",
        f"Record: {record_bytes()} B of compact JSON, 8 fields; single-record body {len(body_for(1))} B; "
        + "; ".join(
            f"{fmt} value in Kafka {len(w.value)} B with {len(w.headers)} headers "
            f"({', '.join(n for n, _ in w.headers)})"
            for fmt, w in written.items()
        )
        + ".",
        "Topics: "
        + ", ".join(f"`{s.topic}` ({s.partitions} partitions)" for s in ctx.prov.streams.values())
        + "; replication 1, one broker.",
        f"Clients: {ctx.args.clients} connections (one device certificate each) over {ctx.args.client_procs} "
        f"processes for P1; {ctx.args.single_clients} for P2, P5 and the floor; P3 paced over "
        f"{ctx.args.paced_clients} connections.",
        f"Windows: {ctx.plan.warmup:.0f} s warm-up, then {ctx.plan.windows} clean windows of {ctx.plan.seconds:.0f} s "
        f"wanted (at most {ctx.plan.max_windows} tried); a window is discarded above "
        f"{ctx.plan.max_foreign:.2f} cores used outside the benchmark, on any nginx reload or foreign request.",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(DEFAULT_FIGURES), help="figures to measure: p1,p2,p3,p5,p8 (default), mqtt"
    )
    parser.add_argument("--formats", default="json,avro", help="record formats for P1 and P2: json,avro")
    parser.add_argument("--shapes", default="100,500", help="P1 records per request, comma-separated")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections (one device each)")
    parser.add_argument(
        "--single-clients",
        type=int,
        default=32,
        help="P2, P5 and the floor: concurrent connections (enough to keep the server busy: a single-record "
        "request waits for Kafka's acknowledgement, so 8 connections leave Sluice's workers idle most of "
        "the time and charge every request a wake-up that a busy server does not pay)",
    )
    parser.add_argument(
        "--broker-warmup",
        type=float,
        default=60.0,
        help="seconds of unmeasured single-record traffic before the first run (0: none)",
    )
    parser.add_argument("--client-procs", type=int, default=2, help="processes the connections are spread over")
    parser.add_argument("--paced-clients", type=int, default=16, help="P3: connections sharing the paced rate")
    parser.add_argument("--api-procs", type=int, default=2, help="P3 again with the REST API busy (0: skip)")
    parser.add_argument("--api-connections", type=int, default=4, help="keep-alive connections per API process")
    parser.add_argument("--p3-rate", type=float, help="P3: requests/s (default: half the P2 json maximum)")
    parser.add_argument("--ceiling-run", type=int, default=100, help="ceiling: records per key run (as a request)")
    parser.add_argument("--p8-tenants", type=int, default=1000, help="P8: tenants on the platform")
    parser.add_argument("--p8-devices", type=int, default=10_000, help="P8: devices on the platform")
    parser.add_argument("--p8-shapes", default="1,100", help="P8: records per request, comma-separated")
    parser.add_argument("--mqtt-rounds", type=int, default=2, help="mqtt: rounds of HTTPS 1, HTTPS batch, MQTT")
    parser.add_argument("--mqtt-batch", type=int, default=50, help="mqtt: records per request of the HTTPS batch run")
    parser.add_argument(
        "--mqtt-client",
        default="raw",
        help="mqtt: publisher(s) to run each round, comma-separated: raw (a minimal MQTT 5 publisher), paho",
    )
    parser.add_argument("--mqtt-connections", type=int, default=16, help="mqtt: MQTT connections (one device each)")
    parser.add_argument(
        "--mqtt-procs", type=int, default=2, help="mqtt: processes the MQTT connections are spread over"
    )
    parser.add_argument("--mqtt-inflight", type=int, default=20, help="mqtt: unacknowledged PUBLISHes per connection")
    parser.add_argument(
        "--mqtt-backlog",
        default="400,2000",
        help="mqtt: messages published and not yet in Kafka, at most (comma-separated: one MQTT run each per "
        "round); keep it below Mosquitto's max_queued_messages, above which Mosquitto drops QoS 1 messages",
    )
    parser.add_argument(
        "--mqtt-poll", type=float, default=0.05, help="mqtt: seconds between two readings of the topic's end offsets"
    )
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measured window")
    parser.add_argument("--windows", type=int, default=3, help="clean windows wanted per run")
    parser.add_argument("--extra-windows", type=int, default=3, help="further windows tried when some are discarded")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the first window")
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        help="cores used outside the benchmark above which a window is discarded",
    )
    parser.add_argument("--no-idle", dest="idle", action="store_false", help="skip the idle window")
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="start the scratch platform with Prometheus (its scrapes of /metrics are foreign requests: those "
        "windows are discarded)",
    )
    parser.add_argument(
        "--asgi-components",
        help="launcher components that serve HTTP behind nginx, comma-separated (default: web and any *ingest*); "
        "their CPU is server CPU and the floor runs each one's command with the no-op app",
    )
    parser.add_argument("--partitions", type=int, help="topic partitions (default: the platform's default)")
    parser.add_argument("--offset", type=int, default=45000, help="SLUICE_PORT_OFFSET of the scratch platform")
    parser.add_argument(
        "--produce-floor",
        action="store_true",
        help="P2: also measure the produce-only floor (bench/produce_app.py: read, produce, wait for acks=all)",
    )
    parser.add_argument("--floor-offset", type=int, default=1000, help="the floor's ports: --offset plus this")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="prove the harness: 2 s windows, 1 s warm-up, 60 tenants/600 devices for P8, no "
        "foreign-CPU discarding; the report is marked SMOKE",
    )
    parser.add_argument(
        "--out", type=Path, help="Markdown report (default with --smoke: bench/results/ingest-smoke.md)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.window, args.windows, args.extra_windows, args.warmup = 2.0, 3, 0, 1.0
        args.p8_tenants, args.p8_devices, args.max_foreign = 60, 600, math.inf
        args.out = args.out or ROOT / "bench" / "results" / "ingest-smoke.md"
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.mqtt_client = [c.strip() for c in args.mqtt_client.split(",") if c.strip()]
    args.mqtt_backlog = [int(b) for b in args.mqtt_backlog.split(",") if b.strip()]
    if set(args.mqtt_client) - {"raw", "paho"}:
        parser.error("--mqtt-client: raw and/or paho")
    if "json" not in args.formats and {"p3", "p5", "p8", "mqtt"} & set(args.only):
        args.formats.insert(0, "json")  # P3, P5 and P8 use the JSON stream
    args.asgi_components = [c.strip() for c in (args.asgi_components or "").split(",") if c.strip()] or None
    args.shapes = [int(s) for s in args.shapes.split(",") if s.strip()]
    args.p8_shapes = [int(s) for s in args.p8_shapes.split(",") if s.strip()]
    return args


NOTES = """
How to read it:

* **Server CPU** is nginx plus every process of the ASGI server components (workers and the
  children they reaped inside the window included); Kafka, Redis, the registry, Celery, the
  clients and the producer are beside it, never inside. **records / server CPU-s** is what
  HTTPS ingest costs; the ceiling's figure is records per CPU-second of the producer
  process, so P1's ratio is "HTTPS + mTLS + authorisation + rate limits + validation +
  encoding + one delivery wait per request" against writing the same bytes to Kafka
  directly.
* The ceiling pipelines without waiting per record, which no request/response ingest can;
  its producer uses Sluice's own settings (`ingest.kafka.ingest_producer_config`, plus
  `delivery.report.only.error`, which changes nothing on the wire) and writes the value,
  key and headers Sluice wrote, read back from the topic.
* P2's floor is the same nginx configuration and the same ASGI server command and worker
  count in front of an app that does nothing: no single-record request can cost less.
* **records/s** depends on the machine far more than the per-CPU figures: the clients
  (Python, TLS) share the cores with the server and the broker.
* **foreign cores** is the machine's busy CPU that no part of the benchmark accounts for:
  other users' processes. Kernel threads (*kernel*) and interrupt time (*irq*, mostly
  loopback networking) are shown beside and not counted as foreign. Windows above
  `--max-foreign` are discarded.
"""


if __name__ == "__main__":
    main()
