"""Deployment lifecycle on three worker processes of different sizes (1, 2 and 4 processors):
start with each ``wait_for``, update under load, stop with and without finishing pending
work, a node killed with SIGKILL, capacity and validation errors, exact stats counters."""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import LocalCluster, infer, local_cluster, pause_process, start, upload

pytestmark = pytest.mark.slow

_counter = itertools.count()


@pytest.fixture(scope="module")
def trio(redis_url: str, tiny_embedding_model: Any) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("small", 1), ("medium", 2), ("large", 4)]) as running:
        upload(running, "tiny", tiny_embedding_model)
        yield running


def unique_texts(n: int) -> list[str]:
    return [f"text {next(_counter)} for the lifecycle" for _ in range(n)]


def stop(cluster: LocalCluster, deployment_id: str, query: str = "") -> None:
    status, body = cluster.call("POST", f"/_ml/trained_models/{deployment_id}/deployment/_stop?{query}")
    assert status == 200 and body == {"stopped": True}, body


@pytest.mark.parametrize("wait_for", ["starting", "started", "fully_allocated"])
def test_start_with_each_wait_for(trio: LocalCluster, wait_for: str) -> None:
    deployment_id = f"wait-{wait_for.replace('_', '-')}"
    assignment = start(trio, "tiny", f"deployment_id={deployment_id}&number_of_allocations=3&wait_for={wait_for}&cache_size=0b")
    params = assignment["task_parameters"]
    assert params["deployment_id"] == deployment_id and params["number_of_allocations"] == 3
    assert params["cache_size"] == "0b" and params["queue_capacity"] == 10_000
    assert sum(r["target_allocations"] for r in assignment["routing_table"].values()) == 3
    current = sum(r["current_allocations"] for r in assignment["routing_table"].values())
    if wait_for == "fully_allocated":
        assert current == 3 and assignment["assignment_state"] == "started"
    elif wait_for == "started":
        assert current >= 1 and assignment["assignment_state"] == "started"
    assert assignment["start_time"].endswith("Z")
    # whatever it waited for, the deployment comes up and serves
    deadline = time.monotonic() + 30
    while trio.deployment_stats(deployment_id)["allocation_status"]["state"] != "fully_allocated":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status, body = infer(trio, deployment_id, unique_texts(2))
    assert status == 200, body
    stop(trio, deployment_id)


def test_start_validation_and_capacity_errors(trio: LocalCluster) -> None:
    status, body = trio.call(
        "POST", "/_ml/trained_models/tiny/deployment/_start?threads_per_allocation=3&number_of_allocations=0&queue_capacity=0"
    )
    assert status == 400
    assert body["error"]["type"] == "action_request_validation_exception"
    reason = body["error"]["reason"]
    assert reason.startswith("Validation Failed: 1: ")
    assert "[number_of_allocations] must be a positive integer" in reason
    assert "[threads_per_allocation] must be a power of 2 less than or equal to 32" in reason
    assert "[queue_capacity] must be a positive integer" in reason
    status, body = trio.call("POST", "/_ml/trained_models/tiny/deployment/_start?timeout=abc")
    assert status == 400 and body["error"]["type"] == "illegal_argument_exception"
    status, body = trio.call("POST", "/_ml/trained_models/tiny/deployment/_start?cache_size=12parsecs")
    assert status == 400 and body["error"]["type"] == "parse_exception"
    status, body = trio.call("POST", "/_ml/trained_models/tiny/deployment/_start?wait_for=eventually")
    assert status == 400 and body["error"]["type"] == "illegal_argument_exception"
    status, body = trio.call("POST", "/_ml/trained_models/tiny/deployment/_start?priority=low&number_of_allocations=2")
    assert status == 400 and "[number_of_allocations] must be 1 when [priority] is low" in body["error"]["reason"]
    status, body = trio.call(
        "POST", "/_ml/trained_models/tiny/deployment/_start?number_of_allocations=2", {"number_of_allocations": 3}
    )
    assert status == 400 and "different from the parameter" in body["error"]["reason"]
    # 8 threads fit no node (largest has 4): 429 with the planner's explanation
    status, body = trio.call("POST", "/_ml/trained_models/tiny/deployment/_start?threads_per_allocation=8")
    assert status == 429
    assert body["error"]["reason"] == "Could not start deployment because no ML nodes with sufficient capacity were found"
    assert "caused_by" in body["error"]
    # 8 allocations of 1 thread: only 7 processors in the cluster
    status, body = trio.call("POST", "/_ml/trained_models/tiny/deployment/_start?number_of_allocations=8")
    assert status == 429
    assert "not enough resources to provide all requested allocations" in body["error"]["reason"]
    # neither left a deployment behind
    status, body = trio.call("GET", "/_ml/trained_models/tiny/_stats")
    assert "deployment_stats" not in body["trained_model_stats"][0]


