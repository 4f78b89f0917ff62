"""The record every ingest benchmark sends: a realistic ~300 B air-quality reading (8 fields:
an ISO timestamp, two strings, three floats, two integers), its JSON Schema (draft-07, as the
Confluent and Apicurio serializers default to, with types, required fields and ranges) and
the same record's Avro schema (optional fields as ``["null", T]`` unions)."""

from __future__ import annotations

import json
from typing import Any

RECORD: dict[str, Any] = {
    "measured_at": "2026-11-26T14:03:27.518Z",
    "sensor": "berlin-mitte/building-07/floor-03/room-312/air-quality-2",
    "temperature_celsius": 21.537,
    "relative_humidity": 48.25,
    "pressure_hpa": 1013.42,
    "co2_ppm": 612,
    "battery_percent": 87,
    "status": "ok: all channels nominal; last calibration 2026-10-01 by field team 4",
}

# Three faults at once: a value out of range, a wrong type and a missing required field.
INVALID_RECORD: dict[str, Any] = {
    **{k: v for k, v in RECORD.items() if k != "sensor"},
    "relative_humidity": 120.5,
    "battery_percent": "87",
}

JSON_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Air-quality reading",
    "type": "object",
    "properties": {
        "measured_at": {"type": "string", "format": "date-time"},
        "sensor": {"type": "string", "minLength": 1, "maxLength": 128},
        "temperature_celsius": {"type": "number", "minimum": -60, "maximum": 150},
        "relative_humidity": {"type": "number", "minimum": 0, "maximum": 100},
        "pressure_hpa": {"type": "number", "minimum": 300, "maximum": 1100},
        "co2_ppm": {"type": "integer", "minimum": 0, "maximum": 40000},
        "battery_percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "status": {"type": "string", "maxLength": 256},
    },
    "required": ["measured_at", "sensor", "temperature_celsius", "relative_humidity", "battery_percent"],
    "additionalProperties": False,
}

AVRO_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "AirQualityReading",
    "namespace": "bench.sluice",
    "fields": [
        {"name": "measured_at", "type": "string"},
        {"name": "sensor", "type": "string"},
        {"name": "temperature_celsius", "type": "double"},
        {"name": "relative_humidity", "type": "double"},
        {"name": "pressure_hpa", "type": ["null", "double"], "default": None},
        {"name": "co2_ppm", "type": ["null", "int"], "default": None},
        {"name": "battery_percent", "type": "int"},
        {"name": "status", "type": ["null", "string"], "default": None},
    ],
}

# The same record as a Protobuf message (proto3; the optional fields as `optional`).
PROTOBUF_SCHEMA = """syntax = "proto3";
package bench.sluice;

message AirQualityReading {
  string measured_at = 1;
  string sensor = 2;
  double temperature_celsius = 3;
  double relative_humidity = 4;
  optional double pressure_hpa = 5;
  optional int32 co2_ppm = 6;
  int32 battery_percent = 7;
  optional string status = 8;
}
"""

FORMATS = ("json", "avro")


def body_for(records_per_request: int, record: dict[str, Any] = RECORD) -> bytes:
    """A request body as a device sends it: one object, or ``{"records": [...]}``."""
    if records_per_request == 1:
        return json.dumps(record).encode()
    return json.dumps({"records": [record] * records_per_request}).encode()


def record_bytes() -> int:
    """The record's size as compact JSON (what a JSON Schema stream writes to Kafka, less
    the 5-byte Confluent header)."""
    return len(json.dumps(RECORD, separators=(",", ":")).encode())
