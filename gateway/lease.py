"""The cluster lease: one holder at a time mutates deployment documents (planner, start,
stop, update), whichever gateway it runs in. Key: ``inferq:planner:lease``."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from shared import keys
from shared.errors import Unavailable

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@asynccontextmanager
async def cluster_lease(
    client: aioredis.Redis, *, ttl_ms: int = 10_000, wait_s: float = 15.0
) -> AsyncIterator[str]:
    """Hold the lease for the block; waits up to ``wait_s`` for another holder to finish."""
    token = secrets.token_hex(8)
    deadline = time.monotonic() + wait_s
    while not await client.set(keys.PLANNER_LEASE, token, nx=True, px=ttl_ms):
        if time.monotonic() > deadline:
            raise Unavailable("timed out waiting for the cluster state lease")
        await asyncio.sleep(0.02)
    try:
        yield token
    finally:
        await client.eval(_RELEASE, 1, keys.PLANNER_LEASE, token)


async def try_lease(client: aioredis.Redis, *, ttl_ms: int = 10_000) -> str | None:
    token = secrets.token_hex(8)
    return token if await client.set(keys.PLANNER_LEASE, token, nx=True, px=ttl_ms) else None


async def release(client: aioredis.Redis, token: str) -> None:
    await client.eval(_RELEASE, 1, keys.PLANNER_LEASE, token)
