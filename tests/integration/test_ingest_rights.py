"""The data plane's rights on the real stack: two ingest workers behind the real nginx, each
holding an identity cache; every change that takes a right away reaches every worker within
a second; a worker that lost its subscription never serves a stale grant; rate limits hold
across workers; one device's revocation drops nobody else's connection; batch bodies never
touch the disk.

Each worker is also reached on its own socket (with nginx's headers and secret, as nginx
would send them), because nginx sends a given device to one worker only and "every
worker" must be shown, not assumed."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from certs.models import Certificate
from certs.platform_pki import PlatformPki
from certs.services import Issued, certificate_revoke
from config.env import Runtime
from devices.models import DeviceGroup
from devices.services import device_delete, device_update, group_update
from tenants.audit import Actor
from tenants.oauth.models import OAuthClient
from tenants.oauth.services import oauth_client_revoke
from tenants.services import tenant_delete, tenant_set_status
from tests.ingest.test_identity_cache import cut_rights_subscriptions
from tests.integration.test_ingest import nginx_workers, topic_size

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("test")
BOUND = 1.0  # seconds: the README's promise for a change to reach every ingest worker


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self.path))


def worker_sockets(services: Runtime) -> list[Path]:
    sockets = [services.ingest_socket(i) for i in range(services.ingest.workers)]
    assert len(sockets) >= 2, "these tests need at least two ingest workers"
    return sockets


def as_nginx(issued: Issued | None = None, token: str | None = None) -> dict[str, str]:
    headers = {"X-Sluice-Proxy-Secret": settings.SLUICE_PROXY_SECRET, "Content-Type": "application/json",
               "X-Sluice-Client-Verify": "NONE"}  # fmt: skip
    if issued is not None:
        headers |= {"X-Sluice-Client-Verify": "SUCCESS",
                    "X-Sluice-Client-Serial": format(int(issued.certificate.serial, 16), "X"),
                    "X-Sluice-Client-Issuer": issued.certificate.ca.subject}  # fmt: skip
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def post_to(path: Path, headers: dict[str, str], body: Any = None) -> tuple[int, dict[str, Any]]:
    connection = UnixConnection(path)
    try:
        connection.request("POST", "/ingest/v1/records", body=json.dumps(body or {"celsius": 1.0}), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def refused_on_every_worker_within(
    services: Runtime, headers: Callable[[], dict[str, str]], change: Callable[[], None], code: str | tuple[str, ...]
) -> list[float]:
    """Warm every worker with the credential, make the change, and return how long each
    worker went on accepting it (each must refuse with ``code`` within ``BOUND``)."""
    sockets = worker_sockets(services)
    for path in sockets:  # every worker has read the identity and holds it in its cache
        for _ in range(2):
            status, body = post_to(path, headers())
            assert status == 200, body
    change()
    changed = time.monotonic()
    took = []
    for path in sockets:
        while True:
            status, body = post_to(path, headers())
            elapsed = time.monotonic() - changed
            if status != 200:
                codes = code if isinstance(code, tuple) else (code,)
                assert status in (401, 403), body
                assert body["error"]["code"] in codes, body
                took.append(elapsed)
                break
            assert elapsed < BOUND, f"worker on {path.name} still accepted after {elapsed:.2f} s"
            time.sleep(0.02)
    return took


def switch_policy(group: DeviceGroup, policy: str) -> None:
    # (the shared fixtures write a one-letter device type straight to the table; the
    # service validates the whole group, which must agree with its stream, so align it first)
    DeviceGroup.objects.filter(pk=group.pk).update(region=group.stream.region, device_type=group.stream.type)
    group.refresh_from_db()
    group_update(actor=ACTOR, group=group, credential_policy=policy)


# A policy switch may also revoke the credentials it excludes; either refusal is right.
CERTIFICATE_CHANGES: dict[str, tuple[Callable[[Any], None], str | tuple[str, ...]]] = {
    "certificate revoked": (lambda s: certificate_revoke(actor=ACTOR, certificate=s.issued.certificate),
                            "certificate_revoked"),
    "device disabled": (lambda s: device_update(actor=ACTOR, device=s.device, status="disabled"),
                        "certificate_revoked"),
    "device deleted": (lambda s: device_delete(actor=ACTOR, device=s.device), "certificate_revoked"),
    "group policy oauth2": (lambda s: switch_policy(s.device.group, "oauth2"),
                            ("credential_not_allowed", "certificate_revoked")),
    "tenant suspended": (lambda s: tenant_set_status(actor=ACTOR, tenant=s.device.tenant, status="suspended"),
                         "tenant_suspended"),
    "tenant deleted": (lambda s: tenant_delete(actor=ACTOR, tenant=s.device.tenant, confirm=s.device.tenant.slug),
                       "unknown_certificate"),
}  # fmt: skip


@pytest.mark.parametrize("change", sorted(CERTIFICATE_CHANGES))
def test_a_change_refuses_a_certificate_on_every_worker_within_a_second(
    services: Runtime, make_sender: Any, monkeypatch: Any, change: str
) -> None:
    monkeypatch.setattr("ingest.tasks.topics_delete_task.delay", lambda *_: None)
    sender = make_sender()
    act, code = CERTIFICATE_CHANGES[change]
    took = refused_on_every_worker_within(services, lambda: as_nginx(sender.issued), lambda: act(sender), code)
    assert max(took) < BOUND, took


def test_a_device_moved_to_another_group_is_refused_on_every_worker(services: Runtime, make_sender: Any) -> None:
    sender = make_sender()
    other = DeviceGroup.objects.create(tenant=sender.device.tenant, slug="elsewhere", region="eu", device_type="t",
                                       stream=sender.device.group.stream, schema_subject=sender.subject)  # fmt: skip
    took = refused_on_every_worker_within(
        services, lambda: as_nginx(sender.issued),
        lambda: device_update(actor=ACTOR, device=sender.device, group=other), "certificate_revoked",
    )  # fmt: skip
    assert max(took) < BOUND, took


@pytest.mark.parametrize("change", ["client revoked", "device disabled", "group policy mtls", "tenant suspended"])
def test_a_change_refuses_a_token_on_every_worker_within_a_second(
    services: Runtime, make_device: Any, change: str
) -> None:
    sender = make_device()
    token = sender.token()
    acts: dict[str, tuple[Callable[[], Any], str | tuple[str, ...]]] = {
        "client revoked": (lambda: oauth_client_revoke(actor=ACTOR, client=sender.client), "client_revoked"),
        "device disabled": (lambda: device_update(actor=ACTOR, device=sender.device, status="disabled"),
                            "device_disabled"),
        "group policy mtls": (lambda: switch_policy(sender.device.group, "mtls"),
                              ("credential_not_allowed", "client_revoked")),
        "tenant suspended": (lambda: tenant_set_status(actor=ACTOR, tenant=sender.device.tenant, status="suspended"),
                             "tenant_suspended"),
    }  # fmt: skip
    act, code = acts[change]
    took = refused_on_every_worker_within(services, lambda: as_nginx(token=token), act, code)
    assert max(took) < BOUND, took


def test_a_worker_that_lost_its_subscription_never_serves_a_stale_grant(services: Runtime, make_sender: Any) -> None:
    # given every worker has the device's certificate in its cache
    sender = make_sender()
    for path in worker_sockets(services):
        assert post_to(path, as_nginx(sender.issued))[0] == 200
    # when the certificate is revoked behind the services' back -- as if its announcement
    # were lost -- and every worker's subscription is cut
    Certificate.objects.filter(pk=sender.issued.certificate.pk).update(status=Certificate.Status.REVOKED)
    assert post_to(worker_sockets(services)[0], as_nginx(sender.issued))[0] == 200  # the stale grant, cached
    assert cut_rights_subscriptions(redis.Redis.from_url(services.redis_url())) >= len(worker_sockets(services))
    time.sleep(0.3)  # a closed connection is noticed at once (a silent one by a PING within 5 s)
    # then no worker serves the stale grant again: each started over from the database
    for path in worker_sockets(services):
        for _ in range(3):
            status, body = post_to(path, as_nginx(sender.issued))
            assert (status, body.get("error", {}).get("code")) == (403, "certificate_revoked"), body
    assert topic_size(sender.topic, services) == len(worker_sockets(services)) + 1


def test_a_token_minted_for_a_deleted_device_is_refused_everywhere(services: Runtime, make_device: Any) -> None:
    sender = make_device()
    token = sender.token()
    took = refused_on_every_worker_within(
        services, lambda: as_nginx(token=token), lambda: device_delete(actor=ACTOR, device=sender.device),
        "unknown_device",
    )  # fmt: skip
    assert max(took) < BOUND, took
    assert not OAuthClient.objects.filter(pk=sender.client.pk).exists()


# -- rate limits across workers, and their fields ----------------------------------------------


def test_the_tenant_limit_holds_within_ten_percent_over_ten_seconds_across_workers(
    services: Runtime, make_sender: Any
) -> None:
    # given a tenant allowed 20 records a second, and two devices that nginx would place on
    # any worker: here they send to every worker's socket, from four threads each, far
    # faster than the tenant may write
    rate, seconds, threads_per_socket = 20, 10.0, 4
    first = make_sender(max_records_per_second=rate, rate=10_000)
    second = make_sender(tenant=first.device.tenant, rate=10_000)
    sockets = worker_sockets(services)
    admitted = [0] * len(sockets)
    refused = [0] * len(sockets)
    # The count starts at the first refusal: the bucket's burst is spent then (on a busy
    # machine that takes longer than on a quiet one), and it runs for ``seconds`` from there.
    window: dict[str, float] = {}
    window_lock = threading.Lock()
    give_up = time.monotonic() + 30 + seconds

    def send(index: int, sender: Any) -> None:
        while time.monotonic() < window.get("stop", give_up):
            status, _ = post_to(sockets[index], as_nginx(sender.issued))
            now = time.monotonic()
            if status == 429 and "start" not in window:
                with window_lock:
                    window.setdefault("start", now)
                    window.setdefault("stop", window["start"] + seconds)
            counted = "start" in window and window["start"] <= now < window["stop"]
            if status == 200 and counted:
                admitted[index] += 1
            elif status == 429:
                refused[index] += counted
                time.sleep(0.005)

    threads = [threading.Thread(target=send, args=(i, (first, second)[t % 2]))
               for i in range(len(sockets)) for t in range(threads_per_socket)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then the limit was what held them back (requests were refused) and the workers
    # together admitted the tenant's rate, within 10 %
    assert "start" in window, "no request was ever refused"
    assert sum(refused) > sum(admitted), (admitted, refused)
    assert rate * seconds * 0.9 <= sum(admitted) <= rate * seconds * 1.1, admitted
    assert all(admitted), admitted


def test_answers_carry_the_ratelimit_fields(services: Runtime, make_sender: Any) -> None:
    sender = make_sender(rate=1)
    status, body, headers = sender.post({"celsius": 1.0})
    assert status == 200, body
    assert headers["RateLimit-Policy"].startswith('"device";q=1;w=1, "tenant-records";q=10000;w=1')
    assert headers["RateLimit"].startswith('"device";r=0;t=1')
    status, body, headers = sender.post({"celsius": 2.0})
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert headers["RateLimit"].startswith('"device";r=0;')
    assert int(headers["Retry-After"]) >= 1


# -- one tenant's events and nobody else's connections ----------------------------------------


def test_revoking_other_devices_at_ten_a_second_drops_no_connection(
    services: Runtime, make_sender: Any, tmp_path: Path
) -> None:
    # given a device on a keep-alive connection through nginx, and other devices
    keeper = make_sender()
    others = [make_sender(tenant=keeper.device.tenant) for _ in range(20)]
    context = ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle))
    (tmp_path / "keeper.pem").write_text(keeper.issued.chain_pem)
    (tmp_path / "keeper.key").write_text(keeper.issued.key_pem or "")
    context.load_cert_chain(tmp_path / "keeper.pem", tmp_path / "keeper.key")
    connection = http.client.HTTPSConnection("127.0.0.1", services.ports.web, context=context, timeout=10)
    statuses: list[int] = []

    def send() -> None:
        connection.request("POST", "/ingest/v1/records", body=b'{"celsius": 1.0}',
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)

    send()
    sock = connection.sock
    workers = nginx_workers(services)
    # when twenty other certificates are revoked, ten a second, while it keeps sending
    for other in others:
        certificate_revoke(actor=ACTOR, certificate=other.issued.certificate, reason="key_compromise")
        send()
        time.sleep(0.1)
    # then its connection was never closed or replaced, every request passed, nginx never
    # reloaded, and each revoked device is refused
    assert connection.sock is sock
    assert statuses == [200] * len(statuses)
    assert nginx_workers(services) == workers
    assert others[0].post({"celsius": 1.0})[1]["error"]["code"] == "certificate_revoked"
    connection.close()


def test_batch_bodies_are_never_spooled_to_disk(services: Runtime, make_sender: Any) -> None:
    # given the nginx error log as it stands
    sender = make_sender()
    error_log = services.logs_dir / "nginx-error.log"
    before = error_log.stat().st_size if error_log.exists() else 0
    # when a device sends a 100-record batch (~10 KiB) and one just under the 1 MiB limit
    small = {"records": [{"celsius": 21.5, "site": "x" * 60}] * 100}
    large = {"records": [{"celsius": 21.5, "site": "x" * 2000}] * 500}
    for body in (small, large):
        status, answer, _ = sender.post(body)
        assert status == 200, answer
    # then nginx kept both in memory: it logs every body it writes to a temporary file
    written = error_log.read_text(errors="replace")[before:] if error_log.exists() else ""
    assert "buffered to a temporary file" not in written
