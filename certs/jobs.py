"""Bulk work as jobs: a device import or a certificate issuance for many devices, started by
a request that answers at once (202) and run by a Celery task (``certs.tasks.job_run_task``)
that reports its progress on the ``Job`` row, which the API and the console poll.

A job works through its items in chunks of ``CHUNK`` with the synchronous services
(``device_bulk_import``, ``certificates_issue_bulk``), so every item gets exactly the checks
the synchronous endpoints make.  Unlike those endpoints a job is not all or nothing: an item
refused is counted in ``failed`` and reported in ``errors`` (its JSON pointer, code and
message; the first ``ERRORS_KEPT``), the other items are done.  ``done`` moves after each
chunk; a task that runs again (a worker lost, the database back) resumes at ``done``.

An issuance item without a CSR gets a key Sluice generates.  The job row never holds one:
each chunk's generated keys (with their chains) are sealed together into a ``JobKeys`` row
(AES-256-GCM under a key derived from the key-encryption key, the job and chunk bound in as
associated data) in the same transaction as the certificates and the progress, so a chunk
done again after a crash neither loses nor repeats a key.  The job's creator collects them
once (``job_keys_collect``: unsealed, then deleted); uncollected ones are deleted
``KEYS_TTL`` after the job ended (``job_keys_purge``, hourly on beat)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from celery import shared_task
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from certs import services as cert_services
from certs.models import Job, JobKeys
from config.errors import Conflict, Gone, InvalidInput, NotFound, PayloadTooLarge, PermissionDenied, SluiceError
from devices import services as device_services
from tenants.audit import Actor, audit_record
from tenants.models import Tenant

log = logging.getLogger("sluice.jobs")

CHUNK = 50
ERRORS_KEPT = 100
# How long a job's generated keys wait for their collector after the job ended.
KEYS_TTL = dt.timedelta(hours=24)


def job_limit(kind: str) -> int:
    if kind == Job.Kind.DEVICE_IMPORT:
        return int(settings.SLUICE_BULK_IMPORT_MAX_ROWS)
    return cert_services.BULK_MAX


def _pointer_root(kind: str) -> str:
    return "/rows" if kind == Job.Kind.DEVICE_IMPORT else "/items"


def job_start(*, actor: Actor, tenant: Tenant, kind: str, items: list[dict[str, Any]]) -> Job:
    """Record the job and queue its task once the row is committed.  What can be refused
    without doing the work is refused here, with a clear code: no items, too many, an item
    that is not an object, and (issuance) an item without a CSR."""
    if kind not in Job.Kind.values:
        raise InvalidInput(f"Unknown job kind '{kind}'.", code="unknown_job_kind")
    limit = job_limit(kind)
    if len(items) > limit:
        raise PayloadTooLarge(f"A job takes at most {limit} items; this one has {len(items)}.")
    if not items:
        raise InvalidInput("The job has no items.", fields=[{"pointer": _pointer_root(kind), "code": "empty",
                                                              "message": "At least one item."}])  # fmt: skip
    root = _pointer_root(kind)
    errors = [{"pointer": f"{root}/{i}", "code": "invalid", "message": "Each item must be an object."}
              for i, item in enumerate(items) if not isinstance(item, dict)]  # fmt: skip
    if errors:
        bad = len({e["pointer"].split("/")[2] for e in errors})
        raise InvalidInput(f"{bad} item(s) are invalid; no job was started.", fields=errors)
    with transaction.atomic():
        job = Job.objects.create(tenant=tenant, kind=kind, total=len(items), input=items, created_by=actor.user,
                                 created_by_label=actor.label)  # fmt: skip
        audit_record(actor=actor, tenant=tenant, action="job.start", obj=job,
                     after={"kind": kind, "total": len(items)})  # fmt: skip
        job_id = job.pk
        transaction.on_commit(lambda: _queue(job_id))
    return job


def _queue(job_id: int) -> None:
    job_run_task.delay(job_id)


def _rebase(error: dict[str, str], offset: int) -> dict[str, str]:
    """``/rows/3/group`` of a chunk starting at item 100 is ``/rows/103/group`` of the job."""
    parts = error.get("pointer", "").split("/")
    if len(parts) > 2 and parts[2].isdigit():
        parts[2] = str(int(parts[2]) + offset)
    return {**error, "pointer": "/".join(parts)}


def _each(root: str, offset: int, count: int, error: SluiceError) -> list[dict[str, str]]:
    return [{"pointer": f"{root}/{offset + i}", "code": error.code, "message": error.message} for i in range(count)]


def _run_chunk(
    run: Callable[[list[dict[str, Any]]], Sequence[Any]], root: str, chunk: list[dict[str, Any]], offset: int
) -> tuple[list[Any], list[dict[str, str]], int]:
    """Do ``chunk``; the items the service refuses are left out and done again without them.
    Returns what was produced, the errors (job pointers) and how many items failed."""
    try:
        return list(run(chunk)), [], 0
    except InvalidInput as refusal:
        bad = {int(p[2]) for p in (f.get("pointer", "").split("/") for f in refusal.fields)
               if len(p) > 2 and p[2].isdigit()}  # fmt: skip
        if not bad:
            return [], _each(root, offset, len(chunk), refusal), len(chunk)
        errors = [_rebase(f, offset) for f in refusal.fields]
    except SluiceError as refusal:
        return [], _each(root, offset, len(chunk), refusal), len(chunk)
    good = [i for i in range(len(chunk)) if i not in bad]
    if not good:
        return [], errors, len(chunk)
    try:
        return list(run([chunk[i] for i in good])), errors, len(bad)
    except SluiceError as refusal:
        return [], errors + [e for i in good for e in _each(root, offset + i, 1, refusal)], len(chunk)


def job_run(job_id: int) -> Job | None:
    """Run (or resume) the job: chunk by chunk, ``done``, ``failed`` and ``errors`` saved
    after each one; at the end the status, the result, and ``input`` cleared."""
    job = Job.objects.select_related("tenant", "created_by").filter(pk=job_id).first()
    if job is None or job.status in Job.ENDED:
        return job
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=job.started_at or now)
    actor = Actor(user=job.created_by, label=job.created_by_label or f"job:{job.pk}")
    tenant = job.tenant
    root = _pointer_root(job.kind)
    run: Callable[[list[dict[str, Any]]], Sequence[Any]]
    if job.kind == Job.Kind.DEVICE_IMPORT:

        def run(rows: list[dict[str, Any]]) -> Sequence[Any]:
            return device_services.device_bulk_import(actor=actor, tenant=tenant, rows=rows)

    else:

        def run(rows: list[dict[str, Any]]) -> Sequence[Any]:
            return cert_services.certificates_issue_bulk(actor=actor, tenant=tenant, items=rows)

    items: list[dict[str, Any]] = list(job.input)
    done, failed, errors = job.done, job.failed, list(job.errors)
    result = dict(job.result) or ({"created": 0} if job.kind == Job.Kind.DEVICE_IMPORT else {"issued": []})
    keys_generated = job.keys_generated
    for start in range(done, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        # A chunk, its sealed keys and the progress commit together: a chunk done again
        # after a crash starts from what the database says was done.
        with transaction.atomic():
            produced, chunk_errors, chunk_failed = _run_chunk(run, root, chunk, start)
            done += len(chunk)
            failed += chunk_failed
            errors = (errors + chunk_errors)[:ERRORS_KEPT]
            if job.kind == Job.Kind.DEVICE_IMPORT:
                result["created"] += len(produced)
            else:
                # Serials only: the chains are at .../certificates/<serial>/; keys are sealed apart.
                result["issued"] += [
                    {"device_id": i.certificate.device_ref, "serial": i.certificate.serial,
                     "key": "csr" if i.key_pem is None else "generated"} for i in produced
                ]  # fmt: skip
                keys_generated += _seal_chunk(job.pk, start, produced)
            Job.objects.filter(pk=job.pk).update(done=done, failed=failed, errors=errors, result=result,
                                                 keys_generated=keys_generated)  # fmt: skip
    final = Job.Status.SUCCEEDED if not failed else Job.Status.FAILED if failed == len(items) else Job.Status.PARTIAL
    _end(job.pk, final)
    log.info("job %s (%s, tenant %s): %s, %d of %d failed", job.pk, job.kind, tenant.slug, final, failed, len(items))
    job.refresh_from_db()
    return job


def _end(job_id: int, final: str, **fields: Any) -> None:
    """The job's status, its input cleared, and the deadline of any keys it generated."""
    now = timezone.now()
    Job.objects.filter(pk=job_id).exclude(status__in=Job.ENDED).update(
        status=final, input=[], finished_at=now, **fields
    )
    Job.objects.filter(pk=job_id, keys_generated__gt=0, keys_expire_at=None).update(keys_expire_at=now + KEYS_TTL)


