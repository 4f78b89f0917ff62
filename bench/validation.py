"""P4 micro-benchmark (issue 9): validation + encoding cost per ~300 B record, in one process.

    .venv/bin/python bench/validation.py --out bench/results/validation.md

(about 2-3 minutes; ``--quick`` for a smoke run of ~30 s.)  CPU-bound and single-threaded:
every figure is CPU time (``time.process_time_ns``) per record, the median of ``--repeats``
repeats with the range beside it, so other processes on the machine slow it less than wall
time would (they still share caches and the core).

What it measures, on the record of ``bench/ingestbench/workload.py``:

* today's path, through Sluice's own functions, with the schema compiled as the ingest
  workers compile it (``devices.registry._compile``): ``ingest.records.parse_body`` (orjson),
  ``records.validate`` (jsonschema-rs; for Avro, against the JSON Schema equivalent of the
  Avro schema) and ``LatestSchema.encode_all`` (orjson, or the Avro encoder compiled from
  the schema, ``devices.avro_encoder``, beside fastavro's writer that it replaced);
* what it replaced: python ``jsonschema``'s ``iter_errors`` with the validator built as the
  Django path built it, ``json.loads``/``json.dumps`` (the pure-Python Avro checker it also
  replaced is gone from the code; its last figure is in the report's history);
* the candidates: ``fastjsonschema``, ``jsonschema-rs`` (``is_valid``, ``validate``,
  ``iter_errors``, on a valid and on an invalid record; a batch of 100 validated as one
  array against validating each record), ``orjson`` against ``json`` for parsing and
  encoding, fastavro's own ``validate`` + writer, and the cost of handing a Python record
  to Rust (the call itself, and what the record's fields add when no keyword reads them:
  whether jsonschema-rs converts the instance up front or reads it in place);
* Protobuf (a third format, outside P4's targets): the same path for the same record as a
  proto3 message (``devices.protobuf``: the message's JSON Schema, then its constructor or
  ``json_format.ParseDict``);
* which drafts and keywords each JSON Schema library enforces (probes), and how each copes
  with a catastrophically backtracking ``pattern`` (each in a subprocess, killed after
  ``--regex-timeout`` seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The project's packages first; never this directory (``bench/ingest.py`` would shadow the
# ``ingest`` app).
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench"))]

from bench.ingestbench.workload import (  # noqa: E402
    AVRO_SCHEMA,
    INVALID_RECORD,
    JSON_SCHEMA,
    PROTOBUF_SCHEMA,
    RECORD,
    body_for,
)

BATCH = 100
D7 = "http://json-schema.org/draft-07/schema#"
D2019 = "https://json-schema.org/draft/2019-09/schema"
D2020 = "https://json-schema.org/draft/2020-12/schema"
CATASTROPHIC_SCHEMA = {"type": "string", "pattern": "^(a+)+$"}
CATASTROPHIC_INPUT = "a" * 30 + "!"


@dataclass(frozen=True)
class Timing:
    group: str
    name: str
    median_us: float
    low_us: float
    high_us: float
    note: str = ""

    @property
    def spread(self) -> float:
        """(max - min) / median over the repeats."""
        return (self.high_us - self.low_us) / self.median_us if self.median_us else 0.0


class Bench:
    def __init__(self, repeats: int, target_seconds: float) -> None:
        self.repeats = repeats
        self.target = target_seconds
        self.rows: list[Timing] = []

    def time(self, group: str, name: str, fn: Callable[[], object], per_call: int = 1, note: str = "") -> Timing:
        """CPU µs per record of ``fn`` (which handles ``per_call`` records)."""
        fn()  # warm: caches, lazy compilation
        number = 1
        while True:  # calibrate: one repeat takes about ``target`` seconds
            began = time.process_time_ns()
            for _ in range(number):
                fn()
            spent = (time.process_time_ns() - began) / 1e9
            if spent >= self.target / 5 or number >= 1 << 22:
                break
            number *= 4
        number = max(1, int(number * self.target / max(spent, 1e-6)))
        samples = []
        for _ in range(self.repeats):
            gc.collect()
            gc.disable()
            try:
                began = time.process_time_ns()
                for _ in range(number):
                    fn()
                spent_ns = time.process_time_ns() - began
            finally:
                gc.enable()
            samples.append(spent_ns / 1000 / (number * per_call))
        timing = Timing(group, name, statistics.median(samples), min(samples), max(samples), note)
        self.rows.append(timing)
        print(
            f"  {group:<28} {name:<70} {timing.median_us:9.2f} µs  ({timing.low_us:.2f}-{timing.high_us:.2f})",
            flush=True,
        )
        return timing


def setup_django(state: Path) -> None:
    """Sluice's modules need Django's settings; a scratch state directory keeps the user's
    platform (and its secrets) untouched."""
    os.environ["SLUICE_STATE_DIR"] = str(state)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def json_cases(bench: Bench) -> dict[str, Any]:
    import fastjsonschema
    import jsonschema_rs
    import orjson
    from confluent_kafka.schema_registry import Schema
    from jsonschema.validators import validator_for

    from devices.registry import JSON, _compile
    from ingest import records

    schema_str = json.dumps(JSON_SCHEMA)
    cls = validator_for(JSON_SCHEMA)  # as the Django path built it
    py_validator = cls(JSON_SCHEMA, format_checker=cls.FORMAT_CHECKER)
    latest = _compile("bench-value", 1, 1, Schema(schema_str, JSON))
    header = struct.pack(">bI", 0, 1)
    body1, body100 = body_for(1), body_for(BATCH)
    batch = [dict(RECORD) for _ in range(BATCH)]
    fast = fastjsonschema.compile(JSON_SCHEMA)
    fast_array = fastjsonschema.compile({"$schema": D7, "type": "array", "items": JSON_SCHEMA})
    rs = jsonschema_rs.validator_for(JSON_SCHEMA)
    rs_array = jsonschema_rs.validator_for({"$schema": D7, "type": "array", "items": JSON_SCHEMA})
    rs_object_only = jsonschema_rs.validator_for({"$schema": D7, "type": "object"})
    rs_true = jsonschema_rs.validator_for(True)

    g = "JSON: today (Sluice's code)"
    bench.time(
        g,
        "whole path, 1 record/request: parse_body + validate + encode_all",
        lambda: _today(records, latest, body1),
    )
    bench.time(g, f"whole path, {BATCH} records/request (per record)", lambda: _today(records, latest, body100), BATCH)
    bench.time(g, "parse_body, 1 record (orjson)", lambda: records.parse_body(body1))
    bench.time(g, f"parse_body, {BATCH} records (per record)", lambda: records.parse_body(body100), BATCH)
    parsed1 = records.parse_body(body1)
    bench.time(g, "validate, 1 valid record (jsonschema-rs)", lambda: records.validate(parsed1, latest))
    bench.time(g, "encode_all, 1 record (orjson + header)", lambda: latest.encode_all(parsed1.records))
    invalid = records.parse_body(json.dumps(INVALID_RECORD).encode())
    bench.time(
        g,
        "validate, 1 invalid record (3 errors, each with its pointer and message)",
        lambda: _raises(lambda _: records.validate(invalid, latest), None),
    )

    g = "JSON: what it replaced (python jsonschema, json)"
    bench.time(g, "jsonschema iter_errors (all errors), valid", lambda: list(py_validator.iter_errors(RECORD)))
    bench.time(
        g,
        "jsonschema iter_errors (all errors), invalid (3 errors)",
        lambda: list(py_validator.iter_errors(INVALID_RECORD)),
    )
    bench.time(g, "jsonschema is_valid, valid", lambda: py_validator.is_valid(RECORD))
    bench.time(
        g,
        "json.loads + jsonschema iter_errors + json.dumps + header, 1 record",
        lambda: _replaced(py_validator, header, body1),
    )

    g = "JSON: parse and encode"
    bench.time(g, "json.loads, 1 record", lambda: json.loads(body1))
    bench.time(g, "orjson.loads, 1 record", lambda: orjson.loads(body1))
    bench.time(g, f"json.loads, {BATCH} records (per record)", lambda: json.loads(body100), BATCH)
    bench.time(g, f"orjson.loads, {BATCH} records (per record)", lambda: orjson.loads(body100), BATCH)
    bench.time(
        g,
        "json.dumps compact, ensure_ascii=False + header",
        lambda: header + json.dumps(RECORD, ensure_ascii=False, separators=(",", ":")).encode(),
    )
    bench.time(g, "orjson.dumps + header", lambda: header + orjson.dumps(RECORD))

    g = "JSON: fastjsonschema"
    bench.time(g, "compiled validate, valid", lambda: fast(RECORD))
    bench.time(g, "compiled validate, invalid (raises at the first error)", lambda: _raises(fast, INVALID_RECORD))
    bench.time(g, f"batch of {BATCH}: one array validation (per record)", lambda: fast_array(batch), BATCH)
    bench.time(g, f"batch of {BATCH}: validate each record (per record)", lambda: [fast(r) for r in batch], BATCH)

    g = "JSON: jsonschema-rs"
    bench.time(g, "is_valid, valid", lambda: rs.is_valid(RECORD))
    bench.time(g, "validate, valid", lambda: rs.validate(RECORD))
    bench.time(g, "iter_errors, valid (list of none)", lambda: list(rs.iter_errors(RECORD)))
    bench.time(g, "is_valid, invalid", lambda: rs.is_valid(INVALID_RECORD))
    bench.time(
        g,
        "validate, invalid (raises at the first error)",
        lambda: _raises(rs.validate, INVALID_RECORD, jsonschema_rs.ValidationError),
    )
    bench.time(g, "iter_errors, invalid (all 3 errors)", lambda: list(rs.iter_errors(INVALID_RECORD)))
    bench.time(g, f"batch of {BATCH}: is_valid of one array (per record)", lambda: rs_array.is_valid(batch), BATCH)
    bench.time(
        g, f"batch of {BATCH}: is_valid of each record (per record)", lambda: [rs.is_valid(r) for r in batch], BATCH
    )
    bench.time(
        g,
        'Python -> Rust: is_valid against {"type": "object"}',
        lambda: rs_object_only.is_valid(RECORD),
        note="the conversion of the record, plus one type check",
    )
    bench.time(
        g,
        'Python -> Rust: is_valid of an empty object against {"type": "object"}',
        lambda: rs_object_only.is_valid({}),
        note="the call alone: the row above less this one is the conversion of the 8 fields",
    )
    bench.time(
        g,
        "Python -> Rust: is_valid against true",
        lambda: rs_true.is_valid(RECORD),
        note="may skip the conversion: compare with the rows above",
    )

    g = "JSON: candidate whole path"
    bench.time(
        g,
        "1 record: orjson.loads + jsonschema-rs is_valid + orjson.dumps",
        lambda: _lean_json(orjson, rs, header, body1, batch=False),
    )
    bench.time(
        g,
        f"{BATCH} records: orjson.loads + is_valid per record + orjson.dumps (per record)",
        lambda: _lean_json(orjson, rs, header, body100, batch=True),
        BATCH,
    )
    bench.time(
        g,
        "1 record: orjson.loads + fastjsonschema + orjson.dumps",
        lambda: _lean_json_fast(orjson, fast, header, body1, batch=False),
    )
    bench.time(
        g,
        f"{BATCH} records: orjson.loads + fastjsonschema per record + orjson.dumps (per record)",
        lambda: _lean_json_fast(orjson, fast, header, body100, batch=True),
        BATCH,
    )
    same = orjson.dumps(RECORD) == json.dumps(RECORD, ensure_ascii=False, separators=(",", ":")).encode()
    return {"orjson_same_bytes": same}


def _today(records: Any, latest: Any, body: bytes) -> list[bytes]:
    """What ``ingest.services.records_prepare`` does with a body, less the rate limits."""
    parsed = records.parse_body(body)
    records.validate(parsed, latest)
    return latest.encode_all(parsed.records)


def _replaced(validator: Any, header: bytes, body: bytes) -> list[bytes]:
    """The Django path's per-record work, with the libraries it used."""
    record = json.loads(body)
    errors = list(validator.iter_errors(record))
    if errors:
        raise AssertionError("the benchmark record is valid")
    return [header + json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()]


