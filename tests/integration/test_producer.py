"""The producer library against a real cluster: the same results as HTTP, QueueFull, timeouts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import pytest
import redis

from shared import keys
from shared.errors import NotFound, QueueFull, RequestTimeout
from shared.producer import Producer
from shared.sync_producer import SyncProducer
from tests.cluster import LocalCluster, infer, local_cluster, pause_process, start, upload

pytestmark = pytest.mark.slow

SMALL_QUEUE = 4


@pytest.fixture(scope="module")
def cluster(redis_url: str, tiny_embedding_model: Any) -> Iterator[LocalCluster]:
    # a long heartbeat TTL: one node is paused (SIGSTOP) for a moment and must not be reaped
    with local_cluster(
        redis_url, nodes=[("node-1", 3), ("node-2", 3)], env={"INFERQ_HEARTBEAT_TTL_S": "15"}
    ) as running:
        upload(running, "tiny", tiny_embedding_model)
        start(running, "tiny", "number_of_allocations=2&wait_for=fully_allocated")
        start(running, "tiny", "deployment_id=tiny-nocache&number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        start(running, "tiny", f"deployment_id=tiny-small&queue_capacity={SMALL_QUEUE}&cache_size=0b&wait_for=started")
        time.sleep(1.5)  # past the gateway's view refresh (1 s): it routes over every started node
        yield running


def texts(tag: str, n: int) -> list[str]:
    return [f"{tag} document {i} about the quick brown fox" for i in range(n)]


def docs(values: list[str]) -> list[dict[str, str]]:
    return [{"text_field": t} for t in values]


async def test_results_equal_the_http_path_and_share_its_cache(cluster: LocalCluster) -> None:
    values = texts("shared-cache", 8)
    status, body = infer(cluster, "tiny", values)
    assert status == 200, body
    async with Producer.connect(cluster.redis_url) as producer:
        results = await producer.infer("tiny", docs(values), timeout_ms=5_000)
    assert [r.result() for r in results] == body["inference_results"]
    # every document was cached by the gateway's request on its ranked node: the producer routes
    # each digest to that same node, so all are cache hits answered by DISPATCH alone
    assert all(r.cache_hit for r in results)
    assert {r.node for r in results} <= {"node-1", "node-2"}


async def test_results_equal_the_http_path_without_a_cache(cluster: LocalCluster) -> None:
    values = texts("no-cache", 6)
    async with Producer.connect(cluster.redis_url) as producer:
        results = await producer.infer("tiny-nocache", docs(values), timeout_ms=5_000)
    status, body = infer(cluster, "tiny-nocache", values)
    assert status == 200, body
    assert not any(r.cache_hit for r in results)
    assert all(r.time_ms > 0 and r.node in ("node-1", "node-2") for r in results)
    for mine, theirs in zip(results, body["inference_results"], strict=True):
        assert mine.result().keys() == theirs.keys()
        assert np.allclose(mine.result()["predicted_value"], theirs["predicted_value"], atol=1e-6)
    assert not np.allclose(results[0].result()["predicted_value"], results[1].result()["predicted_value"])


def test_sync_producer_gives_the_same_results_and_errors(cluster: LocalCluster) -> None:
    values = texts("sync", 5)
    status, body = infer(cluster, "tiny", values)
    assert status == 200
    with SyncProducer.connect(cluster.redis_url) as producer:
        results = producer.infer("tiny", docs(values), timeout_ms=5_000)
        assert [r.result() for r in results] == body["inference_results"]
        assert producer.resolve("tiny").deployment_id == "tiny"
        # any number of threads share the one producer (its loop thread, connections, reply list)
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            per_thread = list(pool.map(lambda i: producer.infer("tiny", docs(values[i : i + 2])), range(4)))
        for i, thread_results in enumerate(per_thread):
            assert [r.result() for r in thread_results] == body["inference_results"][i : i + 2]
        with pytest.raises(NotFound) as missing:
            producer.infer("no-such-model", docs(values))
        status, http_body = infer(cluster, "no-such-model", values)
        assert status == missing.value.status == 404
        assert http_body == missing.value.body()
    with pytest.raises(RuntimeError):
        producer.infer("tiny", docs(values))  # closed
    assert not any(t.name == "inferq-sync-producer" for t in threading.enumerate())


def node_of(cluster: LocalCluster, deployment_id: str) -> str:
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        (node,) = [n.decode() for n in cast(list[bytes], client.hkeys(keys.routes(deployment_id)))]
    finally:
        client.close()
    return node


@contextmanager
def paused(cluster: LocalCluster, node_id: str) -> Iterator[None]:
    """The node's process stopped (SIGSTOP): nothing is taken from its queues meanwhile."""
    process = cluster.nodes[node_id]
    pause_process(process.pid)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


