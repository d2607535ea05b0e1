"""Redis connection factories, for a plain Redis and for a Redis Cluster.

A URL ``redis://`` / ``rediss://`` / ``unix://`` is one Redis; ``redis+cluster://`` /
``rediss+cluster://`` is a Redis Cluster: ``redis+cluster://[user:password@]host:port[,host:port...]``
names one or more of its nodes (any node: the rest are found with ``CLUSTER SLOTS``; more
than one lets a process start while one of them is down). The factories return redis-py's
cluster clients for those (``redis.asyncio.cluster.RedisCluster`` / ``redis.cluster.RedisCluster``),
typed as the plain client: they offer the same commands, and route each to the master that
owns its key's slot (blocking reads too: ``BLPOP``/``BLMOVE`` go to the shard of their key).
Pub/sub is made shard-aware in ``shared.pubsub``; the producer pipelines ``exchange`` per
shard itself (``shared.producer``).

redis-py >= 8 defaults to ``socket_timeout=5``, which breaks blocking reads longer than
5 s; connections that block (BLPOP, BLMOVE) are made with ``socket_timeout=None``.

Failover (a cluster master dies and its replica takes over): a command that meets the dead
master is retried ``CLUSTER_RETRIES`` times, re-reading the slot map between tries, then
raises (``ConnectionError``, ``ClusterDownError``...; every one a ``redis.RedisError``): callers
see errors for about the cluster's ``cluster-node-timeout`` plus the promotion, never a hang.

``pack_command`` / ``exchange``: commands packed by hand and pipelined on one connection, for
the request path, where redis-py's pipeline object costs more CPU than the round trip.
"""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster as synccluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ClusterError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
CLUSTER_RETRIES = 3  # a command meeting a failed shard is tried this many more times
SOCKET_TIMEOUT_S = 10.0  # non-blocking clients: one command's reply
CONNECT_TIMEOUT_S = 5.0


class RedisUrlError(ValueError):
    """A Redis URL inferq cannot use (the message says why)."""


@dataclass(frozen=True)
class ClusterUrl:
    """A ``redis+cluster://`` URL taken apart: the startup nodes and a plain URL redis-py takes
    (the first node, with the credentials, TLS and query options of the whole URL)."""

    nodes: tuple[tuple[str, int], ...]
    plain_url: str


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterUrl:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise RedisUrlError(f"not a Redis Cluster URL (redis+cluster:// or rediss+cluster://): {redact_url(url)}")
    netloc, slash, tail = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        parsed = urllib.parse.urlsplit(f"//{item}")
        if not parsed.hostname:
            raise RedisUrlError(f"a Redis Cluster URL names host:port of its nodes: {redact_url(url)}")
        nodes.append((parsed.hostname, parsed.port or 6379))
    path = tail.split("?", 1)[0]
    if path not in ("", "0"):
        raise RedisUrlError(f"a Redis Cluster has database 0 only, not /{path}: {redact_url(url)}")
    host, port = nodes[0]
    host_text = f"[{host}]" if ":" in host else host
    plain = f"{CLUSTER_SCHEMES[scheme.lower()]}://{auth}{at}{host_text}:{port}{slash}{tail}"
    return ClusterUrl(tuple(nodes), plain)


def redact_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    auth, at, after = rest.partition("@")
    if not at:
        return url
    user = auth.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{after}" if ":" in auth else f"{scheme}{sep}{user}@{after}"


def is_cluster(client: object) -> bool:
    """Whether a client (or a pipeline of one) talks to a Redis Cluster."""
    return isinstance(
        client,
        (aiocluster.RedisCluster, synccluster.RedisCluster, aiocluster.ClusterPipeline, synccluster.ClusterPipeline),
    )


def _cluster_retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), CLUSTER_RETRIES)


