"""CPU per read of a subject's latest schema version, the read each ingest worker makes for
every subject it serves once per ``LATEST_SCHEMA_TTL`` (``devices.registry._fetch``): with a
registry client built per read (before) and with the process's kept client (after, what
``devices.registry.registry_client`` hands out).

Needs a running platform (its registry) on the state directory and port offset given:

    SLUICE_STATE_DIR=/tmp/mb-state SLUICE_PORT_OFFSET=47000 platform/bin/sluice up   # elsewhere
    PYTHONPATH=. SLUICE_STATE_DIR=/tmp/mb-state SLUICE_PORT_OFFSET=47000 \\
        DJANGO_SETTINGS_MODULE=config.settings .venv/bin/python bench/registry_read.py
"""

from __future__ import annotations

import json
import logging
import resource

import django

django.setup()

from django.conf import settings  # noqa: E402 - after django.setup()

from devices import registry  # noqa: E402
from devices.registry import LatestSchema, schema_register, value_subject  # noqa: E402

READS = 30


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    subject = value_subject("iot.registry-read.eu.bench")
    schema = {"type": "object", "properties": {"celsius": {"type": "number"}}}
    schema_register(subject=subject, schema_str=json.dumps(schema), schema_type="JSON")

    def client_per_read() -> LatestSchema:
        found = registry.new_registry_client(settings.SLUICE_RUNTIME).get_latest_version(subject)
        return registry._compile(subject, found.schema_id, found.version, found.schema)

    def kept_client() -> LatestSchema:
        return registry._fetch(subject)

    for name, read in (("client per read (before)", client_per_read), ("kept client (after)", kept_client)):
        read()
        started = cpu_seconds()
        for _ in range(READS):
            read()
        print(f"{name}: {(cpu_seconds() - started) / READS * 1000:.1f} ms of CPU per read")


if __name__ == "__main__":
    main()
