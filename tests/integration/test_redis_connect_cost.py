"""A new connection from inferq's clients sends HELLO and nothing the server refuses: redis-py 8
would also send CLIENT SETINFO (twice) and CLIENT MAINT_NOTIFICATIONS, a round trip each and
error replies on Redis < 7.2 that show up in ``errorstat_ERR`` (what operators alert on)."""

from __future__ import annotations

import asyncio

import redis

from shared.redis_conn import async_client, sync_client


def error_replies(probe: redis.Redis) -> int:
    return int(probe.info("errorstats").get("errorstat_ERR", {}).get("count", 0))


def test_new_connections_cause_no_error_replies(redis_url: str) -> None:
    probe = sync_client(redis_url)
    before = error_replies(probe)
    calls_before = probe.info("commandstats")

    client = sync_client(redis_url)
    client.ping()
    client.close()

    async def use_async() -> None:
        for blocking in (False, True):
            aclient = async_client(redis_url, blocking=blocking)
            await aclient.ping()
            await aclient.aclose()

    asyncio.run(use_async())
    assert error_replies(probe) == before
    client_calls = probe.info("commandstats").get("cmdstat_client|setinfo", {}).get("calls", 0)
    assert client_calls == calls_before.get("cmdstat_client|setinfo", {}).get("calls", 0)
    probe.close()
