"""The Celery app.  The beat schedule is one dict, ``CELERY_BEAT_SCHEDULE`` in settings."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Where beat's heartbeat task (below) leaves its time; config.health reads it.
BEAT_KEY = "sluice:beat:last-heartbeat"

app = Celery("sluice")
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