def _raises(fn: Callable[[Any], object], value: Any, error: type[Exception] = Exception) -> None:
    try:
        fn(value)
    except error:
        return
    raise AssertionError("expected a validation error")


def _lean_json(orjson: Any, rs: Any, header: bytes, body: bytes, *, batch: bool) -> list[bytes]:
    document = orjson.loads(body)
    items = document["records"] if batch else [document]
    for item in items:
        if not rs.is_valid(item):
            raise AssertionError("the benchmark record is valid")
    return [header + orjson.dumps(item) for item in items]


def _lean_json_fast(orjson: Any, fast: Any, header: bytes, body: bytes, *, batch: bool) -> list[bytes]:
    document = orjson.loads(body)
    items = document["records"] if batch else [document]
    for item in items:
        fast(item)
    return [header + orjson.dumps(item) for item in items]


def avro_cases(bench: Bench) -> None:
    import fastavro
    import fastavro.validation
    import orjson
    from confluent_kafka.schema_registry import Schema

    from devices.registry import AVRO, _compile
    from ingest import records

    parsed = fastavro.parse_schema(AVRO_SCHEMA)
    latest = _compile("bench-avro-value", 2, 1, Schema(json.dumps(AVRO_SCHEMA), AVRO))
    header = struct.pack(">bI", 0, 2)
    body1, body100 = body_for(1), body_for(BATCH)

    def writer(record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, record)
        return header + buffer.getvalue()

    g = "Avro: today (Sluice's code)"
    bench.time(
        g,
        "whole path, 1 record/request: parse_body + validate + encode_all",
        lambda: _today(records, latest, body1),
    )
    bench.time(g, f"whole path, {BATCH} records/request (per record)", lambda: _today(records, latest, body100), BATCH)
    parsed1 = records.parse_body(body1)
    bench.time(
        g,
        "validate, 1 valid record (jsonschema-rs, the Avro schema's JSON Schema)",
        lambda: records.validate(parsed1, latest),
    )
    bench.time(
        g,
        "encode_all, 1 record (the encoder compiled from the schema + header)",
        lambda: latest.encode_all(parsed1.records),
    )
    parsed100 = records.parse_body(body100)
    bench.time(g, f"encode_all, {BATCH} records (per record)", lambda: latest.encode_all(parsed100.records), BATCH)

    # What the compiled encoder replaced (2026-12-03): fastavro's writer for every record.
    g = "Avro: what the compiled encoder replaced (fastavro schemaless_writer)"
    interpreted = dataclasses.replace(latest, encoder=None)
    bench.time(
        g,
        "whole path, 1 record/request: parse_body + validate + encode_all",
        lambda: _today(records, interpreted, body1),
    )
    bench.time(
        g, f"whole path, {BATCH} records/request (per record)", lambda: _today(records, interpreted, body100), BATCH
    )
    bench.time(g, "encode_all, 1 record (fastavro + header)", lambda: interpreted.encode_all(parsed1.records))
    bench.time(g, f"encode_all, {BATCH} records (per record)", lambda: interpreted.encode_all(parsed100.records), BATCH)

    g = "Avro: fastavro's own"
    bench.time(
        g,
        "fastavro.validation.validate, valid",
        lambda: fastavro.validation.validate(RECORD, parsed, raise_errors=False),
    )
    bench.time(
        g,
        "fastavro.validation.validate, invalid",
        lambda: fastavro.validation.validate(INVALID_RECORD, parsed, raise_errors=False),
    )
    bench.time(
        g,
        "fastavro.validation.validate, valid, raise_errors=True",
        lambda: fastavro.validation.validate(RECORD, parsed),
        note="each union branch that does not match raises internally: slow",
    )
    bench.time(g, "schemaless_writer alone (it refuses wrong types, not extra fields)", lambda: writer(RECORD))
    bench.time(
        g,
        "validate (raise_errors=False) + schemaless_writer",
        lambda: fastavro.validation.validate(RECORD, parsed, raise_errors=False) and writer(RECORD),
    )
    bench.time(
        g,
        "1 record: orjson.loads + validate (raise_errors=False) + writer",
        lambda: _lean_avro(orjson, fastavro, parsed, writer, body1, batch=False),
    )
    bench.time(
        g,
        f"{BATCH} records: orjson.loads + validate (raise_errors=False) + writer (per record)",
        lambda: _lean_avro(orjson, fastavro, parsed, writer, body100, batch=True),
        BATCH,
    )


