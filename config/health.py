"""Component health as the application sees it: one function per dependency, run
concurrently with short timeouts, reported by /healthz and by ``sluice status``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from config.celery import BEAT_KEY, app
from config.env import Runtime
from devices.registry_client import registry_client_for
from ingest.kafka import kafka_cluster_check

# Beat schedules the heartbeat every 10 s; three missed beats mean it is down.
BEAT_MAX_AGE = 35.0


def _runtime() -> Runtime:
    return settings.SLUICE_RUNTIME


def _redis() -> redis.Redis:
    return redis.Redis.from_url(_runtime().redis_url(), socket_timeout=2, socket_connect_timeout=2)


def check_database() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return None


def check_redis() -> str | None:
    _redis().ping()
    return None


def check_kafka() -> str | None:
    return kafka_cluster_check(_runtime(), every_broker=True)


def check_registry() -> str | None:
    with registry_client_for(_runtime(), timeout=2) as client:
        client.get_subjects()
    return None


def check_celery_worker() -> str | None:
    replies = app.control.ping(timeout=1.0)
    return None if replies else "no worker answered a ping"


def check_celery_beat() -> str | None:
    raw = _redis().get(BEAT_KEY)
    if raw is None:
        return "no heartbeat from beat yet"
    age = time.time() - float(raw)
    return None if age <= BEAT_MAX_AGE else f"last heartbeat {age:.0f} s ago"


CHECKS: dict[str, Callable[[], str | None]] = {
    "database": check_database,
    "redis": check_redis,
    "kafka": check_kafka,
    "registry": check_registry,
    "celery_worker": check_celery_worker,
    "celery_beat": check_celery_beat,
}


def _run(check: Callable[[], str | None]) -> dict[str, str]:
    try:
        problem = check()
    except Exception as exc:  # noqa: BLE001 - a health check reports any failure, it never raises
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return {"status": "ok"} if problem is None else {"status": "down", "detail": problem}


# What /healthz repeats of the launcher's supervision (its state file): no log lines, which
# stay with ``sluice status``.
PROCESS_FIELDS = ("state", "since", "restarts", "crash_loop", "last_exit")


def launcher_processes() -> dict[str, dict[str, object]]:
    """Each process the launcher supervises, as its state file says (empty when the web app
    was not started by a launcher): ``running``, ``starting`` again after an exit, or
    ``restarting`` (waiting out its backoff), with its restarts and last exit."""
    try:
        recorded = json.loads((_runtime().run_dir / "launcher.json").read_text())
        supervision = recorded["supervision"]
        return {name: {k: seen.get(k) for k in PROCESS_FIELDS} for name, seen in supervision.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def platform_health() -> dict[str, object]:
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        results = dict(zip(CHECKS, pool.map(_run, CHECKS.values()), strict=True))
    processes = launcher_processes()
    healthy = all(r["status"] == "ok" for r in results.values()) and all(
        p["state"] == "running" for p in processes.values()
    )
    return {"status": "ok" if healthy else "degraded", "components": results, "processes": processes}


def healthz(_request: HttpRequest) -> JsonResponse:
    """200 when every component answers, 503 with the failing ones otherwise."""
    report = platform_health()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