def test_duplicate_deployment_and_low_priority(trio: LocalCluster) -> None:
    start(trio, "tiny", "deployment_id=dup&cache_size=0b")
    status, body = trio.call("POST", "/_ml/trained_models/tiny/deployment/_start?deployment_id=dup")
    assert status == 400 and "existing deployment with the same id [dup]" in body["error"]["reason"]
    low = start(trio, "tiny", "deployment_id=low-one&priority=low")
    assert low["task_parameters"]["priority"] == "low"
    stop(trio, "dup")
    stop(trio, "low-one")


def _load(cluster: LocalCluster, deployment_id: str, stop_flag: threading.Event, results: list[int]) -> None:
    while not stop_flag.is_set():
        status, _ = infer(cluster, deployment_id, unique_texts(2))
        results.append(status)


def test_update_up_and_down_under_load_loses_nothing(trio: LocalCluster) -> None:
    start(trio, "tiny", "deployment_id=elastic&number_of_allocations=1&cache_size=0b")
    stop_flag = threading.Event()
    results: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        loaders = [pool.submit(_load, trio, "elastic", stop_flag, results) for _ in range(4)]
        time.sleep(0.5)
        began = time.monotonic()
        status, body = trio.call("POST", "/_ml/trained_models/elastic/deployment/_update", {"number_of_allocations": 5})
        assert status == 200, body
        assert body["assignment"]["task_parameters"]["number_of_allocations"] == 5
        while trio.deployment_stats("elastic")["allocation_status"]["allocation_count"] != 5:
            assert time.monotonic() - began < 30
            time.sleep(0.05)
        scale_up_s = time.monotonic() - began
        time.sleep(0.5)
        status, body = trio.call("POST", "/_ml/trained_models/elastic/deployment/_update?number_of_allocations=2")
        assert status == 200, body
        began = time.monotonic()
        while trio.deployment_stats("elastic")["allocation_status"]["allocation_count"] != 2:
            assert time.monotonic() - began < 30
            time.sleep(0.05)
        time.sleep(1.0)
        stop_flag.set()
        for loader in loaders:
            loader.result()
    print(f"update 1 -> 5 allocations serving after {scale_up_s:.2f}s; {len(results)} requests during updates")
    assert results and set(results) == {200}
    status, body = trio.call("POST", "/_ml/trained_models/elastic/deployment/_update?number_of_allocations=50")
    assert status == 429
    status, body = trio.call("POST", "/_ml/trained_models/nothing-here/deployment/_update?number_of_allocations=2")
    assert status == 404
    stop(trio, "elastic")


def test_stop_cancels_queued_work_unless_asked_to_finish(redis_url: str, minilm_traced: Any) -> None:
    long_text = " ".join(["stopping deployments answer every queued request"] * 30)
    with local_cluster(redis_url, nodes=[("solo", 1)], env={"INFERQ_MAX_BATCH_SIZE": "1"}) as solo:
        upload(solo, "slow", minilm_traced)
        for finish in (False, True):
            start(solo, "slow", "cache_size=0b&queue_capacity=100")
            with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
                futures = [pool.submit(infer, solo, "slow", [f"{i} {long_text}"]) for i in range(12)]
                time.sleep(0.3)
                stop(solo, "slow", f"finish_pending_work={'true' if finish else 'false'}")
                outcomes = [f.result() for f in futures]
            statuses = [status for status, _ in outcomes]
            if finish:
                assert set(statuses) == {200}, statuses
            else:
                cancelled = [body for status, body in outcomes if status != 200]
                assert cancelled, statuses
                assert all("inference canceled as process is stopping" in b["error"]["reason"] for b in cancelled)
        status, body = solo.call("POST", "/_ml/trained_models/slow/deployment/_stop?allow_no_match=false")
        assert status == 404
        status, body = solo.call("POST", "/_ml/trained_models/slow/deployment/_stop")
        assert status == 200


