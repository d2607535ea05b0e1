"""A Redis that goes away and comes back on the same port: the gateway's connections must not
fail the first request after it is back. A connection the server reset (it died with bytes
unread) shows no EOF to redis-py's idle check, only an error on the next use; that first use
is a request sent after Redis returned, and must succeed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from shared.redis_conn import async_client, exchange, exchange_connection, pack_command
from tests.faults.harness import RedisProcess


def reset_every_connection(server: RedisProcess) -> None:
    """Kill the server while a command sits unread in its socket: the kernel answers the
    client's connections with RST, not FIN. Then start it again on the same port."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    with socket.create_connection(("127.0.0.1", server.port)) as unread:
        unread.sendall(pack_command(["PING"]))
        server.stop(signal.SIGKILL)
    server.start()


@pytest.fixture
def server() -> RedisProcess:
    process = RedisProcess(aof=False)
    process.start()
    yield process  # type: ignore[misc]
    process.close()


@pytest.mark.parametrize("first_use", ["exchange", "pooled command"])
def test_the_first_request_after_a_redis_restart_succeeds(server: RedisProcess, first_use: str) -> None:
    async def scenario() -> None:
        client = async_client(server.url)
        connection = exchange_connection(client)
        try:
            assert await exchange(connection, pack_command(["SET", "k", "1"]), 1, 5.0) == [b"OK"]
            assert await client.set("k", "1")  # a pooled connection, now idle in the pool
            await asyncio.to_thread(reset_every_connection, server)
            await asyncio.sleep(0.1)  # the loop has seen whatever the kernel told it
            if first_use == "exchange":
                assert await exchange(connection, pack_command(["GET", "k"]), 1, 5.0) == [None]
            else:
                assert await client.get("k") is None
        finally:
            await connection.disconnect()
            await client.aclose()

    asyncio.run(scenario())
