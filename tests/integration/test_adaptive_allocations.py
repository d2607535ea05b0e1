"""Adaptive allocations end to end (a gateway and a 2-processor worker, all-MiniLM-L6-v2, a
3-second idle setting): ``min 0, max 2`` goes to zero allocations when idle, the next request
is answered (200) within its timeout while the deployment scales up from zero, sustained load
reaches 2 allocations, and ``_stats`` reports the settings and the count throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import LocalCluster, infer, local_cluster, upload

pytestmark = pytest.mark.slow

MODEL = "minilm-adaptive"
SETTINGS = {"enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 2}
LONG_TEXT = " ".join(f"word{i} sentence about adaptive allocations and their load" for i in range(40))


@pytest.fixture(scope="module")
def adaptive_cluster(redis_url: str, minilm_traced: Any) -> Iterator[LocalCluster]:
    env = {
        "INFERQ_ADAPTIVE_IDLE_S": "3",
        "INFERQ_ADAPTIVE_COOLDOWN_S": "2",
        "INFERQ_ADAPTIVE_INTERVAL_S": "0.5",
    }
    with local_cluster(redis_url, nodes=[("node-1", 2)], env=env) as running:
        upload(running, MODEL, minilm_traced)
        yield running


def deployment_stats(cluster: LocalCluster) -> dict[str, Any]:
    status, body = cluster.call("GET", f"/_ml/trained_models/{MODEL}/_stats")
    assert status == 200, body
    stats: dict[str, Any] = body["trained_model_stats"][0]["deployment_stats"]
    assert stats["adaptive_allocations"] == SETTINGS, stats  # reported throughout
    assert stats["state"] == "started", stats
    return stats


def wait_for(cluster: LocalCluster, timeout_s: float, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = deployment_stats(cluster)
        if done(stats):
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)


def test_scale_to_zero_serve_from_zero_and_scale_up_under_load(adaptive_cluster: LocalCluster) -> None:
    cluster = adaptive_cluster
    status, body = cluster.call(
        "POST",
        f"/_ml/trained_models/{MODEL}/deployment/_start?timeout=300s&wait_for=fully_allocated",
        {"adaptive_allocations": SETTINGS},
        timeout_s=400,  # a loaded 2-core machine can take minutes to load the model
    )
    assert status == 200, body
    assert body["assignment"]["adaptive_allocations"] == SETTINGS
    assert body["assignment"]["task_parameters"]["number_of_allocations"] == 1

    # idle: down to zero allocations, and the node lets the model go
    stats = wait_for(cluster, 60, lambda s: s["number_of_allocations"] == 0 and not s["nodes"])
    assert stats["allocation_status"] == {"allocation_count": 0, "target_allocation_count": 0, "state": "fully_allocated"}

    # the next request waits for an allocation and is answered within its timeout
    started = time.monotonic()
    status, body = infer(cluster, MODEL, ["the first request after scaling to zero"], timeout="30s")
    cold_start_s = time.monotonic() - started
    assert status == 200, body
    assert len(body["inference_results"][0]["predicted_value"]) == 384
    assert cold_start_s < 30
    print(f"cold start of {MODEL} from zero allocations: {cold_start_s:.2f} s")
    assert deployment_stats(cluster)["number_of_allocations"] >= 1

    # sustained load: two allocations
    stop = threading.Event()
    failures: list[Any] = []

    def load() -> None:
        while not stop.is_set():
            code, answer = infer(cluster, MODEL, [f"{LONG_TEXT} {time.monotonic()} {i}" for i in range(8)], timeout="60s")
            if code != 200:
                failures.append(answer)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        stats = wait_for(
            cluster, 90, lambda s: s["number_of_allocations"] == 2 and s["allocation_status"]["allocation_count"] == 2
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures[:2]
    assert stats["allocation_status"]["state"] == "fully_allocated"

    # _update: a count is refused while adaptive allocations are on; settings merge
    status, body = cluster.call("POST", f"/_ml/trained_models/{MODEL}/deployment/_update", {"number_of_allocations": 1})
    assert status == 400 and body["error"]["type"] == "validation_exception", body
    assert body["error"]["reason"] == "[number_of_allocations] cannot be set if adaptive allocations is enabled"
    status, body = cluster.call(
        "POST", f"/_ml/trained_models/{MODEL}/deployment/_update", {"adaptive_allocations": {"max_number_of_allocations": 3}}
    )
    assert status == 200, body
    assert body["assignment"]["adaptive_allocations"] == SETTINGS | {"max_number_of_allocations": 3}

    status, body = cluster.call("POST", f"/_ml/trained_models/{MODEL}/deployment/_stop")
    assert status == 200, body
