"""Redis connection factories.

redis-py >= 8 defaults to ``socket_timeout=5``, which breaks blocking reads longer than
5 s; connections that block (BLPOP, BLMOVE) are made with ``socket_timeout=None``.

``pack_command`` / ``exchange``: commands packed by hand and pipelined on one connection, for
the request path, where redis-py's pipeline object costs more CPU than the round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def async_client(
    url: str, *, blocking: bool = False, max_connections: int = 32, client_name: str | None = None
) -> aioredis.Redis:
    """A client whose pool never grows past ``max_connections``: a burst of requests waits
    for a free connection instead of opening one per request in flight."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        socket_timeout=None if blocking else 10.0,
        socket_connect_timeout=5.0,
        health_check_interval=0,
        client_name=client_name,
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


async def exchange(connection: Connection, payload: bytes, reply_count: int) -> list[Any]:
    """Write ``payload`` (``reply_count`` packed commands) and read their replies in order, under
    one ``socket_timeout`` for the whole exchange. An error reply is returned, not raised (a
    ``ResponseError`` such as ``NoScriptError``); a failed or timed-out exchange disconnects
    the connection (the next one reconnects) and raises ``ConnectionError`` / ``TimeoutError``."""
    reader = connection._reader
    if reader is not None and (reader.at_eof() or reader.exception() is not None):  # closed by the server
        await connection.disconnect()
    if not connection.is_connected:
        await connection.connect()
    try:
        async with asyncio.timeout(connection.socket_timeout):
            writer = connection._writer
            assert writer is not None
            writer.write(payload)
            await writer.drain()
            parser: Any = connection._parser  # _AsyncRESP2Parser / _AsyncRESP3Parser / hiredis
            return [await parser.read_response() for _ in range(reply_count)]
    except TimeoutError:
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError("Timeout exchanging with Redis") from None
    except OSError as exc:
        await connection.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while talking to Redis: {exc}") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