def test_killed_node_allocations_are_replaced(redis_url: str, tiny_embedding_model: Any) -> None:
    with local_cluster(redis_url, nodes=[("a", 2), ("b", 2)]) as pair:
        upload(pair, "tiny", tiny_embedding_model)
        start(pair, "tiny", "number_of_allocations=2&wait_for=fully_allocated&cache_size=0b")
        stats = pair.deployment_stats("tiny")
        victim = next(n for node in stats["nodes"] for n in node["node"] if node.get("number_of_allocations", 0) > 0)
        survivor = "b" if victim == "a" else "a"
        pair.kill_node(victim)
        killed_at = time.monotonic()
        while True:
            stats = pair.deployment_stats("tiny")
            per_node = {n: node for node in stats["nodes"] for n in node["node"]}
            if (
                victim not in per_node
                and per_node.get(survivor, {}).get("number_of_allocations") == 2
                and stats["allocation_status"]["state"] == "fully_allocated"
            ):
                break
            assert time.monotonic() - killed_at < 20, stats
            time.sleep(0.1)
        recovered_s = time.monotonic() - killed_at
        status, body = infer(pair, "tiny", unique_texts(3))
        assert status == 200, body
        print(f"node death to allocations serving elsewhere: {recovered_s:.2f}s")


def test_stats_counters_are_exact(redis_url: str, minilm_traced: Any, tiny_embedding_model: Any) -> None:
    with local_cluster(redis_url, nodes=[("only", 1)], env={"INFERQ_MAX_BATCH_SIZE": "1"}) as one:
        upload(one, "tiny", tiny_embedding_model)
        start(one, "tiny")
        texts = unique_texts(5)
        for text in texts:
            assert infer(one, "tiny", [text])[0] == 200
        for text in texts[:3]:  # cache hits
            assert infer(one, "tiny", [text])[0] == 200
        worker = one.nodes["only"]
        pause_process(worker.pid)  # nobody answers in time
        try:
            status, body = one.call(
                "POST", "/_ml/trained_models/tiny/_infer?timeout=200ms", {"docs": [{"text_field": "late " + unique_texts(1)[0]}]}
            )
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert status == 408 and body["error"]["reason"] == "timeout [200ms] waiting for inference result"
        time.sleep(0.5)  # the worker skips the expired request
        stats = one.deployment_stats("tiny")
        node = stats["nodes"][0]
        assert node["inference_cache_hit_count"] == 3
        assert node["timeout_count"] == 1 and stats["timeout_count"] == 1
        assert node["inference_count"] == 8  # the expired request was skipped, never run
        assert "rejected_execution_count" not in node and "error_count" not in node
        assert node["average_inference_time_ms"] >= 0
        assert node["average_inference_time_ms_excluding_cache_hits"] >= node["average_inference_time_ms"]
        assert node["peak_throughput_per_minute"] >= 8
        assert stats["peak_throughput_per_minute"] == node["peak_throughput_per_minute"]
        assert node["number_of_pending_requests"] == 0
        assert node["routing_state"] == {"routing_state": "started"}
        assert isinstance(node["start_time"], int) and isinstance(node["last_access"], int)


def test_a_definition_that_is_not_torchscript_is_refused_at_upload_and_start(trio: LocalCluster, tiny_embedding_model: Any) -> None:
    status, _ = trio.call("PUT", "/_ml/trained_models/broken", tiny_embedding_model.config)
    assert status == 200
    garbage = b"this is not torchscript" * 10
    part = {"definition": base64.b64encode(garbage).decode(), "total_definition_length": len(garbage), "total_parts": 1}
    status, body = trio.call("PUT", "/_ml/trained_models/broken/definition/0", part)
    assert status == 400 and "not a TorchScript archive" in body["error"]["reason"]
    assert trio.call("PUT", "/_ml/trained_models/broken/vocabulary", tiny_embedding_model.vocabulary)[0] == 200
    status, body = trio.call("POST", "/_ml/trained_models/broken/deployment/_start")
    assert status == 400 and "not a TorchScript archive" in body["error"]["reason"]
    status, body = trio.call("GET", "/_ml/trained_models/broken/_stats")
    assert "deployment_stats" not in body["trained_model_stats"][0]


def test_start_timeout_is_408_and_deployment_keeps_starting(trio: LocalCluster, minilm_traced: Any) -> None:
    upload(trio, "bigger", minilm_traced)  # loading it takes far longer than 1ms
    status, body = trio.call("POST", "/_ml/trained_models/bigger/deployment/_start?deployment_id=patient&timeout=1ms")
    assert status == 408, body
    assert "Timed out after [1ms] waiting for trained model deployment [patient] to start" in body["error"]["reason"]
    deadline = time.monotonic() + 30
    while trio.deployment_stats("patient")["state"] != "started":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stop(trio, "patient")
