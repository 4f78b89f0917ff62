"""ingest.ratelimit against the run's real Redis: device buckets in the worker, the tenant's
buckets leased from Redis (at most one round trip per request, usually none), exact enough
across workers, and closed when Redis cannot answer."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import redis

from config.env import Runtime
from config.errors import PayloadTooLarge, RateLimited, ServiceUnavailable
from ingest import ratelimit
from ingest.ratelimit import Budget, RateLimiter, policy_header, remaining_header

pytestmark = pytest.mark.integration
CLOSED_PORT = 1


def budget(**overrides: int) -> Budget:
    values = {"tenant_id": secrets.randbelow(10**9) + 10**9, "device_pk": secrets.randbelow(10**9) + 10**9,
              "device_requests_per_second": 100, "tenant_records_per_second": 1000,
              "tenant_bytes_per_second": 10**6, "records": 1, "body_bytes": 100}  # fmt: skip
    return Budget(**(values | overrides))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def limiter(services: Runtime, loop: asyncio.AbstractEventLoop) -> Iterator[RateLimiter]:
    limiter = RateLimiter(services.redis_url())
    yield limiter
    loop.run_until_complete(limiter.close())


def take(loop: asyncio.AbstractEventLoop, limiter: RateLimiter, b: Budget) -> ratelimit.Verdict:
    return loop.run_until_complete(limiter.take(b))


def test_the_device_limit_refuses_the_request_over_it(loop: asyncio.AbstractEventLoop, limiter: RateLimiter) -> None:
    b = budget(device_requests_per_second=2)
    take(loop, limiter, b)
    verdict = take(loop, limiter, b)
    assert verdict.device_remaining == 0
    with pytest.raises(RateLimited) as refused:
        take(loop, limiter, b)
    assert refused.value.retry_after == 1
    assert "2 request(s) per second" in refused.value.message
    # and the bucket refills continuously: half a second later one more request fits
    time.sleep(0.55)
    take(loop, limiter, b)


def test_the_tenant_limits_refuse_and_take_nothing_from_a_refused_request(
    loop: asyncio.AbstractEventLoop, limiter: RateLimiter
) -> None:
    b = budget(tenant_records_per_second=5, records=3, body_bytes=10)
    take(loop, limiter, b)
    with pytest.raises(RateLimited) as refused:
        take(loop, limiter, b)
    assert "5 records per second" in refused.value.message
    assert "bytes per second" not in refused.value.message
    # the refused request did not use up the device's bucket either
    assert limiter._devices[b.device_pk].tokens == pytest.approx(b.device_requests_per_second - 1, abs=1)

    small = budget(tenant_id=b.tenant_id, tenant_bytes_per_second=35, body_bytes=30)
    take(loop, limiter, small)
    with pytest.raises(RateLimited) as refused:
        take(loop, limiter, small)
    assert "35 bytes per second" in refused.value.message


def test_a_request_larger_than_a_second_of_the_tenant_budget_is_413(
    loop: asyncio.AbstractEventLoop, limiter: RateLimiter
) -> None:
    with pytest.raises(PayloadTooLarge) as refused:
        take(loop, limiter, budget(tenant_records_per_second=3, records=5))
    assert refused.value.code == "exceeds_tenant_limit"
    assert refused.value.retry_after is None


def test_most_requests_need_no_round_trip(loop: asyncio.AbstractEventLoop, limiter: RateLimiter) -> None:
    # given a tenant allowed 10,000 records a second (a lease is 5 % of that: 500 records)
    b = budget(tenant_records_per_second=10_000, device_requests_per_second=10_000)
    calls = 0
    real = limiter._lease

    async def counting(*args: object) -> list[int]:
        nonlocal calls
        calls += 1
        return await real(*args)  # type: ignore[arg-type]

    # when it sends 400 one-record requests
    with mock.patch.object(limiter, "_lease", counting):
        for _ in range(400):
            take(loop, limiter, b)
    # then Redis was asked once per lease (leases also lapse after a quarter second)
    assert 1 <= calls <= 5


def test_two_workers_share_the_tenant_budget_within_ten_percent(services: Runtime) -> None:
    # given two workers (two limiters, two event loops in two threads) serving one tenant
    # allowed 200 records a second, each trying to send as fast as it can
    rate, seconds = 200, 10.0
    tenant = secrets.randbelow(10**9) + 10**9
    admitted = [0, 0]

    def worker(index: int) -> None:
        async def run() -> None:
            limiter = RateLimiter(services.redis_url())
            b = budget(tenant_id=tenant, device_pk=index, device_requests_per_second=10**6,
                       tenant_records_per_second=rate, records=1)  # fmt: skip
            # drain the bucket's initial second of burst first
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                try:
                    await limiter.take(b)
                except RateLimited:
                    await asyncio.sleep(0.002)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    await limiter.take(b)
                    admitted[index] += 1
                except RateLimited:
                    await asyncio.sleep(0.002)
            await limiter.close()

        asyncio.run(run())

    import threading

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then together they were admitted the tenant's rate, within 10 %, and neither starved
    total = sum(admitted)
    assert rate * seconds * 0.9 <= total <= rate * seconds * 1.1, admitted
    assert min(admitted) > 0.2 * total, admitted


def test_redis_that_cannot_answer_fails_closed(loop: asyncio.AbstractEventLoop) -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{CLOSED_PORT}/0")
    with pytest.raises(ServiceUnavailable) as refused:
        take(loop, limiter, budget())
    assert refused.value.code == "rate_limiter_unavailable"
    # and the refused request took nothing from the device's bucket
    assert limiter._devices[next(iter(limiter._devices))].tokens == pytest.approx(100, abs=1)
    loop.run_until_complete(limiter.close())


def test_the_script_is_loaded_again_when_redis_forgot_it(
    services: Runtime, loop: asyncio.AbstractEventLoop, limiter: RateLimiter
) -> None:
    redis.Redis.from_url(services.redis_url()).script_flush()
    b = budget()
    take(loop, limiter, b)  # EVALSHA fails with NOSCRIPT, EVAL loads it
    limiter._leases.clear()
    take(loop, limiter, b)  # EVALSHA


def test_the_ratelimit_fields() -> None:
    b = budget(device_requests_per_second=10, tenant_records_per_second=500, tenant_bytes_per_second=2048)
    assert policy_header(b) == (
        '"device";q=10;w=1, "tenant-records";q=500;w=1, "tenant-bytes";q=2048;w=1;qu="content-bytes"'
    )
    assert remaining_header(ratelimit.Verdict(9, 1, 480)) == '"device";r=9;t=1, "tenant-records";r=480;t=1'


def test_a_connection_a_redis_restart_closed_is_replaced_not_refused(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    # given a worker's limiter that has talked to a Redis (its connection pooled)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def start() -> subprocess.Popen[bytes]:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(tmp_path)]  # fmt: skip
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(port=port, socket_timeout=0.5).ping():
                    return server
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    server = start()
    limiter = RateLimiter(f"redis://127.0.0.1:{port}/0")
    try:
        loop.run_until_complete(limiter.take(budget()))
        # when Redis restarts (the pooled connection is closed by the old server)
        server.terminate()
        server.wait()
        server = start()
        # then the next request that needs Redis is let through, on a new connection
        assert loop.run_until_complete(limiter.take(budget())).tenant_records_remaining >= 0
    finally:
        loop.run_until_complete(limiter.close())
        server.terminate()
        server.wait()
