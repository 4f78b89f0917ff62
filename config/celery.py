"""The Celery app.  The beat schedule is one dict, ``CELERY_BEAT_SCHEDULE`` in settings."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from celery import Celery, Task, signals
from django.conf import settings
from django.db import InterfaceError, OperationalError

from config import instruments

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
log = logging.getLogger("sluice.celery")

# Where beat's heartbeat task (below) leaves its time; config.health reads it.
BEAT_KEY = "sluice:beat:last-heartbeat"

# A task that found the database unreachable runs again this many seconds later, for up to
# an hour: short enough that work resumes within DATABASE_RETRY_SECONDS of the database's
# return, whatever backoff the task uses for its own failures (Kafka, the registry).
DATABASE_RETRY_SECONDS = 5
DATABASE_RETRIES = 720


class SluiceTask(Task):
    """Every Sluice task: a database that does not answer (stopped, restarting, out of
    connections) is a reason to retry, never a lost task."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            log.warning("task %s: the database is unavailable (%s); retrying in %d s", self.name,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                        DATABASE_RETRY_SECONDS)  # fmt: skip
            # Celery's Django fixup drops the broken connection after the task; the retry
            # opens a new one.
            raise self.retry(exc=exc, countdown=DATABASE_RETRY_SECONDS, max_retries=DATABASE_RETRIES) from None


@signals.setup_logging.connect
def _logging_as_django_configures_it(**_kwargs: Any) -> None:
    """A receiver here tells Celery's worker and beat not to set up logging of their own: the
    JSON lines of settings.LOGGING (config.logs), which Django's setup applies, stay."""
    from logging.config import dictConfig

    dictConfig(settings.LOGGING)


app = Celery("sluice", task_cls=SluiceTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="sluice.ping")
def ping(value: str = "pong") -> str:
    """Round trip through the broker and a worker; used by tests and operators."""
    return value


@app.task(name="sluice.heartbeat", ignore_result=True)
def heartbeat() -> None:
    """Scheduled by beat; proves beat and a worker are both alive (see config.health)."""
    redis.Redis.from_url(settings.SLUICE_RUNTIME.redis_url(), socket_timeout=2, socket_connect_timeout=2).set(
        BEAT_KEY, str(time.time()), ex=3600
    )


# -- metrics: every task's outcome and run time (config.instruments) ----------------------

# task id -> perf_counter at its start, in the process that runs it (a prefork child runs one
# task at a time; the bound keeps a lost postrun from growing it).
_started: dict[str, float] = {}
_MAX_STARTED = 10_000
# Celery's final states of a run, as the metric's outcomes.
_OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        if len(_started) >= _MAX_STARTED:
            _started.clear()
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: Task | None = None, state: str | None = None, **_: Any) -> None:
    """Counted once per run, when it ended: ``state`` is SUCCESS, FAILURE or RETRY (what
    task_failure and task_retry also announce, earlier)."""
    started = _started.pop(task_id, None) if task_id is not None else None
    name = getattr(task, "name", None) or "unknown"
    try:
        instruments.CELERY_TASKS.labels(task=name, outcome=_OUTCOMES.get(state or "", "failure")).inc()
        if started is not None:
            instruments.CELERY_TASK_DURATION.labels(task=name).observe(time.perf_counter() - started)
    except Exception:  # metrics never fail a task
        log.warning("could not count task %s", name, exc_info=True)
