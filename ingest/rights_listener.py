"""Keeps a worker's identity cache honest: applies every announced change of rights
(``tenants.rights``) and takes the cache out of service whenever the subscription is lost.

The cache is live only while this worker is subscribed to ``CHANNEL``.  Subscribing starts
from an empty cache (whatever was announced while nobody listened is unknown), and any
error on the connection -- Redis restarted, the connection killed, a health-check PING
unanswered -- empties the cache and turns it off until the subscription is back, so the
worker re-reads the database for every request meanwhile: never a stale grant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ingest.identity import IdentityCache
from tenants.rights import CHANNEL, RightsChange

log = logging.getLogger("sluice.ingest")

HEALTH_CHECK_SECONDS = 5  # a silently dead connection is noticed within about this long
MAX_BACKOFF = 2.0
# The name each subscription's connection gives itself (CLIENT SETNAME): an operator's
# `CLIENT LIST` shows which connections are rights subscriptions, and a test can cut exactly
# these, never the other pub/sub clients on the same Redis (Celery's result consumer).
CLIENT_NAME = "sluice-rights-listener"


class _Reconnections:
    """redis-py reconnects a broken subscription by itself (and subscribes again); whatever
    was published meanwhile is lost, so every reconnection starts the cache over."""

    def __init__(self, cache: IdentityCache) -> None:
        self.cache = cache

    def on_connect(self, _connection: object) -> None:
        log.warning("ingest: the rights subscription reconnected; emptying the identity cache")
        self.cache.clear()


async def listen(cache: IdentityCache, redis_url: str, *, poll: float = 1.0) -> None:
    """Run until cancelled: subscribe, apply changes, resubscribe after any failure."""
    backoff = 0.05
    reconnections = _Reconnections(cache)  # kept alive here: redis-py holds it weakly
    while True:
        client = redis.asyncio.Redis.from_url(
            redis_url, socket_connect_timeout=1, socket_keepalive=True, health_check_interval=HEALTH_CHECK_SECONDS,
            client_name=CLIENT_NAME,
            # One quick reconnection attempt, then the error reaches this loop (which turns
            # the cache off) rather than being retried for seconds while the cache serves.
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            confirmation = await pubsub.get_message(timeout=2.0)
            if confirmation is None or confirmation.get("type") != "subscribe":
                raise redis.ConnectionError("no subscription confirmation")
            assert pubsub.connection is not None  # subscribe() connected it
            pubsub.connection.register_connect_callback(reconnections.on_connect)
            cache.set_live(True)
            backoff = 0.05
            task = asyncio.current_task()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
                # redis-py's timed read can swallow a cancellation (it becomes its timeout):
                # look for it explicitly, or the worker could never stop this task.
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                if message is not None and message.get("type") == "message":
                    _apply(cache, message["data"])
        except (redis.RedisError, OSError) as exc:
            if cache.live:
                log.warning("ingest: lost the rights subscription (%s); reading identity from the database", exc)
        finally:
            # Leaving the loop for any reason (an error, or the task cancelled) ends the
            # cache's service until a new subscription is confirmed.
            cache.set_live(False)
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(backoff)
        backoff = min(MAX_BACKOFF, backoff * 2)


def _apply(cache: IdentityCache, data: bytes) -> None:
    try:
        change = RightsChange.from_message(data)
    except (ValueError, KeyError, TypeError):
        # Not one of ours: be safe rather than sorry.
        log.error("ingest: unreadable rights message %r; emptying the identity cache", data[:200])
        cache.clear()
        return
    cache.apply(change)
