"""How the ingest workers' settings were chosen: ``bench/ingest.py`` once per variant (ASGI
server, worker processes, the producer's compression and ``linger.ms``), each with its own
ceiling and floor measured in the same run, then one table of the ratios.

    .venv/bin/python bench/ingest_variants.py --out bench/results/ingest-variants.md

About 3-4 minutes per variant (P1 at 100 JSON records per request, P2 JSON, shorter windows
than the main run).  Run it in a quiet window, like ``bench/ingest.py``.  ``--variants``
picks some by name; any other argument after ``--`` goes to ``bench/ingest.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> environment for the scratch platform (and the ceiling's producer, which reads the
# same settings); the first is today's default.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},  # uvicorn, 2 workers, lz4, linger.ms 5
    "granian": {"SLUICE_INGEST_SERVER": "granian"},
    "1 worker": {"SLUICE_INGEST_WORKERS": "1"},
    "3 workers": {"SLUICE_INGEST_WORKERS": "3"},
    "no compression": {"SLUICE_INGEST_COMPRESSION": "none"},
    "snappy": {"SLUICE_INGEST_COMPRESSION": "snappy"},
    "zstd": {"SLUICE_INGEST_COMPRESSION": "zstd"},
    "linger 1 ms": {"SLUICE_INGEST_LINGER_MS": "1"},
    "linger 20 ms": {"SLUICE_INGEST_LINGER_MS": "20"},
}
ROWS = {
    "P1": re.compile(r"^\| P1 json, 100 records/request[^|]*\| ([^|]+) \|"),
    "P2": re.compile(r"^\| P2 json, 1 record/request[^|]*\| ([^|]+) \|"),
}
FACTS = {
    "ceiling": re.compile(r"^- Ceiling \(json\): ([\d,]+) records"),
    "floor": re.compile(r"^- Floor: ([\d,]+) requests"),
}


def run_median(text: str, heading: str, column: str) -> str:
    """The median of ``column`` over the clean windows (rows not marked ✗) of the run whose
    heading starts with ``heading``, as written in its report."""
    values: list[float] = []
    columns: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("### "):
            inside = line.startswith(heading)
            columns = []
            continue
        if not inside or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "#":
            columns = cells
        elif columns and column in columns and cells[0].isdigit() and "✗" not in line:
            values.append(float(cells[columns.index(column)].replace(",", "")))
    return f"{statistics.median(values):,.0f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", help="comma-separated names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest-variants.md")
    parser.add_argument(
        "--collate", action="store_true", help="only rebuild the table from the reports of an earlier run"
    )
    parser.add_argument("rest", nargs="*", help="more arguments for bench/ingest.py (after --)")
    args = parser.parse_args()
    chosen = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    runs_dir = args.out.parent / "variants"
    runs_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for number, name in enumerate(chosen):
        report = runs_dir / f"{number:02d}.md"
        command = [
            python, "bench/ingest.py", "--only", "p1,p2", "--formats", "json", "--shapes", "100",
            "--window", "5", "--windows", "3", "--warmup", "3", "--no-idle", "--out", str(report), *args.rest,
        ]  # fmt: skip
        if args.collate:
            returncode = 0
        else:
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
            returncode = subprocess.run(command, cwd=ROOT, env={**os.environ, **VARIANTS[name]}, check=False).returncode
        found = dict.fromkeys([*ROWS, *FACTS], "-")
        text = report.read_text() if report.exists() else ""
        for line in text.splitlines():
            for key, pattern in {**ROWS, **FACTS}.items():
                match = pattern.match(line)
                if match:
                    found[key] = match.group(1).strip()
        settings = ", ".join(f"`{k}={v}`" for k, v in VARIANTS[name].items()) or "-"
        status = "" if returncode == 0 else f" (exit {returncode})"
        p1 = run_median(text, "### P1 json 100:", "records / server CPU-s")
        p2 = run_median(text, "### P2 json 1 keep-alive:", "requests / server CPU-s")
        rows.append(
            f"| {name}{status} | {settings} | {p1} | {found['P1']} | {found['ceiling']} | {p2} | {found['P2']} | "
            f"{found['floor']} | [{report.name}](variants/{report.name}) |"
        )
    measured = f"Measured {started} with"
    if args.collate and args.out.exists():
        earlier = [line for line in args.out.read_text().splitlines() if line.startswith("Measured ")]
        measured = earlier[0].split(" with", 1)[0] + " with" if earlier else measured
    lines = [
        "# Ingest settings compared (`bench/ingest_variants.py`)",
        "",
        f"{measured} `.venv/bin/python bench/ingest_variants.py --out {args.out.relative_to(ROOT)}`"
        " (one `bench/ingest.py --only p1,p2 --formats json --shapes 100 --window 5` run per variant, each"
        " with its own ceiling and floor measured beside it; the ceiling's producer uses the variant's"
        " compression and linger too, and the floor the variant's server and worker count).",
        "",
        "| variant | environment | P1: records per server CPU-s | ÷ ceiling | ceiling (records/CPU-s) | "
        "P2: requests per server CPU-s | ÷ floor | floor (requests/CPU-s) | full report |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
