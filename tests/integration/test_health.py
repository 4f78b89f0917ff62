"""/healthz reports each component as the application sees it."""

from __future__ import annotations

import pytest
from django.test import Client

from config.env import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def test_healthz_reports_every_component(services: Runtime, client: Client) -> None:
    # given Redis, Kafka and the registry up, but no Celery worker or beat in this test run
    # when the health endpoint is asked
    response = client.get("/healthz", secure=True)
    # then it names every component, the running ones ok, and refuses a 200 while any is down
    report = response.json()
    components = report["components"]
    assert set(components) == {"database", "redis", "kafka", "registry", "celery_worker", "celery_beat"}
    for name in ("database", "redis", "kafka", "registry"):
        assert components[name] == {"status": "ok"}, name
    assert components["celery_worker"]["status"] == "down"
    assert components["celery_worker"]["detail"]
    assert response.status_code == 503
    assert report["status"] == "degraded"