def protobuf_cases(bench: Bench) -> None:
    from confluent_kafka.schema_registry import Schema
    from google.protobuf import json_format, message_factory

    from devices.registry import PROTOBUF, _compile
    from ingest import records

    latest = _compile("bench-protobuf-value", 3, 1, Schema(PROTOBUF_SCHEMA, PROTOBUF))
    body1, body100 = body_for(1), body_for(BATCH)
    camel = {"".join(w.capitalize() if i else w for i, w in enumerate(k.split("_"))): v for k, v in RECORD.items()}
    body1_camel = json.dumps(camel).encode()
    message_class = message_factory.GetMessageClass(latest.parsed)

    g = "Protobuf: Sluice's code (not a P4 target: a third format)"
    bench.time(
        g,
        "whole path, 1 record/request: parse_body + validate + encode_all",
        lambda: _today(records, latest, body1),
    )
    bench.time(g, f"whole path, {BATCH} records/request (per record)", lambda: _today(records, latest, body100), BATCH)
    parsed1 = records.parse_body(body1)
    bench.time(g, "validate, 1 valid record (jsonschema-rs, the message's JSON Schema)",
               lambda: records.validate(parsed1, latest))  # fmt: skip
    bench.time(
        g,
        "encode_all, 1 record, fields by proto name (the message's constructor + header)",
        lambda: latest.encode_all(parsed1.records),
    )
    camel1 = records.parse_body(body1_camel)
    bench.time(
        g,
        "encode_all, 1 record, fields by JSON name (renamed for the constructor + header)",
        lambda: latest.encode_all(camel1.records),
    )
    bench.time(
        g,
        "what it replaced for JSON names: json_format.ParseDict + SerializeToString, 1 record",
        lambda: json_format.ParseDict(RECORD, message_class()).SerializeToString(),
    )


