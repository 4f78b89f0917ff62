"""Avro binary encoders compiled from a schema: pure, no I/O.

fastavro's ``schemaless_writer`` interprets the parsed schema for every record: about 2.4 µs
of fixed cost per call, 0.7 µs per field and 1 µs more per union (``bench/validation.py``:
11-13 µs for the benchmark's 8-field record, alone over the 10 µs budget of issue 9's P4).
Ingest only ever encodes records that already passed the stream's validator (the Avro
schema's JSON Schema, ``devices.avro_json``): every required field is there, every value has
its branch's type and fits its range, no field is unknown, and nothing is ``bytes``.  So the
encoder can be a straight-line Python function generated once per schema, with no checks of
its own: 2 µs for the same record.

What is compiled: ``null``, ``boolean``, ``int``, ``long``, ``float``, ``double``,
``string``, ``enum``, ``array``, ``map``, records (named, recursive ones included), unions of
``null`` and one other type (the optional field: ``None`` is the null branch, anything else
the other), and logical types over these (their JSON form is the underlying value, which
fastavro writes unchanged).  For any other schema (``bytes``, ``fixed``, ``decimal``, unions
of two or more non-null types, whose branch fastavro picks by trying each) ``compile_encoder``
returns None and the caller keeps fastavro.  The output is byte-for-byte fastavro's:
``tests/devices/test_avro_encoder.py`` compares both over generated records.

One difference, on purpose: JSON's ``612.0`` is an integer to the validator, and fastavro
writes it as 612 in an ``int`` field but refuses it in a ``["null", "int"]`` union (ingest
answered that record 422, "could not be encoded", although the validator had accepted it);
the compiled encoder writes 612 in both.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

Encoder = Callable[[Any], bytes]

PRIMITIVE_NUMBERS = ("int", "long")
# Zig-zag varints of the small integers, and of the lengths of short strings and blocks,
# looked up instead of computed.
SMALL = 4096


class Unsupported(Exception):
    """The schema holds something this compiler leaves to fastavro."""


def zigzag(n: int) -> bytes:
    """Avro's ``long``: zig-zag, then a little-endian base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


LONGS = {n: zigzag(n) for n in range(-SMALL, SMALL)}
LENGTHS = [zigzag(n) for n in range(SMALL)]


def _long(n: Any) -> bytes:
    # A JSON number like 5.0 passes an "integer" schema; fastavro writes it as 5.
    if n.__class__ is not int:
        n = int(n)
    return LONGS.get(n) or zigzag(n)


def _length(n: int) -> bytes:
    return LENGTHS[n] if n < SMALL else zigzag(n)


