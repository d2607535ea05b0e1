"""End to end on a real 3-master Redis Cluster (``redis+cluster://``): a gateway and two worker
nodes as processes, as on one Redis. The tests run in order on one cluster: upload, start on
two nodes, ``_infer`` (over HTTP, from a program's ``SyncProducer`` and as a bulk job whose RQ
lives in a plain Redis), a cache hit, 429 on
overflow, ``_update``, clearing the cache, a node SIGKILLed and its allocations placed again,
then stop and delete leaving no key of the model or its deployments on any master."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import LocalCluster, infer, local_cluster, pause_process, start, upload
from tests.redis_cluster import RedisClusterProcesses

pytestmark = pytest.mark.slow

MODEL = "tiny"
_counter = itertools.count()


def unique_texts(n: int) -> list[str]:
    return [f"text {next(_counter)} on a sharded Redis" for _ in range(n)]


def per_node(cluster: LocalCluster, deployment_id: str) -> dict[str, dict[str, Any]]:
    stats = cluster.deployment_stats(deployment_id)
    return {name: node for node in stats["nodes"] for name in node["node"]}


def cache_entries(cluster: LocalCluster) -> int:
    return sum(int(node.get("cache_entry_count", 0)) for node in per_node(cluster, MODEL).values())


def wait_until(what: str, check: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.1)


def keys_of(processes: RedisClusterProcesses, *names: str) -> list[bytes]:
    return [key for key in processes.keys() if any(name.encode() in key for name in names)]


@pytest.fixture(scope="module")
def on_cluster(
    redis_cluster_processes: RedisClusterProcesses, tiny_embedding_model: Any
) -> Iterator[LocalCluster]:
    redis_cluster_processes.flush()
    with local_cluster(redis_cluster_processes.url, nodes=[("node-1", 3), ("node-2", 3)]) as running:
        upload(running, MODEL, tiny_embedding_model)
        yield running


def test_start_on_two_nodes_and_infer(on_cluster: LocalCluster, redis_cluster_processes: RedisClusterProcesses) -> None:
    # two threads per allocation and three processors per node: one allocation on each node
    assignment = start(on_cluster, MODEL, "number_of_allocations=2&threads_per_allocation=2&wait_for=fully_allocated")
    assert assignment["assignment_state"] == "started"
    assert {node: route["current_allocations"] for node, route in assignment["routing_table"].items()} == {
        "node-1": 1,
        "node-2": 1,
    }
    texts = unique_texts(6)
    status, body = infer(on_cluster, MODEL, texts)
    assert status == 200, body
    assert len(body["inference_results"]) == 6
    status, single = infer(on_cluster, MODEL, texts[:1])
    assert single["inference_results"][0] == body["inference_results"][0]
    # the control plane ({control}: slot 12069), the model ({model:tiny}: 16235) and the two nodes'
    # queues ({tiny|node-1}: 9855, {tiny|node-2}: 5660) live on more than one master
    masters_used = {port for port, keys in redis_cluster_processes.keys_by_master().items() if keys}
    assert len(masters_used) >= 2


def test_programs_produce_on_the_cluster_url(on_cluster: LocalCluster) -> None:
    from shared.sync_producer import SyncProducer

    texts = unique_texts(3)
    with SyncProducer.connect(on_cluster.redis_url) as producer:
        results = producer.infer(MODEL, [{"text_field": text} for text in texts])
    status, body = infer(on_cluster, MODEL, texts)
    assert status == 200
    assert [r.result() for r in results] == body["inference_results"]


def test_a_bulk_job_runs_with_rq_on_a_plain_redis(on_cluster: LocalCluster, redis_url: str) -> None:
    """RQ keeps the job in a plain Redis (``--bulk-redis-url``); its documents go through the cluster."""
    import redis

    from inferq.bulk import enqueue_bulk, wait_for_job

    env = {**os.environ, **on_cluster.env, "INFERQ_BULK_IDLE_POLL_S": "1"}
    argv = [sys.executable, "-m", "inferq.cli", "bulk-worker", "--redis-url", on_cluster.redis_url,
            "--bulk-redis-url", redis_url]  # fmt: skip
    worker = subprocess.Popen(argv, env=env)
    rq_redis = redis.Redis.from_url(redis_url)
    try:
        texts = unique_texts(20)
        job = enqueue_bulk(rq_redis, MODEL, [{"text_field": text} for text in texts])
        assert wait_for_job(job, timeout_s=120, progress=False) == "finished"
        results = job.return_value()["results"]
        status, body = infer(on_cluster, MODEL, texts[:2])
        assert status == 200
        assert [r["result"] for r in results[:2]] == body["inference_results"]
        assert [r["index"] for r in results] == list(range(20))
    finally:
        rq_redis.close()
        worker.terminate()
        worker.wait(timeout=30)


def test_a_repeated_input_is_a_cache_hit(on_cluster: LocalCluster) -> None:
    text = unique_texts(1)
    cached = cache_entries(on_cluster)
    status, miss = infer(on_cluster, MODEL, text)
    assert status == 200
    # on a cluster the reply (the gateway's slot) and the cache insert (the node's) are two writes
    wait_until("the result cached", lambda: cache_entries(on_cluster) > cached)
    pids = [proc.pid for proc in on_cluster.nodes.values()]
    for pid in pids:
        pause_process(pid)  # no worker can answer now: only the cache can
    try:
        status, hit = infer(on_cluster, MODEL, text)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert status == 200 and hit == miss
    hits = sum(node.get("inference_cache_hit_count", 0) for node in per_node(on_cluster, MODEL).values())
    assert hits >= 1


def test_a_full_queue_answers_429_at_once(on_cluster: LocalCluster) -> None:
    start(on_cluster, MODEL, "deployment_id=tight&number_of_allocations=2&queue_capacity=2&cache_size=0b&wait_for=fully_allocated")
    pids = [proc.pid for proc in on_cluster.nodes.values()]
    for pid in pids:
        pause_process(pid)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(infer, on_cluster, "tight", [text]) for text in unique_texts(12)]
            done, _ = concurrent.futures.wait(futures, timeout=5, return_when=concurrent.futures.FIRST_COMPLETED)
            rejected = [f.result() for f in done]
            assert rejected and all(status == 429 for status, _ in rejected)
            assert all(body["error"]["type"] == "es_rejected_execution_exception" for _, body in rejected)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            statuses = sorted(f.result()[0] for f in futures)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert set(statuses) == {200, 429}  # every queued request served once the nodes go on
    stats = on_cluster.deployment_stats("tight")
    assert stats["rejected_execution_count"] == statuses.count(429)
    status, _ = on_cluster.call("POST", "/_ml/trained_models/tight/deployment/_stop")
    assert status == 200


def test_update_changes_the_allocations(on_cluster: LocalCluster) -> None:
    status, body = on_cluster.call("POST", f"/_ml/trained_models/{MODEL}/deployment/_update", {"number_of_allocations": 1})
    assert status == 200, body
    wait_until("one allocation", lambda: on_cluster.deployment_stats(MODEL)["allocation_status"]["allocation_count"] == 1)
    status, body = on_cluster.call("POST", f"/_ml/trained_models/{MODEL}/deployment/_update?number_of_allocations=2")
    assert status == 200, body
    wait_until("two allocations", lambda: on_cluster.deployment_stats(MODEL)["allocation_status"]["allocation_count"] == 2)
    status, body = infer(on_cluster, MODEL, unique_texts(4))
    assert status == 200, body


def test_clearing_the_cache_empties_it_on_every_master(
    on_cluster: LocalCluster, redis_cluster_processes: RedisClusterProcesses
) -> None:
    cached = cache_entries(on_cluster)
    status, _ = infer(on_cluster, MODEL, unique_texts(8))
    assert status == 200
    wait_until("the results cached", lambda: cache_entries(on_cluster) >= cached + 8)  # the reply can come first
    assert [key for key in keys_of(redis_cluster_processes, f"{{{MODEL}|") if b":cache" in key]
    status, body = on_cluster.call("POST", f"/_ml/trained_models/{MODEL}/deployment/cache/_clear")
    assert status == 200 and body == {"cleared": True}
    assert [key for key in keys_of(redis_cluster_processes, f"{{{MODEL}|") if b":cache:" in key] == []


def test_a_killed_node_is_replaced(on_cluster: LocalCluster) -> None:
    on_cluster.add_node("node-3", 2)  # room for the allocation of node-1 (two threads)
    on_cluster.kill_node("node-1")
    wait_until(
        "the allocation of node-1 placed on node-3",
        lambda: {n: a for n, s in per_node(on_cluster, MODEL).items() if (a := s.get("number_of_allocations", 0))}
        == {"node-2": 1, "node-3": 1},
        timeout_s=40,
    )
    status, body = infer(on_cluster, MODEL, unique_texts(6))
    assert status == 200, body


def test_stop_and_delete_leave_no_key_behind(
    on_cluster: LocalCluster, redis_cluster_processes: RedisClusterProcesses
) -> None:
    for deployment_id in (MODEL, "tight"):
        on_cluster.call("POST", f"/_ml/trained_models/{deployment_id}/deployment/_stop")
    status, body = on_cluster.call("DELETE", f"/_ml/trained_models/{MODEL}")
    assert status == 200, body
    wait_until("no key of the model or its deployments", lambda: not keys_of(redis_cluster_processes, MODEL, "tight"))
    assert [key for key in redis_cluster_processes.keys() if b":dn:" in key] == []
