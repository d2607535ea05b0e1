"""End to end through HTTP: upload, deploy, infer on two worker processes, errors."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from shared import keys
from tests.cluster import LocalCluster, http, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow


def test_root_answers_as_elasticsearch_9(cluster: LocalCluster) -> None:
    status, body = cluster.call("GET", "/")
    assert status == 200
    assert body["version"]["number"].startswith("9.")
    assert body["cluster_name"]


def test_tiny_model_upload_deploy_infer(cluster: LocalCluster, tiny_embedding_model: Any) -> None:
    upload(cluster, "tiny-emb", tiny_embedding_model)
    status, body = cluster.call("GET", "/_ml/trained_models/tiny-emb?include=definition_status")
    assert status == 200 and body["count"] == 1
    assert body["trained_model_configs"][0]["fully_defined"] is True
    assignment = start(cluster, "tiny-emb", "number_of_allocations=2&wait_for=fully_allocated")
    assert assignment["assignment_state"] == "started"
    assert sum(r["current_allocations"] for r in assignment["routing_table"].values()) == 2

    texts = [f"document number {i} about queues" for i in range(6)]
    status, body = infer(cluster, "tiny-emb", texts)
    assert status == 200, body
    vectors = [r["predicted_value"] for r in body["inference_results"]]
    assert len(vectors) == 6
    # document order is kept and each result is that document's own embedding
    for text, vector in zip(texts, vectors, strict=True):
        status, single = infer(cluster, "tiny-emb", [text])
        assert np.allclose(single["inference_results"][0]["predicted_value"], vector, atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])


def test_minilm_matches_sentence_transformers(cluster: LocalCluster, minilm_traced: Any, minilm_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    upload(cluster, "minilm", minilm_traced)
    start(cluster, "minilm")
    texts = ["The quick brown fox jumps over the lazy dog.", "  Café crème, naïve façade — 東京 🚀  "]
    status, body = infer(cluster, "minilm", texts)
    assert status == 200, body
    reference = SentenceTransformer(str(minilm_path), device="cpu").encode(texts)
    for result, expected in zip(body["inference_results"], reference, strict=True):
        got = np.asarray(result["predicted_value"])
        cosine = float(got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected)))
        assert cosine >= 0.9999
    status, _ = cluster.call("POST", "/_ml/trained_models/minilm/deployment/_stop")
    assert status == 200


def test_queue_overflow_rejects_at_once_and_loses_nothing(redis_url: str, minilm_traced: Any) -> None:
    # one node, one allocation, no batching: a real model that takes tens of ms per request
    with local_cluster(redis_url, nodes=[("solo", 1)], env={"INFERQ_MAX_BATCH_SIZE": "1"}) as solo:
        upload(solo, "slow", minilm_traced)
        start(solo, "slow", "queue_capacity=2&cache_size=0b")
        long_text = " ".join(["overflowing queues answer at once"] * 40)

        def call(i: int) -> tuple[int, float, Any]:
            began = time.monotonic()
            status, body = infer(solo, "slow", [f"{i} {long_text}"])
            return status, time.monotonic() - began, body

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            outcomes = list(pool.map(call, range(20)))
        statuses = [o[0] for o in outcomes]
        assert set(statuses) <= {200, 429}
        rejected = [o for o in outcomes if o[0] == 429]
        served = [o for o in outcomes if o[0] == 200]
        assert rejected and served
        assert all(o[2]["error"]["type"] == "es_rejected_execution_exception" for o in rejected)
        assert max(o[1] for o in rejected) < 1.0  # refused at once, never queued
        status, stats = solo.call("GET", "/_ml/trained_models/slow/_stats")
        deployment = stats["trained_model_stats"][0]["deployment_stats"]
        assert deployment["inference_count"] == len(served)  # each served request ran exactly once
        assert deployment["rejected_execution_count"] == len(rejected)


def test_bad_input_gets_elasticsearch_errors(cluster: LocalCluster, tiny_embedding_model: Any) -> None:
    url = cluster.url
    status, body = http("POST", url + "/_ml/trained_models/tiny-emb/_infer", b"{not json")
    assert status == 400 and body["error"]["type"] == "x_content_parse_exception"
    assert body["error"]["root_cause"][0]["type"] == "x_content_parse_exception"
    status, body = cluster.call("POST", "/_ml/trained_models/tiny-emb/_infer", {"documents": []})
    assert status == 400
    status, body = cluster.call("POST", "/_ml/trained_models/tiny-emb/_infer", {"docs": [{"other": "x"}]})
    assert status == 400 and "Input field [text_field] does not exist" in body["error"]["reason"]
    status, body = cluster.call("POST", "/_ml/trained_models/nope/_infer", {"docs": [{"text_field": "x"}]})
    assert status == 404 and body["error"]["type"] == "resource_not_found_exception"
    # stored but not deployed -> 409
    status, _ = cluster.call("PUT", "/_ml/trained_models/undeployed", tiny_embedding_model.config)
    assert status == 200
    status, body = cluster.call("POST", "/_ml/trained_models/undeployed/_infer", {"docs": [{"text_field": "x"}]})
    assert status == 409 and "must be deployed" in body["error"]["reason"]
    # wrong part numbers
    part = {"definition": base64.b64encode(b"abc").decode(), "total_definition_length": 3, "total_parts": 1}
    status, body = cluster.call("PUT", "/_ml/trained_models/undeployed/definition/5", part)
    assert status == 400 and body["error"]["type"] == "action_request_validation_exception"
    assert "[part] must be less than total_parts" in body["error"]["reason"]
    status, body = cluster.call("PUT", "/_ml/trained_models/undeployed/definition/0", part)
    assert status == 400 and "not a TorchScript archive" in body["error"]["reason"]  # the last part is validated
    status, body = cluster.call("PUT", "/_ml/trained_models/undeployed/definition/0", part)
    assert status == 400 and body["error"]["type"] == "resource_already_exists_exception"
    status, body = cluster.call("PUT", "/_ml/trained_models/missing/definition/0", part)
    assert status == 404
    # deleting a deployed model without force -> 409
    status, body = cluster.call("DELETE", "/_ml/trained_models/tiny-emb")
    assert status == 409
    status, body = cluster.call("GET", "/_ml/trained_models/does-not-exist")
    assert status == 404
    status, body = cluster.call("GET", "/_ml/trained_models/?unknown_param=1")
    assert status == 400 and "unrecognized parameter" in body["error"]["reason"]


def test_two_gateways_side_by_side(cluster: LocalCluster) -> None:
    second = cluster.start_gateway()
    texts = ["served by either gateway"]
    status_a, body_a = infer(cluster, "tiny-emb", texts)
    status_b, body_b = http(
        "POST",
        f"http://127.0.0.1:{second}/_ml/trained_models/tiny-emb/_infer",
        {"docs": [{"text_field": t} for t in texts]},
    )
    assert status_a == status_b == 200
    assert body_a == body_b
    status, stats = http("GET", f"http://127.0.0.1:{second}/_ml/trained_models/tiny-emb/_stats")
    assert stats["trained_model_stats"][0]["deployment_stats"]["allocation_status"]["allocation_count"] == 2
    assert json.dumps(stats)  # renders


def test_waiting_requests_share_a_fixed_number_of_connections(cluster: LocalCluster) -> None:
    """60 requests wait at once (the workers are paused); the gateway holds no connection per
    waiting request: its pools are bounded, and replies come back on one shared reply list."""
    for proc in cluster.nodes.values():
        os.kill(proc.pid, signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
            futures = [pool.submit(infer, cluster, "tiny-emb", [f"waiting request {i}"]) for i in range(60)]
            client = redis.Redis.from_url(cluster.redis_url)
            deadline = time.monotonic() + 30  # a loaded 2-core machine: 60 HTTP requests to queue
            # a paused worker's pending BLMOVE is still served by Redis: count processing lists too
            while sum(
                client.llen(k)
                for pattern in (keys.queue("tiny-emb", "*"), keys.processing("tiny-emb", "*", "*"))
                for k in client.scan_iter(match=pattern)
            ) < 60:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            gateway_connections = [c for c in client.client_list() if c.get("name") == "inferq-gateway"]
            client.close()
            for proc in cluster.nodes.values():
                os.kill(proc.pid, signal.SIGCONT)
            statuses = [f.result()[0] for f in futures]
    finally:
        for proc in cluster.nodes.values():
            os.kill(proc.pid, signal.SIGCONT)
    assert statuses == [200] * 60
    assert 0 < len(gateway_connections) <= (32 + 4) * len(cluster.gateways)
