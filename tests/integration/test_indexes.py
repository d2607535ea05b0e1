"""Per-node keys are found through indexes, never by SCAN (against a real redis-server): the
control plane removes exactly one deployment's keys, however its id and its neighbours' ids
look, a restarted node finds its processing lists, and no service module calls SCAN/KEYS."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import redis
import redis.asyncio as aioredis

from shared import keys, queue
from shared.redis_budget import CacheLimits
from shared.settings import WorkerSettings
from workers.allocation import Allocation, AllocationContext, BatchLimits

ROOT = Path(__file__).resolve().parents[2]


def start_allocation(client: redis.Redis, deployment_id: str, node_id: str, index: int) -> None:
    """What an allocation writes when it starts and serves: its index entries, a processing
    list, the queue, the stats and the cache."""
    context = AllocationContext(
        deployment_id, node_id, 1, lambda: CacheLimits(10_000), "lfu", 0, BatchLimits.from_settings(WorkerSettings())
    )
    model = SimpleNamespace(task=None)  # the model seam: nothing here runs a forward pass
    allocation = Allocation(index, context, model, lambda: client, lambda _: None)  # type: ignore[arg-type]
    queue.run(client, queue.index_allocation(deployment_id, node_id, allocation.allocation))
    client.lpush(keys.processing(deployment_id, node_id, allocation.allocation), b"in-flight")
    client.lpush(keys.queue(deployment_id, node_id), b"queued")
    client.lpush(keys.bulk_queue(deployment_id, node_id), b"bulk")
    client.hset(keys.stats(deployment_id, node_id), "inference_count", 1)
    completion = queue.Completion(10_000, "lfu", 1, 0, 0, 0, 0, cache_pairs=("d" * 32, b"value"))
    queue.run(client, queue.complete(deployment_id, node_id, "a99", completion))


def per_node_keys(client: redis.Redis, deployment_id: str) -> set[bytes]:
    return {k for k in client.keys("*") if f"{{{deployment_id}|".encode() in k or k.endswith(f":deployment:{deployment_id}:nodes".encode())}


def test_removing_a_deployment_removes_exactly_its_keys(redis_client: redis.Redis, redis_url: str) -> None:
    for deployment_id in ("dep-a", "dep-ab", "dep"):
        for node_id in ("node-1", "node-2"):
            start_allocation(redis_client, deployment_id, node_id, 0)
    start_allocation(redis_client, "dep-a", "node-1", 1)
    before = {d: per_node_keys(redis_client, d) for d in ("dep-a", "dep-ab", "dep")}
    assert len(before["dep-a"]) >= 2 * 8 + 1

    async def remove() -> None:
        from gateway.control import ControlPlane

        client = aioredis.Redis.from_url(redis_url)
        try:
            await ControlPlane(client)._remove("dep-a")
        finally:
            await client.aclose()

    asyncio.run(remove())
    assert per_node_keys(redis_client, "dep-a") == set()
    assert per_node_keys(redis_client, "dep-ab") == before["dep-ab"]
    assert per_node_keys(redis_client, "dep") == before["dep"]
    assert redis_client.smembers(keys.node_deployments("node-1")) == {b"dep-ab", b"dep"}


def test_a_restarted_node_requeues_what_its_allocations_held(redis_client: redis.Redis, redis_url: str) -> None:
    from workers.node import Node

    start_allocation(redis_client, "dep-a", "node-1", 0)
    start_allocation(redis_client, "dep-a", "node-1", 3)
    start_allocation(redis_client, "dep-b", "node-1", 0)
    start_allocation(redis_client, "dep-a", "node-2", 0)
    node = Node(WorkerSettings(node_id="node-1", redis_url=redis_url, confine=False))
    node.requeue_leftovers()
    assert redis_client.llen(keys.processing("dep-a", "node-1", "a0")) == 0
    assert redis_client.llen(keys.processing("dep-a", "node-1", "a3")) == 0
    assert redis_client.llen(keys.queue("dep-a", "node-1")) == 4  # 2 queued + 2 requeued
    assert redis_client.llen(keys.queue("dep-b", "node-1")) == 2
    assert redis_client.llen(keys.processing("dep-a", "node-2", "a0")) == 1  # another node's: untouched


def test_no_service_module_scans_the_keyspace() -> None:
    """SCAN/KEYS turn names into patterns and do not cross Redis Cluster shards: none left."""
    found: list[str] = []
    for path in sorted([*ROOT.glob("gateway/*.py"), *ROOT.glob("shared/*.py"), *ROOT.glob("workers/**/*.py"), *ROOT.glob("shared/lua/*.lua")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"scan_iter\(|\.keys\(\s*['\"]|['\"](SCAN|KEYS)['\"]", line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert found == []
