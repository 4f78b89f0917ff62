"""Celery tasks of the PKI: load, call, report."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import shared_task

from certs.jobs import job_keys_purge_task, job_run_task
from certs.rotation import pki_rotate
from config.errors import DEPENDENCY_RETRY


@shared_task(name="certs.pki_rotate", **DEPENDENCY_RETRY)
def pki_rotate_task() -> dict[str, Any]:
    return asdict(pki_rotate())


__all__ = ["job_keys_purge_task", "job_run_task", "pki_rotate_task"]
