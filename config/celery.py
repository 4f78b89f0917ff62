"""The Celery app.  The beat schedule is one dict, ``CELERY_BEAT_SCHEDULE`` in settings."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

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
    from config.health import record_beat_heartbeat

    record_beat_heartbeat()
