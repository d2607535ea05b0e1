"""Publish and subscribe, on one Redis or on a Redis Cluster.

One Redis: ``PUBLISH`` / ``SUBSCRIBE``. A Redis Cluster: sharded pub/sub (Redis 7,
``SPUBLISH`` / ``SSUBSCRIBE``): a message goes to the master that owns the channel's slot
(and its replicas), not over the whole cluster bus to every node, and a channel under the
control-plane hash tag can be published in the same ``MULTI`` as the writes it announces.
Subscriptions on a cluster use redis-py's ``ClusterPubSub`` (``ssubscribe``,
``get_sharded_message``), which connects to the shard that owns the channel; the slot map is
read again before every (re)subscription, so after a failover the next one goes to the new
master. Nothing here retries: callers loop (subscribe, read until an error, pause, again) and
reload what they watch periodically, so a message lost in a failover costs one period.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster as synccluster
from redis.exceptions import ClusterError, RedisClusterException

from shared.redis_conn import as_bytes, is_cluster


class _Commands(Protocol):
    def execute_command(self, *args: Any, **kwargs: Any) -> Any: ...


def publish(target: _Commands, channel: str, message: bytes) -> Any:
    """Publish on ``channel`` through a client or a pipeline (sync or asyncio): what the
    target's ``execute_command`` returns (the receiver count, its awaitable, or the pipeline)."""
    return target.execute_command("SPUBLISH" if is_cluster(target) else "PUBLISH", channel, message)


@contextmanager
def _as_redis_errors() -> Iterator[None]:
    """redis-py's cluster errors outside ``RedisError`` (no master for a slot: a failover in
    progress) raised as ``ClusterError``, so callers handle one kind."""
    try:
        yield
    except RedisClusterException as error:
        raise ClusterError(str(error)) from error


def _message_data(message: dict[str, Any] | None, channel: bytes) -> bytes | None:
    """The payload of a published message; None for anything else. A ``sunsubscribe`` from the
    server (the channel's slot moved: a failover or a resharding) raises, so the caller
    subscribes again where the slot is now."""
    if message is None:
        return None
    kind = as_bytes(message.get("type") or b"")
    if kind in (b"message", b"smessage"):
        data = message.get("data")
        return as_bytes(data) if isinstance(data, (bytes, str)) else b""
    if kind == b"sunsubscribe" and as_bytes(message.get("channel") or b"") == channel:
        raise redis.ConnectionError("the shard channel's slot moved; subscribe again")
    return None


class Subscription:
    """One channel, asyncio: ``async with Subscription(client, channel) as sub:`` then
    ``await sub.get(timeout_s)`` -> the next message's bytes, or None after ``timeout_s``."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._pubsub: Any = None

    async def __aenter__(self) -> Subscription:
        with _as_redis_errors():
            await self._subscribe()
        return self

    async def _subscribe(self) -> None:
        if is_cluster(self.client):
            cluster = cast(aiocluster.RedisCluster, self.client)
            await cluster.initialize()  # a no-op once the client has read the slot map, then
            await cluster.nodes_manager.initialize()  # read again: the channel's master now, after a failover
            self._pubsub = cluster.pubsub()
            await self._pubsub.ssubscribe(self.channel)
        else:
            self._pubsub = self.client.pubsub()
            await self._pubsub.subscribe(self.channel)

    async def get(self, timeout_s: float) -> bytes | None:
        """The next message's payload; None when none came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_s = max(0.0, deadline - time.monotonic())
            if is_cluster(self.client):
                with _as_redis_errors():
                    message = await self._pubsub.get_sharded_message(ignore_subscribe_messages=False, timeout=remaining_s)
            else:
                message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=remaining_s)
            data = _message_data(message, self.channel.encode())
            if data is not None or message is None or remaining_s == 0.0:
                return data

    async def __aexit__(self, *exc: object) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()


class SyncSubscription:
    """``Subscription`` for blocking clients (worker nodes): ``with SyncSubscription(...)``."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._pubsub: Any = None

    def __enter__(self) -> SyncSubscription:
        with _as_redis_errors():
            self._subscribe()
        return self

    def _subscribe(self) -> None:
        if is_cluster(self.client):
            cluster = cast(synccluster.RedisCluster, self.client)
            cluster.nodes_manager.initialize()
            self._pubsub = cluster.pubsub()
            self._pubsub.ssubscribe(self.channel)
        else:
            self._pubsub = self.client.pubsub()
            self._pubsub.subscribe(self.channel)

    def get(self, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_s = max(0.0, deadline - time.monotonic())
            if is_cluster(self.client):
                with _as_redis_errors():
                    message = self._pubsub.get_sharded_message(ignore_subscribe_messages=False, timeout=remaining_s)
            else:
                message = self._pubsub.get_message(ignore_subscribe_messages=False, timeout=remaining_s)
            data = _message_data(message, self.channel.encode())
            if data is not None or message is None or remaining_s == 0.0:
                return data

    def __exit__(self, *exc: object) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            pubsub.close()
