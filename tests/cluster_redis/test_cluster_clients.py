"""The client side on a real Redis Cluster: commands and blocking reads reach the shard of their
key, sharded pub/sub (in a control-plane MULTI too), and a model's delete leaves no part on any
master."""

from __future__ import annotations

import asyncio
import json

import pytest

from shared.model_store import ModelStore
from shared.pubsub import Subscription, SyncSubscription, publish
from shared.redis_conn import async_client, sync_client
from tests.redis_cluster import RedisClusterProcesses

CONTROL_CHANNEL = "inferq:{control}:test-events"
# slots 13652, 1335, 7523, 3865, 12069, 8124: two on each master of a 3-master cluster
TAGS = ["{dep-a|node-1}", "{dep-a|node-2}", "{dep-b|node-3}", "{model:m}", "{control}", "{model:h}"]


def masters_holding(processes: RedisClusterProcesses, key: str) -> list[int]:
    return [port for port, keys in processes.keys_by_master().items() if key.encode() in keys]


async def test_commands_and_blocking_reads_go_to_the_shard_of_their_key(
    cluster_url: str, redis_cluster_processes: RedisClusterProcesses
) -> None:
    client = async_client(cluster_url)
    blocking = async_client(cluster_url, blocking=True, max_connections=4)
    try:
        for tag in TAGS:
            await client.set(f"inferq:{tag}:probe", tag)
        owners = {tag: masters_holding(redis_cluster_processes, f"inferq:{tag}:probe") for tag in TAGS}
        for tag, ports in owners.items():
            assert ports == [redis_cluster_processes.master_of(f"inferq:{tag}:probe").port]
        assert len({ports[0] for ports in owners.values()}) == 3  # the tags spread over every master

        waiting = asyncio.create_task(blocking.blpop(["inferq:{dep-b|node-1}:replies"], timeout=5))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await client.rpush("inferq:{dep-b|node-1}:replies", b"reply")
        assert list(await asyncio.wait_for(waiting, 5)) == [b"inferq:{dep-b|node-1}:replies", b"reply"]
    finally:
        await blocking.aclose()
        await client.aclose()


async def test_sharded_pub_sub_in_a_control_transaction(
    cluster_url: str, redis_cluster_processes: RedisClusterProcesses
) -> None:
    client = async_client(cluster_url)
    listener = async_client(cluster_url, blocking=True, max_connections=4)
    sync_listener = sync_client(cluster_url, blocking=True)
    try:
        async with Subscription(listener, CONTROL_CHANNEL) as events:
            with SyncSubscription(sync_listener, CONTROL_CHANNEL) as sync_events:
                assert await events.get(timeout_s=0.1) is None
                owner = redis_cluster_processes.master_of(CONTROL_CHANNEL)
                with owner.client() as direct:
                    assert direct.execute_command("PUBSUB", "SHARDNUMSUB", CONTROL_CHANNEL)[1] == 2
                async with client.pipeline(transaction=True) as pipe:  # one slot: one MULTI
                    pipe.incr("inferq:{control}:state:version")
                    publish(pipe, CONTROL_CHANNEL, b"changed")
                    assert await pipe.execute() == [1, 2]
                assert await events.get(timeout_s=5) == b"changed"
                assert sync_events.get(timeout_s=5) == b"changed"
                assert await publish(client, CONTROL_CHANNEL, b"node") == 2
                assert await events.get(timeout_s=5) == b"node"
                assert sync_events.get(timeout_s=5) == b"node"
    finally:
        sync_listener.close()
        await listener.aclose()
        await client.aclose()


async def test_pub_sub_on_one_redis(redis_url: str) -> None:
    client = async_client(redis_url)
    try:
        async with Subscription(client, "inferq:test-plain-events") as events:
            async with client.pipeline(transaction=True) as pipe:
                publish(pipe, "inferq:test-plain-events", b"changed")
                await pipe.execute()
            assert await events.get(timeout_s=5) == b"changed"
    finally:
        await client.aclose()


@pytest.mark.parametrize("parts", [3])
async def test_deleting_a_model_leaves_no_part_on_any_master(
    cluster_url: str, redis_cluster_processes: RedisClusterProcesses, parts: int
) -> None:
    client = async_client(cluster_url)
    store = ModelStore(client)
    try:
        await store.create("gone", {"model_type": "pytorch"})
        chunk = b"x" * 1024
        for part in range(parts):
            await store.put_part("gone", part, chunk, parts, parts * len(chunk))
        await store.put_vocabulary("gone", {"vocabulary": ["a"]})
        assert any(b"gone" in key for key in redis_cluster_processes.keys())
        await store.delete("gone")
        assert [key for key in redis_cluster_processes.keys() if b"gone" in key] == []
        assert json.dumps(await store.ids()) == "[]"
    finally:
        await client.aclose()