class _AsyncCluster(aiocluster.RedisCluster):
    """redis-py's asyncio cluster client, with two changes:

    - its ``RedisClusterException`` (no master for a slot, slot map not readable: a failover
      in progress) is raised as ``redis.exceptions.ClusterError``, a ``RedisError`` like every
      other failure callers already handle;
    - a write on a connection a failover tore down meanwhile (redis-py's ``AttributeError``) is
      raised as the ``ConnectionError`` it is;
    - it raises ``MaxConnectionsError`` when a node's pool is used up; here, as
      ``BlockingConnectionPool`` does for one Redis, a burst waits instead: at most
      ``max_in_flight`` commands run at once (so no node ever needs more connections).
    """

    def __init__(self, *args: Any, max_in_flight: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._in_flight:
            try:
                return await super().execute_command(*args, **kwargs)
            except RedisClusterException as error:
                raise ClusterError(str(error)) from error
            except AttributeError as error:
                # redis-py 8.1: a failover tears down a node's connections while a command is
                # being written on one, and the write meets ``_writer = None``; that is a
                # connection lost, not a bug of the caller's
                raise RedisConnectionError(f"connection closed while in use: {error}") from error


class _SyncCluster(synccluster.RedisCluster):
    """redis-py's cluster client, raising its ``RedisClusterException`` as ``ClusterError``
    (see ``_AsyncCluster``)."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as error:
            raise ClusterError(str(error)) from error


# What redis-py 8 sends on every new connection beyond HELLO, each a round trip and each an
# error reply on Redis < 7.2 / < 8 (counted in errorstat_ERR): CLIENT SETINFO (driver_info)
# and CLIENT MAINT_NOTIFICATIONS (a Redis Enterprise feature). Both off.
DRIVER_INFO = None
NO_MAINT_NOTIFICATIONS = MaintNotificationsConfig(enabled=False)



def connection_settings(blocking: bool) -> dict[str, Any]:
    """What every connection of every client here is made with (plain or cluster, sync or async);
    ``blocking``: for blocking commands, without a socket timeout."""
    return {
        "socket_timeout": None if blocking else SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "driver_info": DRIVER_INFO,
        "maint_notifications_config": NO_MAINT_NOTIFICATIONS,
    }


def async_client(
    url: str, *, blocking: bool = False, max_connections: int = 32, client_name: str | None = None
) -> aioredis.Redis:
    """A client whose pool never grows past ``max_connections``: a burst of requests waits
    for a free connection instead of opening one per request in flight. A cluster URL gives a
    ``RedisCluster`` (typed as ``aioredis.Redis``: the same commands), ``max_connections``
    commands in flight at most; pipelines take one more connection per node they touch.

    One Redis: a command that fails with a connection error is sent once more on a new
    connection: a Redis that died holding unread bytes resets its connections, a reset leaves
    no EOF for the pool's idle check to see, and the first command after Redis is back would
    fail on it. (A cluster client retries ``CLUSTER_RETRIES`` times, re-reading the slot map.)"""
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        cluster = _AsyncCluster.from_url(
            parsed.plain_url,
            startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in parsed.nodes[1:]],
            max_in_flight=max_connections,
            max_connections=2 * max_connections + 8,
            retry=_cluster_retry(),
            **connection_settings(blocking),
            health_check_interval=0,
            client_name=client_name,
        )
        return cast(aioredis.Redis, cluster)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        **connection_settings(blocking),
        health_check_interval=0,
        client_name=client_name,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


def sync_client(url: str, *, blocking: bool = False) -> redis.Redis:
    """A blocking-I/O client; a cluster URL gives a ``redis.cluster.RedisCluster`` (which
    reads the slot map at once: ``ClusterError`` when no node of the URL answers)."""
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        try:  # the sync client reads the slot map here, not on its first command
            cluster = _SyncCluster.from_url(
                parsed.plain_url,
                startup_nodes=[synccluster.ClusterNode(host, port) for host, port in parsed.nodes[1:]],
                retry=_cluster_retry(),
                **connection_settings(blocking),
            )
        except RedisClusterException as error:
            raise ClusterError(f"{redact_url(url)}: {error}") from error
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(
        url,
        **connection_settings(blocking),
    )


async def masters_info(client: aioredis.Redis, section: str) -> list[dict[str, Any]]:
    """``INFO section`` of every master: one for a plain Redis, one per shard of a cluster
    (a cluster client's plain ``info`` asks one node only)."""
    if not is_cluster(client):
        return [await client.info(section)]
    cluster = cast(aiocluster.RedisCluster, client)
    replies = await cluster.info(section, target_nodes=aiocluster.RedisCluster.PRIMARIES)
    return list(replies.values()) if len(cluster.get_primaries()) > 1 else [replies]


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients here never set ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


# ---- hand-packed commands on one connection (the request path's pipelined EVALSHA) -----------

Arg = bytes | str | int | float


def encode_arg(value: Arg) -> bytes:
    """One command argument as redis-py's encoder sends it (``str`` as UTF-8, numbers by repr)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cannot send {type(value).__name__} to Redis")
    return repr(value).encode()


def pack_args(values: Iterable[Arg]) -> bytes:
    """RESP bulk strings, without the array header (``pack_command`` adds it)."""
    parts = []
    for value in values:
        data = encode_arg(value)
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def pack_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP, byte for byte what redis-py sends for ``execute_command(*args)``."""
    return b"*%d\r\n" % len(args) + pack_args(args)


def exchange_connection(client: aioredis.Redis) -> AbstractConnection:
    """A connection of its own for ``exchange``, made with the client's settings but no
    per-operation socket timeout (``exchange`` bounds the whole round trip once instead of
    arming a timer per write and per reply)."""
    pool = client.connection_pool
    return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})


async def exchange(connection: AbstractConnection, payload: bytes, reply_count: int, timeout_s: float | None) -> list[Any]:
    """Write ``payload`` (``reply_count`` packed commands) and read their replies in order,
    within ``timeout_s`` for the whole exchange. An error reply is returned, not raised (a
    ``ResponseError`` such as ``NoScriptError``); a failed or timed-out exchange disconnects
    the connection (the next one reconnects) and raises ``ConnectionError`` / ``TimeoutError``.
    A connection the server closed while it sat idle is replaced first, as redis-py's pool does."""
    if connection.is_connected:
        try:
            if await connection.can_read():  # at EOF, or bytes nobody asked for
                await connection.disconnect()
        except RedisConnectionError:
            pass  # it disconnected itself; send_packed_command reconnects
    try:
        async with asyncio.timeout(timeout_s):
            await connection.send_packed_command(payload, check_health=False)
            replies: list[Any] = []
            for _ in range(reply_count):
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as error:
                    replies.append(error)
            return replies
    except TimeoutError:
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError("Timeout exchanging with Redis") from None
    except BaseException:
        await connection.disconnect(nowait=True)
        raise

