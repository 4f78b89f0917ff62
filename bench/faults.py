"""The longer fault run (issue 12): continuous HTTPS ingest and a Kafka-direct producer while
the broker is killed with SIGKILL and restarted, again and again; then an independent reader
checks every acknowledged record is on the topic exactly once (``bench/faultproof``).

    .venv/bin/python bench/faults.py --kills 5 --out bench/results/faults-single-broker.md

It starts a platform of its own in this process (the launcher's components on a scratch
state directory, ``--state``, wiped first, and ports offset by ``--port-offset``), because a
platform under ``sluice up`` stops as a whole when its broker dies (issue 12, item 6).  Then:

1. provisions through Sluice's services a tenant, a stream (``--partitions``) with a JSON
   Schema, ``--devices`` HTTPS devices and a Kafka-direct credential (the direct producer);
2. starts the load: each device ``--rate`` requests per second of 1-3 records (every 10th
   request with a record the schema refuses), the direct producer ``--direct-rate`` records
   per second;
3. ``--kills`` times: waits for steady 200s, kills the broker (``kill -9`` of its process
   group), keeps it down until ``--down`` seconds have passed and requests waiting on it
   were answered, restarts it, and measures how long after the broker answered again the
   first request was accepted;
4. stops the load, reads the topic end to end as ``User:sluice-fault-verifier``
   (``read_committed``) and prints the numbers and the verdict; ``--out`` writes them as
   Markdown.  Exit status 1 when a promise was broken.

With ``--brokers 1`` (the default platform) "the leader of the stream's partitions" is the
one broker, and the platform is down for everyone while it is: every request meanwhile must
be a 503 with ``Retry-After``.  With ``--brokers 3`` (a KRaft quorum of three, replication 3,
min ISR 2) each kill takes the leader of the stream's first partition, 200s must go on while
it is down, and each restart is waited for until every partition is in sync on all three;
then the active controller is killed once the same way.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project's modules first, never this file's directory; the launcher's package too.
sys.path[:] = [
    str(ROOT),
    str(ROOT / "platform"),
    *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")),
]

from bench.faultproof.broker import LauncherBrokers, Outage  # noqa: E402
from bench.faultproof.load import Load  # noqa: E402
from bench.faultproof.verify import Verdict, judge, read_topic, summary_table  # noqa: E402
from sluicectl.errors import LaunchError  # noqa: E402
from sluicectl.launcher import ORDER, Interrupted, Launcher, child_env, install_signal_handlers, make_context  # noqa: E402

STEADY_OKS = 20  # 200s seen before each kill, and after each restart
WAIT_BOUND = 90.0  # seconds, for each of those waits


def say(message: str) -> None:
    print(f"faults: {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                        help="1 (the default platform) or 3 (a KRaft quorum, replication 3, min ISR 2)")  # fmt: skip
    parser.add_argument("--kills", type=int, default=5,
                        help="how many times the (leading) broker is killed (default 5); with 3 brokers the "
                             "active controller is killed once more")  # fmt: skip
    parser.add_argument("--down", type=float, default=5.0, help="at least this many seconds down per kill (default 5)")
    parser.add_argument("--between", type=float, default=15.0, help="seconds of load between recovery and next kill")
    parser.add_argument("--devices", type=int, default=4, help="HTTPS devices (default 4)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per device (default 10)")
    parser.add_argument("--direct-rate", type=float, default=20.0, help="direct records per second (default 20)")
    parser.add_argument("--direct-message-timeout-ms", type=int, default=None,
                        help="the direct producer's message.timeout.ms (default: librdkafka's, 300000)")  # fmt: skip
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the stream (default 3)")
    parser.add_argument("--state", type=Path, default=ROOT / "var" / "faults",
                        help="scratch state directory, wiped first (default var/faults)")  # fmt: skip
    parser.add_argument("--port-offset", type=int, default=23000, help="port offset of the scratch platform")
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here")
    args = parser.parse_args(argv)
    for name in ("kills", "devices", "partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("rate", "direct_rate"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.direct_message_timeout_ms is not None and args.direct_message_timeout_ms < 1:
        parser.error("--direct-message-timeout-ms must be positive")
    if args.down < 0 or args.between < 0:
        parser.error("--down and --between must not be negative")
    if args.state.resolve() in (ROOT / "var" / "data", ROOT / "var" / "test"):
        parser.error(f"--state {args.state} is a platform's own state; choose a scratch directory")
    return args


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()
    import logging

    for noisy in ("httpx2", "httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "kafka" else logging.CRITICAL)


def run(args: argparse.Namespace, launcher: Launcher, env: dict[str, str]) -> tuple[Verdict, list[str]]:
    from bench.faultproof.target import provision

    setup_django(env)
    target = provision(args.state / "faults-credentials", devices=args.devices, partitions=args.partitions)
    say(f"provisioned {target.topic} ({target.partitions} partitions), {len(target.devices)} devices, "
        f"direct producer {target.direct.principal}")  # fmt: skip
    brokers = LauncherBrokers(launcher.ctx, launcher.processes)
    run_id = f"fp{secrets.token_hex(4)}"
    load = Load(target, run_id, rate=args.rate, direct_rate=args.direct_rate,
                direct_timeout_ms=args.direct_message_timeout_ms)  # fmt: skip
    outages: list[Killed] = []
    began = time.time()
    plan = [("leader", kill) for kill in range(1, args.kills + 1)]
    if args.brokers > 1:
        plan.append(("controller", 1))
    load.start()
    try:
        for role, number in plan:
            if not load.wait_for_answers(200, STEADY_OKS, timeout=WAIT_BOUND):
                raise RuntimeError(f"no steady 200s before the {role} kill {number}: {dict(load.statuses())}")
            node = brokers.active_controller() if role == "controller" else brokers.leader(target.topic)
            label = f"{role} (broker {node})" if args.brokers > 1 else "the broker"
            outage = brokers.kill(node)
            say(f"killed {label} (-9); answers so far {dict(load.statuses())}")
            time.sleep(args.down)
            if args.brokers == 1:
                load.wait_for_answers(503, 1, timeout=WAIT_BOUND)  # the platform is down: requests wait, then 503
            elif not load.wait_for_answers(200, 5, timeout=WAIT_BOUND):
                raise RuntimeError(f"no 200s with broker {node} down: {dict(load.statuses())}")
            brokers.restart(node, outage)
            if not load.wait_for_answers(200, STEADY_OKS, timeout=WAIT_BOUND):
                raise RuntimeError(f"ingest did not recover after killing {label}: {dict(load.statuses())}")
            deadline = time.monotonic() + WAIT_BOUND
            while not brokers.all_in_sync(target.topic):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"broker {node} did not rejoin every partition's ISR")
                time.sleep(1)
            recovered = load.first_answer_after(200, outage.ready_at)
            recovery = None if recovered is None else recovered - outage.ready_at
            outages.append((label, outage, recovery))
            first = "no 200 yet" if recovery is None else f"first 200 {recovery:.1f} s after that"
            say(f"{label} back after {outage.down_seconds:.1f} s, {first}")
            time.sleep(args.between)
    finally:
        result = load.stop()
    ended = time.time()
    say("load stopped; the verifier reads the topic")
    verdict = judge(result, read_topic(target, run_id), run_id)
    lines = report(args, target.topic, run_id, began, ended, outages, verdict, load.fatal_errors)
    return verdict, lines


Killed = tuple[str, Outage, float | None]  # who, when, first 200 after it answered again (s)


def report(args: argparse.Namespace, topic: str, run_id: str, began: float, ended: float,
           outages: list[Killed], verdict: Verdict, fatal: list[str]) -> list[str]:  # fmt: skip
    command = " ".join(["  .venv/bin/python bench/faults.py", *sys.argv[1:]])
    lines = [
        f"# Fault run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))} "
        f"({'single broker' if args.brokers == 1 else f'{args.brokers} brokers, replication 3, min ISR 2'})",
        "",
        f"{platform.node()}: {os.cpu_count()} cores; run `{run_id}` on `{topic}`, {ended - began:.0f} s of load: "
        f"{args.devices} HTTPS devices at {args.rate:g} requests/s each (1-3 records; every 10th request with a "
        f"record the schema refuses), the Kafka-direct producer at {args.direct_rate:g} records/s "
        f"(message.timeout.ms {args.direct_message_timeout_ms or 'librdkafka default, 300000'}).",
        "",
        command,
        "",
        "| kill | killed | killed → answering again | restarted → answering | first 200 after it answered |",
        "|---|---|---|---|---|",
        *(f"| {i} | {who} | {o.down_seconds:.1f} s | {o.ready_at - o.restarted_at:.1f} s | "
          f"{'-' if r is None else f'{r:.1f} s'} |" for i, (who, o, r) in enumerate(outages, 1)),
        "",
        *summary_table(verdict),
        "",
        "Answers by status: " + ", ".join(f"{k} {v}" for k, v in sorted(verdict.statuses.items())) + ".",
        "",
        ("Verdict: every promise held." if not verdict.violations
         else "Verdict: VIOLATED:\n" + "\n".join(f"- {v}" for v in verdict.violations)),
    ]  # fmt: skip
    if fatal:
        lines += ["", f"The direct producer hit {len(fatal)} fatal error(s) and was recreated: {fatal[:3]}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.state = args.state.resolve()
    shutil.rmtree(args.state, ignore_errors=True)
    env = child_env({"SLUICE_STATE_DIR": str(args.state), "SLUICE_PORT_OFFSET": str(args.port_offset),
                     "SLUICE_KAFKA_BROKERS": str(args.brokers)})  # fmt: skip
    try:
        launcher = Launcher(make_context(env), ORDER)
    except LaunchError as exc:
        say(str(exc))
        return 2
    install_signal_handlers()
    try:
        say(f"starting a scratch platform in {args.state} (ports offset by {args.port_offset})")
        launcher.start()
        verdict, lines = run(args, launcher, env)
    except Interrupted as signame:
        say(f"{signame} received, stopping")
        return 130
    except (LaunchError, RuntimeError) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        launcher.stop()
    print("\n".join(verdict.lines()), flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
        say(f"report written to {args.out}")
    return 0 if not verdict.violations else 1


if __name__ == "__main__":
    sys.exit(main())
