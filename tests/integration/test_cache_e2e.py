"""The inference cache end to end: hits need no worker, are counted, never go stale, survive
a worker restart, ``0b`` stores nothing, and ``cache/_clear`` empties every node."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shared import keys
from tests.cluster import LocalCluster, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(redis_url: str, tiny_embedding_model: Any) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("n1", 2), ("n2", 2)]) as running:
        upload(running, "tiny", tiny_embedding_model)
        yield running


def cache_keys(cluster: LocalCluster, deployment_id: str) -> list[bytes]:
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        return sorted(client.scan_iter(match=keys.dn_prefix(deployment_id, "*") + ":cache*"))
    finally:
        client.close()


def node_stats(cluster: LocalCluster, deployment_id: str) -> dict[str, dict[str, Any]]:
    status, body = cluster.call("GET", f"/_ml/trained_models/{deployment_id}/_stats")
    assert status == 200
    entry = next(e for e in body["trained_model_stats"] if e.get("deployment_stats", {}).get("deployment_id") == deployment_id)
    return {n: node for node in entry["deployment_stats"]["nodes"] for n in node["node"]}


def test_hit_is_served_while_the_worker_is_paused(pair: LocalCluster) -> None:
    start(pair, "tiny", "deployment_id=cached&number_of_allocations=2")
    text = ["a sentence worth caching"]
    status, miss = infer(pair, "cached", text)
    assert status == 200
    for proc in pair.nodes.values():
        os.kill(proc.pid, signal.SIGSTOP)  # no worker can answer now
    try:
        began = time.monotonic()
        status, hit = infer(pair, "cached", text)
        elapsed = time.monotonic() - began
    finally:
        for proc in pair.nodes.values():
            os.kill(proc.pid, signal.SIGCONT)
    assert status == 200 and hit == miss  # exactly what the miss returned
    assert elapsed < 5.0  # answered from the cache, not after the 10 s wait for a paused worker
    hits = sum(n.get("inference_cache_hit_count", 0) for n in node_stats(pair, "cached").values())
    counts = sum(n.get("inference_count", 0) for n in node_stats(pair, "cached").values())
    assert hits == 1 and counts == 2


def test_identical_inputs_go_to_one_node(pair: LocalCluster) -> None:
    texts = [f"affinity text {i}" for i in range(12)]
    for text in texts:
        assert infer(pair, "cached", [text])[0] == 200
    before = node_stats(pair, "cached")
    for text in texts:
        assert infer(pair, "cached", [text])[0] == 200
    after = node_stats(pair, "cached")
    new_hits = sum(after[n].get("inference_cache_hit_count", 0) - before[n].get("inference_cache_hit_count", 0) for n in after)
    assert new_hits == len(texts)  # every repeat found its entry on the node that computed it


def test_clear_empties_every_node(pair: LocalCluster) -> None:
    assert cache_keys(pair, "cached")
    status, body = pair.call("POST", "/_ml/trained_models/cached/deployment/cache/_clear")
    assert status == 200 and body == {"cleared": True}
    assert cache_keys(pair, "cached") == []
    status, body = pair.call("POST", "/_ml/trained_models/nope/deployment/cache/_clear")
    assert status == 404


def test_zero_budget_stores_nothing(pair: LocalCluster) -> None:
    start(pair, "tiny", "deployment_id=uncached&cache_size=0b")
    for _ in range(3):
        assert infer(pair, "uncached", ["same text every time"])[0] == 200
    assert cache_keys(pair, "uncached") == []
    stats = node_stats(pair, "uncached")
    assert sum(n.get("inference_cache_hit_count", 0) for n in stats.values()) == 0
    assert sum(n.get("inference_count", 0) for n in stats.values()) == 3


def test_no_stale_hits_after_reupload_or_restart(pair: LocalCluster, tiny_embedding_model: Any, minilm_traced: Any) -> None:
    text = ["stale entries must never be served"]
    status, first = infer(pair, "cached", text)
    assert status == 200
    # restart the deployment: a new deployment never hits old entries (they are dropped)
    assert pair.call("POST", "/_ml/trained_models/cached/deployment/_stop")[0] == 200
    assert cache_keys(pair, "cached") == []
    # re-upload a different definition under the same id and deploy it again
    assert pair.call("DELETE", "/_ml/trained_models/tiny?force=true")[0] == 200
    upload(pair, "tiny", minilm_traced)
    start(pair, "tiny", "deployment_id=cached")
    status, second = infer(pair, "cached", text)
    assert status == 200
    assert len(second["inference_results"][0]["predicted_value"]) != len(first["inference_results"][0]["predicted_value"])
    hits = sum(n.get("inference_cache_hit_count", 0) for n in node_stats(pair, "cached").values())
    assert hits == 0


def test_cache_survives_a_worker_restart(redis_url: str, tiny_embedding_model: Any) -> None:
    with local_cluster(redis_url, nodes=[("phoenix", 2)]) as one:
        upload(one, "tiny", tiny_embedding_model)
        start(one, "tiny")
        assert infer(one, "tiny", ["remember me"])[0] == 200
        one.kill_node("phoenix", signal.SIGKILL)
        one.add_node("phoenix", 2)
        deadline = time.monotonic() + 30
        while node_stats(one, "tiny").get("phoenix", {}).get("routing_state", {}).get("routing_state") != "started":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = node_stats(one, "tiny")["phoenix"].get("inference_cache_hit_count", 0)
        assert infer(one, "tiny", ["remember me"])[0] == 200
        after = node_stats(one, "tiny")["phoenix"]["inference_cache_hit_count"]
        assert after == before + 1
