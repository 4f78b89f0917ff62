"""The JSON lines formatter every Sluice process logs with (config.logs)."""

from __future__ import annotations

import json
import logging
import sys

from config.logs import JsonFormatter, RequestIdFilter
from config.request_id import _current


def record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("sluice.test").makeRecord(
        "sluice.test", logging.WARNING, __file__, 1, message, args, sys.exc_info() if exc else None, extra=extra
    )
    RequestIdFilter().filter(made)
    return made


def test_a_line_has_the_fixed_fields_and_the_known_context() -> None:
    line = json.loads(JsonFormatter().format(record("refused %s", "x", tenant="acme", device="d1", code="c", group="")))
    assert line.keys() == {"time", "level", "logger", "message", "process", "tenant", "device", "code"}
    assert line["message"] == "refused x"
    assert line["level"] == "WARNING"
    assert line["time"].endswith("+00:00")


def test_a_librarys_own_extras_are_left_out() -> None:
    # given what Django's request logging passes: the request itself, whose text has the query string
    class Request:
        def __str__(self) -> str:
            return "<ASGIRequest: GET '/api/v1/tenants/?access_token=secret-value'>"

    text = JsonFormatter().format(record("Unauthorized: %s", "/api/v1/tenants/", request=Request(), status_code=401))
    assert "secret-value" not in text
    assert "request" not in json.loads(text)


def test_the_current_request_id_and_an_exception_are_added() -> None:
    token = _current.set("req-12345678")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            made = record("failed", exc=True)
    finally:
        _current.reset(token)
    line = json.loads(JsonFormatter().format(made))
    assert line["request_id"] == "req-12345678"
    assert "ValueError: boom" in line["exception"]
