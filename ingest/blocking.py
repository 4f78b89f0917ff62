"""Where the async ingest view runs its blocking work (database, Redis).

Under the ASGI server, Django runs each request's synchronous code on a thread of its own
(asgiref's per-request ``ThreadSensitiveContext``), and database connections belong to a
thread: every request would open, and at its end drop, a database connection of its own
(~0.6 ms of CPU with SQLite's ``init_command`` alone, more with a network database).  So
ingest runs its blocking work on **one long-lived thread per worker process** instead,
keeping its connection between requests the way ``CONN_MAX_AGE`` would: reopened after
``CONNECTION_MAX_AGE`` seconds, and at once when an error left it unusable.

Anywhere else (Django's test ``Client`` driving the async view from a synchronous thread,
or WSGI), the work runs where Django runs synchronous code (``sync_to_async``), so it shares
that thread's connection and transaction, as a synchronous view would.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest

P = ParamSpec("P")
T = TypeVar("T")
Runner = Callable[..., Awaitable[T]]

CONNECTION_MAX_AGE = 60.0  # seconds

_lock = threading.Lock()
_executors: dict[int, ThreadPoolExecutor] = {}
_connection = threading.local()


def _executor() -> ThreadPoolExecutor:
    """The process's ingest thread, created at first use (after any fork: keyed by pid)."""
    pid = os.getpid()
    with _lock:
        executor = _executors.get(pid)
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-ingest")
            _executors[pid] = executor
        return executor


def _with_fresh_connection(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` on the ingest thread, after dropping a connection that is too old or that
    an error left unusable (what ``close_old_connections`` does around a request)."""
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.connection is not None:
        stale = getattr(_connection, "raw", None) is not conn.connection or (
            time.monotonic() - _connection.opened > CONNECTION_MAX_AGE
        )
        if stale or (conn.errors_occurred and not conn.is_usable()):
            conn.close()
    try:
        return fn(*args, **kwargs)
    finally:
        if conn.connection is not None and getattr(_connection, "raw", None) is not conn.connection:
            _connection.raw, _connection.opened = conn.connection, time.monotonic()


async def _on_ingest_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    # Context variables (the request id) travel with the call, as with sync_to_async.
    call = functools.partial(contextvars.copy_context().run, _with_fresh_connection, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor(), call)


async def _where_django_runs_sync(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await sync_to_async(fn)(*args, **kwargs)


def runner(request: HttpRequest) -> Runner:
    """How this request's blocking work is awaited (see the module's docstring)."""
    return _on_ingest_thread if isinstance(request, ASGIRequest) else _where_django_runs_sync
