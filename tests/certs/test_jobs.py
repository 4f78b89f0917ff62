"""Bulk work as jobs: a device import and a certificate issuance started over the API (202),
run by the Celery task (eagerly, through Celery's own apply), and polled until they end."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from certs import ca, jobs
from certs import services as cert_services
from certs.models import Certificate, Job, JobKeys
from devices import services as device_services
from devices.models import Device
from tenants.models import AuditEvent, Membership, Tenant
from tests.certs.test_issuance import csr_for
from tests.conftest import client_for, make_tenant, make_user

pytestmark = pytest.mark.django_db
BASE = "/api/v1/tenants/acme"


@pytest.fixture
def acme(operator_client: APIClient) -> Tenant:
    """A tenant made through the API (so it gets its issuing CA), with one device (as in test_issuance)."""
    operator_client.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme"}, format="json")
    stream = operator_client.post(f"{BASE}/streams/", {"region": "eu", "type": "temp"}, format="json")
    operator_client.post(f"{BASE}/groups/", {"slug": "sensors", "region": "eu", "device_type": "temp",
                         "stream": stream.json()["id"]}, format="json")  # fmt: skip
    operator_client.post(f"{BASE}/devices/", {"device_id": "dev-1", "group": "sensors"}, format="json")
    return Tenant.objects.get(slug="acme")


@pytest.fixture
def eager() -> Iterator[None]:
    from config.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager = False
    app.conf.task_eager_propagates = False


def start(client: APIClient, path: str, body: Any, capture: Callable[..., Any], **kwargs: Any) -> Any:
    """POST ``body``; the job's task runs when the request's transaction commits."""
    with capture(execute=True):
        return client.post(f"{BASE}/{path}", body, format=kwargs.pop("format", "json"), **kwargs)


@pytest.mark.usefixtures("eager")
def test_an_import_job_answers_202_moves_in_chunks_and_reports_each_bad_row(
    operator_client: APIClient, acme: Tenant, monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:  # fmt: skip
    # given 120 rows, three of them bad, and chunks of 25 (progress seen as each chunk starts)
    monkeypatch.setattr(jobs, "CHUNK", 25)
    seen: list[int] = []
    real = device_services.device_bulk_import

    def watched(**kwargs: Any) -> Any:
        seen.append(Job.objects.get().done)
        return real(**kwargs)

    monkeypatch.setattr(device_services, "device_bulk_import", watched)
    rows: list[dict[str, Any]] = [{"device_id": f"fleet-{i:03d}", "group": "sensors"} for i in range(120)]
    rows[7]["group"] = "nowhere"
    rows[60]["device_id"] = "dev-1"  # exists already
    rows[99]["device_id"] = "fleet-098"  # twice in one chunk
    # when the job is started
    response = start(operator_client, "devices/import-jobs", {"devices": rows}, django_capture_on_commit_callbacks)
    # then the answer is at once: 202, the job queued, where to poll it
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["status"], body["kind"], body["total"], body["done"], body["tenant"]) == (
        "queued", "device_import", 120, 0, "acme"
    )  # fmt: skip
    assert response["Location"] == body["url"] == f"{BASE}/jobs/{body['id']}/"
    # and the task moved done chunk by chunk (a chunk with bad rows runs again without them)
    assert sorted(set(seen)) == [0, 25, 50, 75, 100]
    # and polling shows the outcome: the good rows imported, each bad one named
    job = operator_client.get(response["Location"]).json()
    assert (job["status"], job["done"], job["failed"], job["result"]) == ("partial", 120, 3, {"created": 117}), job
    assert {(e["pointer"], e["code"]) for e in job["errors"]} == {
        ("/rows/7/group", "does_not_exist"), ("/rows/60/device_id", "unique"), ("/rows/99/device_id", "duplicate"),
    }  # fmt: skip
    assert all(e["message"] for e in job["errors"])
    assert job["started_at"]
    assert job["finished_at"]
    assert Device.objects.filter(tenant=acme, device_id__startswith="fleet-").count() == 117
    assert Job.objects.get().input == []  # the rows are not kept once done
    listed = operator_client.get(f"{BASE}/jobs/").json()
    assert [j["id"] for j in listed["results"]] == [body["id"]]


@pytest.mark.usefixtures("eager")
def test_an_import_job_takes_the_csv_of_the_synchronous_import(
    operator_client: APIClient, acme: Tenant, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    csv = "device_id,group\ncsv-1,sensors\ncsv-2,sensors\n"
    response = start(operator_client, "devices/import-jobs", csv, django_capture_on_commit_callbacks,
                     format=None, content_type="text/csv")  # fmt: skip
    assert response.status_code == 202, response.json()
    job = operator_client.get(response["Location"]).json()
    assert (job["status"], job["done"], job["failed"], job["result"]) == ("succeeded", 2, 0, {"created": 2})


@pytest.mark.usefixtures("eager")
def test_a_job_whose_every_row_is_refused_failed(
    operator_client: APIClient, acme: Tenant, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    rows = [{"device_id": f"x-{i}", "group": "nowhere"} for i in range(3)]
    response = start(operator_client, "devices/import-jobs", {"devices": rows}, django_capture_on_commit_callbacks)
    job = operator_client.get(response["Location"]).json()
    assert (job["status"], job["done"], job["failed"], job["result"]) == ("failed", 3, 3, {"created": 0})


@pytest.mark.usefixtures("eager")
def test_an_issuance_job_issues_for_csrs_and_never_holds_a_key(
    operator_client: APIClient, acme: Tenant, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    rows = [{"device_id": f"fleet-{i:02d}", "group": "sensors"} for i in range(60)]
    assert operator_client.post(f"{BASE}/devices/bulk", {"devices": rows}, format="json").status_code == 201
    items = [{"device_id": f"fleet-{i:02d}", "csr": csr_for(ca.generate_key())} for i in range(60)]
    items.append({"device_id": "ghost", "csr": csr_for(ca.generate_key())})
    response = start(operator_client, "certificates/issue-jobs", {"items": items}, django_capture_on_commit_callbacks)
    assert response.status_code == 202, response.json()
    job = operator_client.get(response["Location"]).json()
    assert (job["status"], job["done"], job["failed"]) == ("partial", 61, 1)
    assert job["errors"] == [{"pointer": "/items/60/device_id", "code": "does_not_exist", "message": "No such device."}]
    issued = {i["device_id"]: i["serial"] for i in job["result"]["issued"]}
    assert len(issued) == 60
    assert set(Certificate.objects.filter(tenant=acme, device_ref__startswith="fleet-")
               .values_list("serial", flat=True)) == set(issued.values())  # fmt: skip
    # the chain is where every certificate's is
    chain = operator_client.get(f"{BASE}/certificates/{issued['fleet-00']}/").json()
    assert "BEGIN CERTIFICATE" in chain["certificate_pem"]
    # a job holds no key: not in its row, not in its answer
    row = Job.objects.get()
    stored = json.dumps([row.input, row.errors, row.result])
    assert "PRIVATE KEY" not in stored
    assert "PRIVATE KEY" not in json.dumps(job)


def _fleet(client: APIClient, count: int) -> None:
    rows = [{"device_id": f"fleet-{i:02d}", "group": "sensors"} for i in range(count)]
    assert client.post(f"{BASE}/devices/bulk", {"devices": rows}, format="json").status_code == 201


def _public(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip


@pytest.mark.usefixtures("eager")
def test_an_issuance_job_generates_keys_seals_them_and_gives_them_once_to_its_creator(
    operator_client: APIClient, acme: Tenant, monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:  # fmt: skip
    # given 60 devices, every other one with a CSR, in chunks of 25
    monkeypatch.setattr(jobs, "CHUNK", 25)
    _fleet(operator_client, 60)
    items = [{"device_id": f"fleet-{i:02d}", **({"csr": csr_for(ca.generate_key())} if i % 2 else {})}
             for i in range(60)]  # fmt: skip
    response = start(operator_client, "certificates/issue-jobs", {"items": items}, django_capture_on_commit_callbacks)
    assert response.status_code == 202, response.json()
    job = operator_client.get(response["Location"]).json()
    assert (job["status"], job["done"], job["failed"]) == ("succeeded", 60, 0)
    assert {i["key"] for i in job["result"]["issued"]} == {"csr", "generated"}
    assert job["keys"]["generated"] == 30
    assert job["keys"]["collected_at"] is None
    assert job["keys"]["expires_at"] is not None
    # the keys wait sealed, one row per chunk; nothing readable in the database
    sealed = list(JobKeys.objects.filter(job_id=job["id"]))
    assert [(r.start, r.count) for r in sealed] == [(0, 13), (25, 12), (50, 5)]
    assert all(b"PRIVATE KEY" not in bytes(r.sealed) and b"fleet-" not in bytes(r.sealed) for r in sealed)
    row = Job.objects.get()
    assert "PRIVATE KEY" not in json.dumps([row.input, row.errors, row.result]) + json.dumps(job)

    # when its creator collects them
    collected = operator_client.post(job["keys"]["collect_url"])

    # then each generated key comes with its chain, matching its certificate, once
    assert collected.status_code == 200, collected.json()
    assert collected["Cache-Control"] == "no-store"
    keys = collected.json()["keys"]
    assert sorted(k["device_id"] for k in keys) == [f"fleet-{i:02d}" for i in range(0, 60, 2)]
    for key in keys:
        private = serialization.load_pem_private_key(key["private_key_pem"].encode(), None)
        assert private.public_key().public_bytes(serialization.Encoding.DER,
               serialization.PublicFormat.SubjectPublicKeyInfo) == _public(key["chain_pem"])  # fmt: skip
        assert Certificate.objects.get(serial=key["serial"]).device_ref == key["device_id"]
    assert not JobKeys.objects.exists()
    again = operator_client.post(job["keys"]["collect_url"])
    assert (again.status_code, again.json()["error"]["code"]) == (410, "keys_collected")
    assert operator_client.get(response["Location"]).json()["keys"]["collected_at"] is not None
    assert AuditEvent.objects.filter(action="job.keys_collected", tenant_slug="acme").count() == 1


@pytest.mark.usefixtures("eager")
def test_only_the_jobs_creator_collects_its_keys(
    operator_client: APIClient, acme: Tenant, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    _fleet(operator_client, 2)
    items = {"items": [{"device_id": "fleet-00"}, {"device_id": "fleet-01"}]}
    job = start(operator_client, "certificates/issue-jobs", items, django_capture_on_commit_callbacks).json()
    url = f"{BASE}/jobs/{job['id']}/keys"
    another_admin = client_for(make_user("acme-admin", tenant=acme))
    refused = another_admin.post(url)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "not_job_owner")
    viewer = client_for(make_user("acme-viewer", tenant=acme, role=Membership.Role.VIEWER))
    assert viewer.post(url).status_code == 403
    stranger = client_for(make_user("globex-admin", tenant=make_tenant("globex")))
    assert stranger.post(url).status_code == 404
    assert stranger.post(f"/api/v1/tenants/globex/jobs/{job['id']}/keys").status_code == 404
    # none of that used them up
    assert len(operator_client.post(url).json()["keys"]) == 2


@pytest.mark.usefixtures("eager")
def test_keys_not_collected_in_time_are_deleted(
    operator_client: APIClient, acme: Tenant, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    _fleet(operator_client, 1)
    job = start(operator_client, "certificates/issue-jobs", {"items": [{"device_id": "fleet-00"}]},
                django_capture_on_commit_callbacks).json()  # fmt: skip
    stored = Job.objects.get(pk=job["id"])
    assert stored.keys_expire_at - stored.finished_at == jobs.KEYS_TTL
    # the hourly purge leaves keys within their day alone, and deletes them after it
    assert jobs.job_keys_purge() == 0
    Job.objects.filter(pk=stored.pk).update(keys_expire_at=timezone.now() - dt.timedelta(seconds=1))
    assert jobs.job_keys_purge() == 1
    gone = operator_client.post(f"{BASE}/jobs/{job['id']}/keys")
    assert (gone.status_code, gone.json()["error"]["code"]) == (410, "keys_expired")


def test_a_job_without_generated_keys_or_still_running_has_none_to_give(
    operator_client: APIClient, acme: Tenant
) -> None:
    operator = get_user_model().objects.get(username="operator")
    imports = Job.objects.create(tenant=acme, kind=Job.Kind.DEVICE_IMPORT, total=1, status=Job.Status.SUCCEEDED,
                                 created_by=operator)  # fmt: skip
    running = Job.objects.create(tenant=acme, kind=Job.Kind.CERTIFICATE_ISSUE, total=1, status=Job.Status.RUNNING,
                                 created_by=operator, keys_generated=1)  # fmt: skip
    for job, code in ((imports, "no_keys"), (running, "job_not_ended")):
        answer = operator_client.post(f"{BASE}/jobs/{job.pk}/keys")
        assert (answer.status_code, answer.json()["error"]["code"]) == (409, code)
    assert operator_client.post(f"{BASE}/jobs/987654/keys").status_code == 404


@pytest.mark.usefixtures("eager")
def test_a_sealed_chunk_opens_only_as_its_own_jobs_chunk(
    operator_client: APIClient, acme: Tenant, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    _fleet(operator_client, 1)
    job = start(operator_client, "certificates/issue-jobs", {"items": [{"device_id": "fleet-00"}]},
                django_capture_on_commit_callbacks).json()  # fmt: skip
    row = JobKeys.objects.get(job_id=job["id"])
    assert jobs._unseal(row)[0]["device_id"] == "fleet-00"
    moved = JobKeys(job_id=row.job_id, start=row.start + 1, count=row.count, sealed=row.sealed)
    with pytest.raises(InvalidTag):
        jobs._unseal(moved)


@pytest.mark.usefixtures("eager")
def test_a_crash_keeps_the_finished_chunks_keys_and_undoes_the_broken_chunk(
    operator_client: APIClient, acme: Tenant, monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:  # fmt: skip
    # given chunks of 2, and a service that dies after issuing in the second chunk
    monkeypatch.setattr(jobs, "CHUNK", 2)
    _fleet(operator_client, 4)
    real = cert_services.certificates_issue_bulk
    calls = []

    def dies_late(**kwargs: Any) -> Any:
        calls.append(1)
        issued = real(**kwargs)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return issued

    monkeypatch.setattr(cert_services, "certificates_issue_bulk", dies_late)
    items = {"items": [{"device_id": f"fleet-{i:02d}"} for i in range(4)]}
    with pytest.raises(RuntimeError):
        start(operator_client, "certificates/issue-jobs", items, django_capture_on_commit_callbacks)
    # then the job failed, the second chunk left nothing behind, the first chunk's keys are collectable
    job = Job.objects.get()
    assert (job.status, job.done, job.keys_generated) == ("failed", 2, 2)
    assert Certificate.objects.filter(tenant=acme, device_ref__startswith="fleet-").count() == 2
    keys = operator_client.post(f"{BASE}/jobs/{job.pk}/keys").json()["keys"]
    assert sorted(k["device_id"] for k in keys) == ["fleet-00", "fleet-01"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "pointer"),
    [
        ("devices/import-jobs", {"devices": []}, 400, "empty", "/devices"),
        ("devices/import-jobs", {"devices": "x"}, 400, "invalid", "/devices"),
        ("devices/import-jobs", {"devices": [{"device_id": 12, "group": "sensors"}]}, 400, "invalid",
         "/rows/0/device_id"),
        ("devices/import-jobs", {"devices": [{"device_id": "a", "group": "sensors", "x": 1}]}, 400, "unknown_field",
         "/rows/0/x"),
        ("devices/import-jobs", {"devices": [{"device_id": "a", "group": "sensors", "status": "asleep"}]}, 400,
         "invalid_choice", "/rows/0/status"),
        ("devices/import-jobs", {"devices": [{"device_id": "a", "group": "s"}] * 20_001}, 413, "payload_too_large",
         None),
        ("certificates/issue-jobs", {"items": []}, 400, "empty", "/items"),
        ("certificates/issue-jobs", {"items": [{"device_id": "dev-1", "csr": "x"}] * 1001}, 413,
         "payload_too_large", None),
    ],
)  # fmt: skip
def test_bad_job_inputs_are_refused_with_a_clear_code(
    operator_client: APIClient, acme: Tenant, path: str, body: Any, status: int, code: str | None, pointer: str | None
) -> None:
    response = operator_client.post(f"{BASE}/{path}", body, format="json")
    assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["message"]
    if pointer is not None:
        assert pointer in [f["pointer"] for f in error["fields"]], error
        if code is not None:
            assert code in [f["code"] for f in error["fields"]], error
    else:
        assert error["code"] == code
    assert not Job.objects.exists()


def test_a_viewer_reads_jobs_but_starts_none(acme: Tenant) -> None:
    job = Job.objects.create(tenant=acme, kind=Job.Kind.DEVICE_IMPORT, total=1)
    viewer = client_for(make_user("acme-viewer", tenant=acme, role=Membership.Role.VIEWER))
    assert viewer.get(f"{BASE}/jobs/{job.pk}/").json()["status"] == "queued"
    assert viewer.get(f"{BASE}/jobs/").json()["count"] == 1
    rows = {"devices": [{"device_id": "v-1", "group": "sensors"}]}
    refused = viewer.post(f"{BASE}/devices/import-jobs", rows, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    items = {"items": [{"device_id": "dev-1", "csr": csr_for(ca.generate_key())}]}
    assert viewer.post(f"{BASE}/certificates/issue-jobs", items, format="json").status_code == 403
    assert Job.objects.count() == 1


def test_another_tenants_job_is_a_404(acme: Tenant) -> None:
    other = make_tenant("globex")
    theirs = Job.objects.create(tenant=other, kind=Job.Kind.DEVICE_IMPORT, total=1)
    mine = client_for(make_user("acme-admin", tenant=acme))
    missing = mine.get(f"{BASE}/jobs/987654/")
    assert missing.status_code == 404
    across = mine.get(f"{BASE}/jobs/{theirs.pk}/")
    assert (across.status_code, across.json()["error"]["code"]) == (404, missing.json()["error"]["code"])
    assert mine.get("/api/v1/tenants/globex/jobs/").status_code == 404
    assert mine.get(f"{BASE}/jobs/").json()["count"] == 0


@pytest.mark.usefixtures("eager")
def test_a_job_whose_task_crashes_ends_failed(
    operator_client: APIClient, acme: Tenant, monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:  # fmt: skip
    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(device_services, "device_bulk_import", broken)
    rows = {"devices": [{"device_id": "c-1", "group": "sensors"}]}
    with pytest.raises(RuntimeError):
        start(operator_client, "devices/import-jobs", rows, django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert (job.status, job.result["error"]["code"], job.input) == ("failed", "job_crashed", [])