def _lean_avro(
    orjson: Any, fastavro: Any, parsed: Any, writer: Callable[[Any], bytes], body: bytes, *, batch: bool
) -> list[bytes]:
    document = orjson.loads(body)
    items = document["records"] if batch else [document]
    for item in items:
        if not fastavro.validation.validate(item, parsed, raise_errors=False):
            raise AssertionError("the benchmark record is valid")
    return [writer(item) for item in items]


# -- drafts, keywords and regular expressions ------------------------------------------

PROBES: list[tuple[str, Any, Any]] = [
    (
        "no `$schema`: `dependencies` enforced (draft-07 semantics; ignored from 2019-09)",
        {"dependencies": {"a": ["b"]}},
        {"a": 1},
    ),
    ("no `$schema`: tuple `items` enforced (draft-07 semantics)", {"items": [{"type": "integer"}]}, ["x"]),
    ("draft-07: `format: date-time`", {"$schema": D7, "type": "string", "format": "date-time"}, "yesterday"),
    (
        "draft-07: `if`/`then`",
        {
            "$schema": D7,
            "if": {"properties": {"k": {"const": "t"}}, "required": ["k"]},
            "then": {"required": ["celsius"]},
        },
        {"k": "t"},
    ),
    ("draft-07: `propertyNames`", {"$schema": D7, "propertyNames": {"maxLength": 3}}, {"long": 1}),
    ("draft-07: `contains`", {"$schema": D7, "contains": {"type": "integer"}}, ["x"]),
    (
        "draft-07: local `$ref` to `definitions`",
        {"$schema": D7, "definitions": {"p": {"type": "integer"}}, "properties": {"a": {"$ref": "#/definitions/p"}}},
        {"a": "x"},
    ),
    (
        "draft-07: `pattern` with `\\p{L}` (ECMA-262 unicode class)",
        {"$schema": D7, "type": "string", "pattern": "^\\p{L}+$"},
        "abc1",
    ),
    ("2019-09: `dependentRequired`", {"$schema": D2019, "dependentRequired": {"a": ["b"]}}, {"a": 1}),
    (
        "2019-09: `unevaluatedProperties`",
        {"$schema": D2019, "properties": {"a": {}}, "unevaluatedProperties": False},
        {"a": 1, "b": 2},
    ),
    ("2020-12: `prefixItems`", {"$schema": D2020, "prefixItems": [{"type": "integer"}]}, ["x"]),
]


