"""Redis connection factories.

redis-py >= 8 defaults to ``socket_timeout=5``, which breaks blocking reads longer than
5 s; connections that block (BLPOP, BLMOVE) are made with ``socket_timeout=None``.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis


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
