"""``ScriptPipeline`` (the gateway's DISPATCH path) against its own redis-server: calls survive
a flushed script cache and a connection the server closed; error replies reach only their
caller."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import ResponseError

from shared.producer import ScriptPipeline
from shared.queue import Script
from shared.redis_conn import async_client
from tests.redis_server import redis_server_process

SCRIPT = Script("test", keys=("k",), argv=("n",), body="return {tonumber(n) + 1, k}")


def test_calls_survive_script_flush_and_a_killed_connection() -> None:
    async def scenario(url: str) -> None:
        client = async_client(url)
        admin = redis.Redis.from_url(url)
        pipeline = ScriptPipeline(client, SCRIPT)
        try:
            assert await pipeline.submit(["k"], [1]) == [2, b"k"]
            admin.script_flush()  # NOSCRIPT: loaded again, every refused call sent once more
            assert await asyncio.gather(*[pipeline.submit(["k"], [i]) for i in range(5)]) == [
                [i + 1, b"k"] for i in range(5)
            ]
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            await asyncio.sleep(0.1)
            assert await pipeline.submit(["k"], [5]) == [6, b"k"]  # a fresh connection, no error
            good, bad = pipeline.submit(["k"], [7]), pipeline.submit(["k"], ["not a number"])
            assert await good == [8, b"k"]
            with pytest.raises(ResponseError):
                await bad
            assert await pipeline.submit(["k"], [9]) == [10, b"k"]
        finally:
            await pipeline.close()
            await client.aclose()
            admin.close()

    with redis_server_process() as (url, _):
        asyncio.run(scenario(url))
