"""The Celery app.  The beat schedule is one dict, ``CELERY_BEAT_SCHEDULE`` in settings."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from celery import Celery, Task
from django.conf import settings
from django.db import InterfaceError, OperationalError

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
