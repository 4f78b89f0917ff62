"""The beat task that rotates the token signing keys, on a state directory of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings

from config.celery import app
from config.env import load_runtime
from tenants.oauth import keys
from tenants.oauth.tasks import signing_keys_rotate_task


def test_beat_schedules_the_rotation_task_and_the_worker_knows_it() -> None:
    # given the beat schedule, then its key-rotation entry names a task the Celery app has
    app.loader.import_default_modules()
    task = settings.CELERY_BEAT_SCHEDULE["oauth-signing-keys-rotate"]["task"]
    assert task == signing_keys_rotate_task.name
    assert task in app.tasks


def test_the_task_creates_the_first_key_and_publishes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a state directory without any signing key
    runtime = load_runtime({"SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(tmp_path), "SLUICE_KEK": "task-test-kek"})
    monkeypatch.setattr(settings, "SLUICE_RUNTIME", runtime)

    # when the task runs twice
    first = signing_keys_rotate_task()
    second = signing_keys_rotate_task()

    # then one key exists and the JWKS names it; nothing is due yet, so nothing was rotated
    assert first == second == {"created": [], "retired": []}
    (key,) = keys.signing_keys(runtime)
    assert [k["kid"] for k in json.loads(keys.jwks_path(runtime).read_text())["keys"]] == [key.kid]
