"""Sluice's application log: one JSON object a line, for every Sluice process.

Every line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message`` and
``process`` (the pid); a line about a request, a device or a provisioning action adds what is
known of ``request_id``, ``tenant``, ``group``, ``device``, ``outcome``, ``code``, ``status``,
``action``, ``actor``, ``object_type`` and ``object_id`` (passed as ``extra=`` to the logging
call; ``FIELDS`` is the whole list), and a logged exception adds ``exception`` (its traceback).

The standard library's ``logging`` with this small formatter rather than a JSON logging
library: the fields are a fixed, short list; orjson (already a dependency of ingest) writes
them; and the module imports nothing of Django, so the launcher (``platform/sluicectl``),
which runs before Django is configured, writes its own log with the same code.

What is never passed to a log call, by rule of every caller: private keys, client secrets,
tokens, passwords, CSR or PEM bodies, record payloads.  ``tests/platform/
test_state_after_a_full_run.py`` runs a full flow and greps every log file for them.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import orjson

# The ``extra=`` fields a line may carry, and only these: a library's own extras are left out
# (Django's ``django.request`` passes the request itself, whose text holds the query string,
# where a careless client may have put a token).
FIELDS = (
    "request_id", "tenant", "group", "device", "outcome", "code", "status",
    "action", "actor", "object_type", "object_id", "view", "worker", "exit_status",
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the fixed fields first, then those of ``FIELDS`` the record has."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        attributes = record.__dict__
        for key in FIELDS:
            value = attributes.get(key)
            if value is not None and value != "":
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class RequestIdFilter(logging.Filter):
    """Adds the current web request's id (config.request_id) to a line that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            from config.request_id import current_request_id

            request_id = current_request_id()
            if request_id:
                record.request_id = request_id
        return True


def json_file_handler(path: str) -> logging.Handler:
    """A handler appending JSON lines to ``path`` (the launcher's own log)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    return handler