def job_crashed(job_id: int, error: BaseException) -> None:
    """A job whose task failed unexpectedly ends failed, with the reason, instead of
    showing ``running`` for ever.  The keys of the chunks it finished stay collectable."""
    _end(job_id, Job.Status.FAILED,
         result={"error": {"code": "job_crashed", "message": f"The job stopped: {type(error).__name__}."}})  # fmt: skip


# -- generated keys: sealed per chunk, collected once -------------------------------------


def _cipher() -> AESGCM:
    kek = settings.SLUICE_RUNTIME.key_encryption_key
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"sluice job keys v1").derive(kek)
    return AESGCM(key)


def _bound_to(job_id: int, start: int) -> bytes:
    """Associated data: a sealed chunk opens only as the chunk of the job it was made for."""
    return f"sluice job {job_id} chunk {start}".encode()


def _seal_chunk(job_id: int, start: int, produced: Sequence[Any]) -> int:
    entries = [{"device_id": i.certificate.device_ref, "serial": i.certificate.serial, "chain_pem": i.chain_pem,
                "private_key_pem": i.key_pem} for i in produced if i.key_pem is not None]  # fmt: skip
    if not entries:
        return 0
    nonce = os.urandom(12)
    sealed = nonce + _cipher().encrypt(nonce, json.dumps(entries).encode(), _bound_to(job_id, start))
    JobKeys.objects.update_or_create(job_id=job_id, start=start, defaults={"count": len(entries), "sealed": sealed})
    return len(entries)


