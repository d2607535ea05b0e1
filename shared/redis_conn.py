"""Redis connection factories.

redis-py >= 8 defaults to ``socket_timeout=5``, which breaks blocking reads longer than
5 s; connections that block (BLPOP, BLMOVE) are made with ``socket_timeout=None``.

``pack_command`` / ``exchange``: commands packed by hand and pipelined on one connection, for
the request path, where redis-py's pipeline object costs more CPU than the round trip.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def async_client(
    url: str, *, blocking: bool = False, max_connections: int = 32, client_name: str | None = None
) -> aioredis.Redis:
    """A client whose pool never grows past ``max_connections``: a burst of requests waits
    for a free connection instead of opening one per request in flight.

    A command that fails with a connection error is sent once more on a new connection: a
    Redis that died holding unread bytes resets its connections, a reset leaves no EOF for the
    pool's idle check to see, and the first command after Redis is back would fail on it."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        socket_timeout=None if blocking else 10.0,
        socket_connect_timeout=5.0,
        health_check_interval=0,
        client_name=client_name,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


def sync_client(url: str, *, blocking: bool = False) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=None if blocking else 10.0,
        socket_connect_timeout=5.0,
    )


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