async def test_queue_full_and_timeouts_are_raised_as_http_answers_them(cluster: LocalCluster) -> None:
    node = node_of(cluster, "tiny-small")
    queue_key = keys.queue("tiny-small", node)
    stats_key = keys.stats("tiny-small", node)
    client = redis.Redis.from_url(cluster.redis_url)
    async with Producer.connect(cluster.redis_url) as producer:
        await producer.infer("tiny-small", docs(texts("warm", 1)), timeout_ms=5_000)
        rejected_before = int(client.hget(stats_key, "rejected_execution_count") or 0)
        with paused(cluster, node):
            # a request nobody serves before its deadline: RequestTimeout, as HTTP's 408
            began = time.monotonic()
            with pytest.raises(RequestTimeout) as timeout:
                await producer.infer("tiny-small", docs(texts("late", 1)), timeout_ms=300)
            # not before its deadline; well before the 5 s a served request may take (a loaded
            # 2-core machine can stall this process for a second or more)
            assert 0.25 <= time.monotonic() - began < 4.5
            status, http_timeout = infer(cluster, "tiny-small", texts("late-http", 1), timeout="300ms")
            assert status == timeout.value.status == 408
            assert http_timeout == timeout.value.body()

            # a bulk producer's lower bound: refused at 2 queued items, not counted as a rejection
            with pytest.raises(QueueFull):
                await producer.infer("tiny-small", docs(texts("bulk", SMALL_QUEUE)), queue_limit=2)
            assert client.llen(queue_key) == 2
            assert int(client.hget(stats_key, "rejected_execution_count") or 0) == rejected_before

            # interactive traffic still has the rest of the queue, up to queue_capacity exactly
            began = time.monotonic()
            with pytest.raises(QueueFull) as full:
                await producer.infer("tiny-small", docs(texts("fill", SMALL_QUEUE + 2)), timeout_ms=5_000)
            assert time.monotonic() - began < 4.5  # refused at once, never waiting out the 5 s timeout
            assert client.llen(queue_key) == SMALL_QUEUE
            assert int(client.hget(stats_key, "rejected_execution_count") or 0) > rejected_before
            status, http_full = infer(cluster, "tiny-small", texts("fill-http", 1))
            assert status == full.value.status == 429
            assert http_full == full.value.body()
        # resumed: the queue drains and the deployment answers again
        deadline = time.monotonic() + 20
        while client.llen(queue_key) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        results = await producer.infer("tiny-small", docs(texts("after", 2)), timeout_ms=10_000)
        assert len(results) == 2 and not any(r.cache_hit for r in results)
    client.close()


def test_example_program_prints_results_and_cache_hits(cluster: LocalCluster) -> None:
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "produce.py")
    argv = [sys.executable, example, "tiny", "example one", "example two", "--redis-url", cluster.redis_url]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*argv, "--sync"], capture_output=True, text=True, timeout=60, env=env)
    assert second.returncode == 0, second.stderr
    first_lines, second_lines = first.stdout.splitlines(), second.stdout.splitlines()
    assert len(first_lines) == len(second_lines) == 2
    assert all(line.startswith("inferred") for line in first_lines)
    assert all(line.startswith("cache hit") for line in second_lines)
    assert all('"predicted_value":[' in line for line in first_lines + second_lines)
    missing = subprocess.run([*argv[:2], "no-such-model", "--redis-url", cluster.redis_url],
                             capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 1 and "resource_not_found_exception" in missing.stderr
