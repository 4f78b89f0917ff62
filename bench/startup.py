"""Startup time and idle memory of the whole platform (command one), on a warm machine.

Runs ``platform/bin/sluice up`` against a scratch state directory and port offset (so the
user's platform is untouched): once on empty state (first start: PKI, Kafka format,
migrations) and then ``--restarts`` times on the kept state.  For each run it records the
seconds until the launcher prints "ready", and, after ``--idle`` seconds, the summed
resident memory (RSS) of the launcher's whole process tree.  Writes a Markdown table.

    .venv/bin/python bench/startup.py --restarts 2 --out bench/results/startup.md
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def one_run(state: Path, offset: int, idle: float, brokers: int = 1) -> tuple[float, float, dict[str, float]]:
    env = dict(os.environ, SLUICE_STATE_DIR=str(state), SLUICE_PORT_OFFSET=str(offset),
               SLUICE_KAFKA_BROKERS=str(brokers))  # fmt: skip
    began = time.monotonic()
    proc = subprocess.Popen(
        [str(ROOT / "platform" / "bin" / "sluice"), "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    ready_after = None
    output = ""
    while time.monotonic() - began < 300:
        readable, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not readable:
            continue
        line = proc.stdout.readline()
        output += line
        if "ready in" in line:
            ready_after = time.monotonic() - began
            break
        if line == "" and proc.poll() is not None:
            break
    if ready_after is None:
        proc.kill()
        sys.exit(f"platform never became ready:\n{output}")
    time.sleep(idle)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    by_part: dict[str, float] = {}
    for p in tree:
        try:
            cmd = " ".join(p.cmdline())
            rss = p.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
        part = next(
            (name for key, name in (("kafka.Kafka", "kafka"), ("GeneratedMain", "registry"), ("redis-server", "redis"),
             ("nginx", "nginx"), ("uvicorn", "web"), ("multiprocessing", "web"), ("worker", "celery worker"),
             ("beat", "celery beat"), ("sluicectl", "launcher")) if key in cmd),
            "other",
        )  # fmt: skip
        if part == "kafka":
            part = f"kafka {cmd.rsplit('/', 2)[-2]}"  # <state>/kafka-2/server.properties: one entry per broker
        by_part[part] = by_part.get(part, 0.0) + rss
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    return ready_after, sum(by_part.values()), by_part


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--offset", type=int, default=30000)
    parser.add_argument("--brokers", type=int, default=1, help="SLUICE_KAFKA_BROKERS (1, 3 or 5)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    rows = []
    try:
        for i in range(1 + args.restarts):
            kind = "first start (empty state)" if i == 0 else f"restart {i} (kept state)"
            ready, total, parts = one_run(state, args.offset, args.idle, args.brokers)
            rows.append((kind, ready, total, parts))
            print(f"{kind}: ready in {ready:.1f} s, idle RSS {total:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    parts_line = ", ".join(f"{k} {v:.0f}" for k, v in sorted(rows[-1][3].items(), key=lambda kv: -kv[1]))
    table = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores with `.venv/bin/python bench/startup.py "
        f"--restarts {args.restarts} --idle {args.idle:.0f} --brokers {args.brokers}` (warm machine: venv and "
        "jars present).",
        "",
        "| run | command one to ready | RSS of the whole platform at idle |",
        "|---|---|---|",
        *[f"| {kind} | {ready:.1f} s | {total:.0f} MiB |" for kind, ready, total, _ in rows],
        "",
        f"Idle RSS by part, last run (MiB): {parts_line}.",
    ]
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
