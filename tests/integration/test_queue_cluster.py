"""``shared.queue``'s typed calls on a real 3-master Redis Cluster (sync and asyncio cluster
clients): every script runs on its one shard, the reply/acknowledgement split works across
shards, the hand-over moves a queue between slots, the cache is reached through the scripts and
drop leaves no key on any master.

The cluster here is the smallest that shows it (three masters, no replicas, ``tests/redis_cluster.py``);
the end-to-end cluster suite is tests/cluster_redis/."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from shared import keys, queue
from shared.wire import InferReply, InferRequest
from tests.cache_driver import AsyncCache, SyncCache
from tests.redis_cluster import redis_cluster

DEP = "dep-1"


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    with redis_cluster(masters=3) as cluster:
        yield cluster.servers[0].port


@pytest.fixture
def client(cluster_port: int) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
    client.flushall()
    yield client
    client.close()


def request(request_id: str) -> bytes:
    return InferRequest(request_id, keys.gateway_replies("g1"), DEP, "t", {}, 10**13, 1).pack()


def test_the_request_path_on_a_cluster(client: redis.cluster.RedisCluster) -> None:
    assert queue.is_cluster(client)
    queued = queue.run(client, queue.dispatch(DEP, "n1", digest="d" * 32, payload=request("r1"), capacity=10, now_ms=1))
    assert queued.code == queue.DISPATCH_QUEUED
    queue.run(client, queue.index_allocation(DEP, "n1", "a0"))
    taken = queue.run(client, queue.take(DEP, "n1", "a0", queue.TakeArgs(8), wait_s=0.1))
    assert len(taken.items) == 1
    completion = queue.Completion(10_000, "lfu", 2, 0, 1, 1.0, 0, cache_pairs=("d" * 32, b'{"x":1}'))
    replies = [(keys.gateway_replies("g1"), InferReply("r1", "n1", result_json=b"{}").pack())]
    assert queue.run(client, queue.finish(DEP, "n1", "a0", replies, completion)) == []
    assert 0 < client.ttl(keys.gateway_replies("g1")) <= queue.REPLY_TTL_S
    assert not client.exists(keys.processing(DEP, "n1", "a0"))
    hit = queue.run(client, queue.dispatch(DEP, "n1", digest="d" * 32, payload=request("r2"), capacity=10, now_ms=3))
    assert (hit.code, hit.value) == (queue.DISPATCH_HIT, b'{"x":1}')
    assert queue.run(client, queue.samples(DEP, ["n1"]))["n1"].stats[b"cache_hit_count"] == b"1"


def test_hand_over_cancel_and_drop_across_shards(client: redis.cluster.RedisCluster) -> None:
    source, target = keys.queue(DEP, "dead"), keys.queue(DEP, "n1")
    assert client.keyslot(source) != client.keyslot(target)
    for i in range(300):
        client.lpush(source, request(f"r{i:03d}"))
    assert queue.run(client, queue.hand_over(DEP, "dead", "n1")) == 300
    assert not client.exists(source) and client.llen(target) == 300
    error = {"status": 409, "type": "status_exception", "reason": "stopping"}
    assert queue.run(client, queue.cancel(DEP, "n1", error)) == 300
    assert client.llen(keys.gateway_replies("g1")) == 300
    cache = SyncCache(client, DEP, "n1", budget_bytes=100_000)
    assert cache.put("e" * 32, b"v" * 100) and cache.get("e" * 32) == b"v" * 100
    queue.run(client, queue.index_allocation(DEP, "n1", "a0"))
    queue.run(client, queue.drop(DEP, "n1"))
    left = [k for node in client.get_primaries() for k in client.keys(target_nodes=node) if b"{dep-1|n1}" in k]
    assert left == []


def test_the_asyncio_cluster_client(cluster_port: int) -> None:
    async def scenario() -> None:
        client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
        try:
            cache = AsyncCache(client, DEP, "n2", budget_bytes=100_000)
            assert await cache.put("f" * 32, b"w" * 50) and await cache.get("f" * 32) == b"w" * 50
            await client.rpush(keys.processing(DEP, "n2", "a0"), request("x"))
            completion = queue.Completion(10_000, "lfu", 2, 0, 1, 1.0, 0)
            replies = [(keys.gateway_replies("g7"), b"x"), (keys.gateway_replies("g8"), b"y")]
            assert await queue.arun(client, queue.finish(DEP, "n2", "a0", replies, completion)) == []
            assert not await client.exists(keys.processing(DEP, "n2", "a0"))
            pairs = [(DEP, "n2"), (DEP, "n3")]
            figures = await queue.arun(client, _figures(pairs))
            assert len(figures) == 2
            assert await queue.arun(client, queue.cache_meta(pairs, ("entries",))) == [[b"1"], [None]]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def _figures(pairs: list[tuple[str, str]]) -> queue.Ops[list[bytes]]:
    names = yield queue.Batch(tuple(queue.allocations_command(d, n) for d, n in pairs))
    return (yield queue.Batch(tuple(queue.figures_call(d, n, a) for (d, n), a in zip(pairs, names, strict=True))))


def test_the_producer_on_a_cluster_pipelines_per_shard(cluster_port: int, client: redis.cluster.RedisCluster) -> None:
    """Two deployments' queues on different shards: the producer's DISPATCH calls go pipelined on
    one connection per shard; a worker (typed calls) answers; then the results are cache hits."""
    from benchmarks.scrape_cost import deployment_doc
    from shared.deployment_store import RouteStatus
    from shared.producer import Producer

    now = int(time.time() * 1000)
    deployments = ["dep-a", "dep-b"]
    for deployment_id in deployments:
        doc = deployment_doc(deployment_id, ["n1"], now) | {
            "model_sha256": "ab" * 32, "inference_config": {"text_embedding": {}}, "field_names": ["text_field"],
        }  # fmt: skip
        client.set(keys.deployment(deployment_id), json.dumps(doc))
        client.sadd(keys.DEPLOYMENTS, deployment_id)
        client.hset(keys.routes(deployment_id), "n1", RouteStatus("started", 1, "", now, 1).to_json())
    assert client.keyslot(keys.queue("dep-a", "n1")) != client.keyslot(keys.queue("dep-b", "n1"))
    stop = threading.Event()
    finished = [0]  # requests acknowledged (their results cached): the reply comes before that

    def worker() -> None:
        own = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
        while not stop.is_set():
            for deployment_id in deployments:
                taken = queue.run(own, queue.take(deployment_id, "n1", "a0", queue.TakeArgs(64), wait_s=0.01))
                requests = [InferRequest.unpack(raw) for raw in taken.items]
                results = [(r, json.dumps({"predicted_value": [len(r.text)]}).encode()) for r in requests]
                replies = [(r.reply_to, InferReply(r.id, "n1", result_json=body).pack()) for r, body in results]
                pairs = [x for r, body in results for x in (r.digest, body)]
                completion = queue.Completion(1 << 20, "lfu", int(time.time() * 1000), now, len(results), 1.0, 0,
                                              cache_pairs=pairs)  # fmt: skip
                queue.run(own, queue.finish(deployment_id, "n1", "a0", replies, completion))
                finished[0] += len(requests)
        own.close()

    async def scenario() -> None:
        async_client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
        blocking = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port, socket_timeout=None)
        producer = Producer(async_client, blocking)
        await producer.start()
        try:
            docs = [{"text_field": "x" * i} for i in range(1, 21)]
            for cache_hit in (False, True):
                results = await asyncio.gather(*(producer.infer(d, docs, timeout_ms=20_000) for d in deployments))
                for found in results:
                    assert [r.result()["predicted_value"] for r in found] == [[i] for i in range(1, 21)]
                    assert {r.cache_hit for r in found} == {cache_hit}
                deadline = time.monotonic() + 10
                while finished[0] < len(docs) * len(deployments):  # every miss's result is cached
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
            assert len(producer._shards) == 2  # one pipelined connection per shard in use
        finally:
            await producer.close()
            await async_client.aclose()
            await blocking.aclose()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        thread.join(timeout=10)