def _probe_python(schema: Any, instance: Any) -> bool:
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(instance)


def _probe_fast(schema: Any, instance: Any) -> bool:
    import fastjsonschema

    try:
        fastjsonschema.compile(schema)(instance)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def _probe_rs(schema: Any, instance: Any) -> bool:
    import jsonschema_rs

    return jsonschema_rs.validator_for(schema).is_valid(instance)


LIBRARIES: dict[str, Callable[[Any, Any], bool]] = {
    "jsonschema (today: validator_for + FORMAT_CHECKER)": _probe_python,
    "fastjsonschema (compile)": _probe_fast,
    "jsonschema-rs (validator_for)": _probe_rs,
}


def probes() -> list[tuple[str, dict[str, str]]]:
    out = []
    for label, schema, bad in PROBES:
        verdicts = {}
        for library, check in LIBRARIES.items():
            try:
                verdicts[library] = "ignored (accepted)" if check(schema, bad) else "**enforced**"
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                verdicts[library] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:70]}"
        out.append((label, verdicts))
    return out


REGEX_CASES = {
    "jsonschema (python `re`)": ("from jsonschema import Draft7Validator as V; v = V(SCHEMA)", "v.is_valid(TEXT)"),
    "fastjsonschema (python `re`)": (
        "import fastjsonschema; v = fastjsonschema.compile(SCHEMA)\n"
        "def check(t):\n    try:\n        v(t); return True\n    except fastjsonschema.JsonSchemaValueException:\n"
        "        return False",
        "check(TEXT)",
    ),
    "jsonschema-rs default (fancy-regex)": (
        "import jsonschema_rs; v = jsonschema_rs.validator_for(SCHEMA)",
        "v.is_valid(TEXT)",
    ),
    "jsonschema-rs `RegexOptions()` (regex crate, linear time)": (
        "import jsonschema_rs; v = jsonschema_rs.validator_for(SCHEMA, pattern_options=jsonschema_rs.RegexOptions())",
        "v.is_valid(TEXT)",
    ),
    "jsonschema-rs `FancyRegexOptions(backtrack_limit=10000)`": (
        "import jsonschema_rs\nv = jsonschema_rs.validator_for(SCHEMA, "
        "pattern_options=jsonschema_rs.FancyRegexOptions(backtrack_limit=10000))",
        "v.is_valid(TEXT)",
    ),
}