def _unseal(row: JobKeys) -> list[dict[str, str]]:
    sealed = bytes(row.sealed)
    opened = _cipher().decrypt(sealed[:12], sealed[12:], _bound_to(row.job_id, row.start))
    entries: list[dict[str, str]] = json.loads(opened)
    return entries


def _started_by(job: Job, actor: Actor) -> bool:
    if job.created_by_id is not None:
        return actor.user is not None and actor.user.pk == job.created_by_id
    # A service client (no account) is known by its label.
    return actor.user is None and bool(job.created_by_label) and job.created_by_label == actor.label


def job_keys_collect(*, actor: Actor, tenant: Tenant, job_id: int) -> list[dict[str, str]]:
    """The private keys (with their chains) the job generated, to the one who started it,
    once: they are deleted in the same transaction.  Refused with a code when the job made
    none (409 ``no_keys``), is still running (409 ``job_not_ended``), was started by someone
    else (403 ``not_job_owner``), or the keys were collected or expired (410)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, tenant=tenant).first()
        if job is None:
            raise NotFound("No such job.")
        if job.kind != Job.Kind.CERTIFICATE_ISSUE or (job.keys_generated == 0 and job.status in Job.ENDED):
            raise Conflict("This job generated no private keys (its items had CSRs).", code="no_keys")
        if job.status not in Job.ENDED:
            raise Conflict("The job is still running; collect its keys when it has ended.", code="job_not_ended")
        if not _started_by(job, actor):
            raise PermissionDenied("Only who started the job may collect its keys.", code="not_job_owner")
        if job.keys_collected_at is not None:
            raise Gone(f"The keys were collected at {job.keys_collected_at.isoformat()} by "
                       f"{job.keys_collected_by_label}; they are given once.", code="keys_collected")  # fmt: skip
        if job.keys_expire_at is not None and job.keys_expire_at <= timezone.now():
            JobKeys.objects.filter(job=job).delete()
            raise Gone(f"The keys were not collected before {job.keys_expire_at.isoformat()} and were deleted; "
                       "issue the devices new certificates.", code="keys_expired")  # fmt: skip
        keys = [entry for row in JobKeys.objects.filter(job=job) for entry in _unseal(row)]
        JobKeys.objects.filter(job=job).delete()
        Job.objects.filter(pk=job.pk).update(keys_collected_at=timezone.now(), keys_collected_by_label=actor.label)
        audit_record(actor=actor, tenant=tenant, action="job.keys_collected", obj=job, after={"keys": len(keys)})
    log.info("job %s (tenant %s): %d generated key(s) collected", job.pk, tenant.slug, len(keys))
    return keys


def job_keys_purge() -> int:
    """Delete the sealed keys of every job whose collection deadline has passed."""
    deleted, _ = JobKeys.objects.filter(job__keys_expire_at__lte=timezone.now()).delete()
    if deleted:
        log.info("deleted %d expired sealed key chunk(s)", deleted)
    return deleted


@shared_task(name="certs.job_run")
def job_run_task(job_id: int) -> dict[str, Any]:
    """Run a bulk job; its progress is on its row.  (Registered through ``certs.tasks``.)"""
    try:
        job = job_run(job_id)
    except (OperationalError, InterfaceError):
        raise  # SluiceTask retries; the job resumes at its ``done``
    except Exception as error:
        job_crashed(job_id, error)
        raise
    return {"job": job_id, "status": job.status if job else "missing"}


@shared_task(name="certs.job_keys_purge")
def job_keys_purge_task() -> int:
    return job_keys_purge()