class _Compiler:
    """Turns a parsed schema into Python source: each type becomes an expression that
    evaluates to its bytes (a value is read into a local once, so an expression may name it
    twice); records, arrays and maps become functions of their own."""

    def __init__(self) -> None:
        self.functions: list[list[str]] = []
        self.records: dict[str, str] = {}  # a record's full name -> its function
        self.referenced: set[str] = set()  # records named again after their first use
        self.named: dict[str, Any] = {}  # every named type seen, by full name
        self.constants: dict[str, Any] = {}
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def constant(self, value: Any) -> str:
        name = self.fresh("K")
        self.constants[name] = value
        return name

    def record_body(self, schema: dict[str, Any], first: str = "") -> list[str]:
        """Lines that read each field of the record ``r`` into a local, then return the
        record's bytes (after ``first``, an expression, when given)."""
        body, parts = [], [first] if first else []
        for field in schema["fields"]:
            value = self.fresh("v")
            name = repr(field["name"])
            if "default" in field:
                body.append(f"    {value} = r.get({name}, {self.constant(field['default'])})")
            else:
                body.append(f"    {value} = r[{name}]")
            part = self.expression(field["type"], value)
            if part != "b''":
                parts.append(part)
        if not parts:
            return [*body, "    return b''"]
        if len(parts) == 1:
            return [*body, f"    return {parts[0]}"]
        return [*body, f"    return b''.join(({', '.join(parts)}))"]

    def record(self, schema: dict[str, Any], *, build: bool = True) -> str:
        """The function of the record ``schema``, built at its first use (``build=False``:
        only named, for the top-level record, whose body ``encoder_source`` inlines and
        which needs a function of its own only if it refers to itself)."""
        fullname = str(schema["name"])
        if fullname in self.records:
            self.referenced.add(fullname)
        else:
            function = self.fresh("record")
            self.records[fullname] = function  # named before its body is built: recursion finds it
            self.named[fullname] = schema
            if build:
                self.functions.append([f"def {function}(r):", *self.record_body(schema)])
        return self.records[fullname]

    def expression(self, schema: Any, x: str) -> str:
        """An expression for the bytes of the value in the local ``x`` under ``schema``."""
        if isinstance(schema, str):
            return self.primitive(schema, x)
        if isinstance(schema, list):
            return self.union(schema, x)
        if not isinstance(schema, dict):
            raise Unsupported(f"not an Avro schema: {schema!r}")
        kind = schema.get("type")
        if kind in ("record", "error"):
            return f"{self.record(schema)}({x})"
        if kind == "enum":
            self.named[str(schema["name"])] = schema
            table = self.constant({symbol: zigzag(i) for i, symbol in enumerate(schema["symbols"])})
            return f"{table}[{x}]"
        if kind == "array":
            function, item = self.fresh("array"), self.fresh("i")
            element = self.expression(schema["items"], item)
            self.functions.append([
                f"def {function}(x):",
                "    if not x:",
                "        return b'\\x00'",
                f"    return b''.join((L(len(x)), *[{element} for {item} in x], b'\\x00'))",
            ])  # fmt: skip
            return f"{function}({x})"
        if kind == "map":
            function, key, item = self.fresh("map"), self.fresh("k"), self.fresh("i")
            entry = f"{self.primitive('string', key)} + {self.expression(schema['values'], item)}"
            self.functions.append([
                f"def {function}(x):",
                "    if not x:",
                "        return b'\\x00'",
                f"    return b''.join((L(len(x)), *[{entry} for {key}, {item} in x.items()], b'\\x00'))",
            ])  # fmt: skip
            return f"{function}({x})"
        if kind == "fixed":
            raise Unsupported("fixed")
        if isinstance(kind, str | list | dict):
            # {"type": "long", "logicalType": ...}: the JSON form is the underlying value.
            return self.expression(kind, x)
        raise Unsupported(f"not an Avro schema: {schema!r}")

    def primitive(self, name: str, x: str) -> str:
        if name == "null":
            return "b''"
        if name == "boolean":
            return f"(b'\\x01' if {x} else b'\\x00')"
        if name in PRIMITIVE_NUMBERS:
            return f"N({x})"
        if name == "float":
            return f"F({x})"
        if name == "double":
            return f"D({x})"
        if name == "string":
            encoded = self.fresh("s")
            return f"L(len({encoded} := {x}.encode())) + {encoded}"
        if name == "bytes":
            raise Unsupported("bytes")
        if name in self.named:
            return self.expression(self.named[name], x)
        raise Unsupported(f"unknown type {name!r}")

    def union(self, branches: list[Any], x: str) -> str:
        nulls = [i for i, branch in enumerate(branches) if branch == "null"]
        if len(branches) != 2 or len(nulls) != 1:  # exactly null and one other type
            raise Unsupported("a union other than null and one type")
        other = 1 - nulls[0]
        value = self.expression(branches[other], x)
        present = repr(zigzag(other)) if value == "b''" else f"{zigzag(other)!r} + {value}"
        return f"({zigzag(nulls[0])!r} if {x} is None else {present})"


def encoder_source(parsed: Any, prefix: bytes = b"") -> tuple[str, dict[str, Any]]:
    """The generated module's source and the constants it reads (for tests and debugging)."""
    compiler = _Compiler()
    if isinstance(parsed, dict) and parsed.get("type") in ("record", "error"):
        function = compiler.record(parsed, build=False)
        top = ["def encode(r):", *compiler.record_body(parsed, first="PREFIX")]
        if str(parsed["name"]) in compiler.referenced:  # a recursive schema: its nested records
            compiler.functions.append([f"def {function}(r):", *compiler.record_body(parsed)])
    else:
        top = ["def encode(r):", f"    return PREFIX + {compiler.expression(parsed, 'r')}"]
    lines = [line for function in compiler.functions for line in (*function, "")] + top
    namespace = {**compiler.constants, "PREFIX": prefix, "N": _long, "L": _length, "F": struct.Struct("<f").pack,
                 "D": struct.Struct("<d").pack}  # fmt: skip
    return "\n".join(lines) + "\n", namespace


def compile_encoder(parsed: Any, prefix: bytes = b"") -> Encoder | None:
    """A function writing a record of the fastavro-parsed schema ``parsed`` in Avro binary
    (schemaless), exactly as ``fastavro.schemaless_writer`` would, after ``prefix`` (the
    Confluent wire format's magic byte and schema id); None when the schema holds something
    left to fastavro (module doc)."""
    try:
        source, namespace = encoder_source(parsed, prefix)
    except Unsupported:
        return None
    exec(compile(source, "<avro encoder>", "exec"), namespace)  # noqa: S102 - source generated from a parsed schema; names and literals only via repr
    encoder: Encoder = namespace["encode"]
    return encoder