def catastrophic_regex(timeout: float) -> list[tuple[str, str]]:
    """Each library in its own subprocess (a backtracking ``re`` holds the GIL and ignores
    signals until it ends), killed after ``timeout`` seconds."""
    results = []
    for library, (setup, call) in REGEX_CASES.items():
        code = (
            f"import json, time\nSCHEMA = {CATASTROPHIC_SCHEMA!r}\nTEXT = {CATASTROPHIC_INPUT!r}\n{setup}\n"
            f"began = time.perf_counter()\ntry:\n    verdict = 'valid' if {call} else 'invalid'\n"
            "except Exception as exc:\n    verdict = f'error: {type(exc).__name__}: {str(exc)[:80]}'\n"
            "print(json.dumps([verdict, (time.perf_counter() - began) * 1000]))\n"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            results.append((library, f"**still running after {timeout:.0f} s: killed** (a worker would hang)"))
            continue
        if done.returncode != 0:
            results.append((library, f"failed: {done.stderr.strip().splitlines()[-1][:120]}"))
            continue
        verdict, ms = json.loads(done.stdout.strip().splitlines()[-1])
        results.append((library, f"{verdict} in {ms:.3f} ms"))
    return results


# -- report ----------------------------------------------------------------------------


def versions() -> str:
    from importlib.metadata import version

    names = ("jsonschema", "fastjsonschema", "jsonschema_rs", "orjson", "fastavro")
    return ", ".join(f"{name} {version(name)}" for name in names)


def report(
    bench: Bench,
    extra: dict[str, Any],
    drafts: list[tuple[str, dict[str, str]]],
    regex: list[tuple[str, str]],
    command: str,
    seconds: float,
) -> str:
    spreads = sorted(t.spread for t in bench.rows)
    lines = [
        "# P4: validation + encoding per record (micro-benchmark)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `{command}` ({seconds:.0f} s) on "
        f"{_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; {versions()}.",
        "",
        f"One process, CPU time per record (`process_time`), median of {bench.repeats} repeats of about "
        f"{bench.target:.2f} s each, range in brackets. Noise: the range was within "
        f"{spreads[len(spreads) // 2] * 100:.0f} % of the median for half the rows and within "
        f"{spreads[-1] * 100:.0f} % for the worst row (other engineers' work shares the machine).",
        "",
        f"Record: {len(json.dumps(RECORD, separators=(',', ':')))} B of compact JSON, 8 fields (ISO timestamp, "
        "two strings, three floats, two integers); JSON Schema draft-07 with types, 5 required fields, ranges, "
        "`maxLength`, `format: date-time`, `additionalProperties: false`; Avro record with 3 optional "
        '(`["null", T]`) fields. The invalid record has 3 faults (range, type, missing field). '
        "Target (P4): ≤ 10 µs per record for validation + encoding.",
        "",
    ]
    group = None
    for t in bench.rows:
        if t.group != group:
            group = t.group
            lines += ["", f"### {group}", "", "| case | µs per record | range | note |", "|---|---|---|---|"]
        lines.append(f"| {t.name} | **{t.median_us:.2f}** | {t.low_us:.2f}-{t.high_us:.2f} | {t.note} |")
    lines += [
        "",
        f"`orjson.dumps(record)` gives the same bytes as today's `json.dumps(..., ensure_ascii=False, "
        f"separators=(',', ':'))` for this record: **{extra.get('orjson_same_bytes')}**. Semantics to keep in mind: "
        "orjson refuses NaN/Infinity and numbers that overflow a double (as `parse_body` does), but reads an "
        "integer beyond 64 bits as a float (`json` keeps it exact), so a huge integer would be rounded silently.",
        "",
        "## Drafts and keywords: is the bad instance refused?",
        "",
        "Apicurio and Confluent's JSON Schema serializers default to draft-07 when a schema names no `$schema`. "
        "`jsonschema.validators.validator_for` (today's path) defaults to the *latest* draft (2020-12), which "
        "ignores draft-07's `dependencies` and tuple `items`: the first two rows show which default each "
        "library picks.",
        "",
        "| probe | " + " | ".join(LIBRARIES) + " |",
        "|---|" + "---|" * len(LIBRARIES),
    ]
    for label, verdicts in drafts:
        lines.append(f"| {label} | " + " | ".join(verdicts[lib] for lib in LIBRARIES) + " |")
    lines += [
        "",
        "Declared drafts: python `jsonschema` 3, 4, 6, 7, 2019-09, 2020-12 (format checks need optional "
        "packages: without `rfc3339-validator`, `date-time` is not checked at all); `fastjsonschema` 4, 6 and 7 "
        "only; `jsonschema-rs` 4, 6, 7, 2019-09, 2020-12.",
        "",
        f'## Catastrophic backtracking: `{json.dumps(CATASTROPHIC_SCHEMA)}` on `"a" * 30 + "!"`',
        "",
        "| library | outcome |",
        "|---|---|",
    ]
    lines += [f"| {library} | {outcome} |" for library, outcome in regex]
    return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="repeats per case (the median is reported)")
    parser.add_argument("--seconds", type=float, default=0.2, help="CPU seconds per repeat")
    parser.add_argument("--regex-timeout", type=float, default=10.0, help="seconds before a regex probe is killed")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 repeats of 0.03 s, 3 s regex timeout")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.seconds, args.regex_timeout = 5, 0.03, 3.0
    python = ".venv/bin/python" if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve() else "python"
    command = " ".join([python, "bench/validation.py", *sys.argv[1:]])
    began = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="sluice-bench-validation-"))
    try:
        setup_django(state)
        bench = Bench(args.repeats, args.seconds)
        extra = json_cases(bench)
        avro_cases(bench)
        protobuf_cases(bench)
        drafts = probes()
        regex = catastrophic_regex(args.regex_timeout)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    text = report(bench, extra, drafts, regex, command, time.monotonic() - began)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
