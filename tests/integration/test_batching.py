"""Dynamic batching through the real allocation code: a batch answers what the same requests
answer one by one.

Two clusters serve the same tiny model with the cache off: ``batched`` (one allocation,
``INFERQ_MAX_BATCH_SIZE=16``, a 150 ms batch wait so concurrent requests meet in one batch,
and a small ``INFERQ_MAX_BATCH_TOKENS`` and ``INFERQ_MAX_PADDING`` so a batch is split into
forward passes by both) and ``single``
(``INFERQ_MAX_BATCH_SIZE=1``: every request is its own forward pass).
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import redis

from shared import keys, task_config
from shared.model_store import read_vocabulary
from shared.redis_conn import as_bytes
from shared.redis_conn import text as reply_text
from shared.wire import InferReply, InferRequest
from tests.cluster import LocalCluster, http, infer, local_cluster, start, upload
from workers.batch_plan import ChunkLimits, Shape, plan_chunks
from workers.tasks import build_task

pytestmark = pytest.mark.slow

MODEL = "tiny"
NODE = "node-1"
MAX_BATCH_SIZE = 16
BATCH_WAIT_MS = 150
MAX_BATCH_TOKENS = 400
MAX_PADDING = 0.3
WORDS = "the quick brown fox jumps over a lazy dog in paris and london".split()


@pytest.fixture(scope="module")
def clusters(redis_url: str, tiny_embedding_model: Any) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    batched_env = {
        "INFERQ_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
        "INFERQ_BATCH_WAIT_MS": str(BATCH_WAIT_MS),
        "INFERQ_MAX_BATCH_TOKENS": str(MAX_BATCH_TOKENS),
        "INFERQ_MAX_PADDING": str(MAX_PADDING),
        "INFERQ_MAX_TAKE_TOKENS": "0",  # take by count: one push is one batch (the token budget: test_take_budget.py)
    }
    with (
        local_cluster(redis_url, nodes=[(NODE, 1)], env=batched_env) as batched,
        local_cluster(redis_url, nodes=[(NODE, 1)], env={"INFERQ_MAX_BATCH_SIZE": "1"}) as single,
    ):
        for cluster in (batched, single):
            upload(cluster, MODEL, tiny_embedding_model)
            start(cluster, MODEL, "cache_size=0b&wait_for=fully_allocated")
        yield batched, single


def mixed_texts(tag: str, count: int) -> list[str]:
    """Lengths from 3 to ~200 tokens, and one far over the model's 512 (truncated)."""
    texts = [f"{tag} {i} " + " ".join(WORDS[j % len(WORDS)] for j in range((i * 37) % 190 + 1)) for i in range(count)]
    texts[count // 2] = f"{tag} long " + " ".join(WORDS[j % len(WORDS)] for j in range(700))
    return texts


def one_by_one(cluster: LocalCluster, texts: list[str]) -> list[dict[str, Any]]:
    results = []
    for text in texts:
        status, body = infer(cluster, MODEL, [text])
        assert status == 200, body
        results.append(body["inference_results"][0])
    return results


def assert_same_results(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got.keys() == expected.keys()
    assert got.get("is_truncated") == expected.get("is_truncated")
    np.testing.assert_allclose(got["predicted_value"], expected["predicted_value"], rtol=0, atol=1e-5)


def counters(cluster: LocalCluster) -> dict[str, int]:
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        raw = client.hgetall(keys.stats(MODEL, NODE))
    finally:
        client.close()
    return {reply_text(k): int(float(v)) for k, v in raw.items() if reply_text(k).endswith("_count")}


def wait_for_counter(cluster: LocalCluster, name: str, value: int) -> int:
    deadline = time.monotonic() + 5
    while (current := counters(cluster).get(name, 0)) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return current


def test_concurrent_requests_are_batched_and_answer_as_one_by_one(clusters: tuple[LocalCluster, LocalCluster]) -> None:
    batched, single = clusters
    texts = mixed_texts("concurrent", 24)
    before = counters(batched).get("inference_count", 0)

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(texts)) as pool:
        answers = list(pool.map(lambda t: infer(batched, MODEL, [t]), texts))
    elapsed_s = time.monotonic() - began

    expected = one_by_one(single, texts)
    for (status, body), reference in zip(answers, expected, strict=True):
        assert status == 200, body
        assert_same_results(body["inference_results"][0], reference)
    assert any(r.get("is_truncated") for r in expected)
    # one allocation sleeps BATCH_WAIT_MS once per batch: served one at a time, 24 requests
    # would take at least 24 x 150 ms = 3.6 s
    assert elapsed_s < 0.75 * len(texts) * BATCH_WAIT_MS / 1000
    assert wait_for_counter(batched, "inference_count", before + len(texts)) == before + len(texts)


def test_one_request_with_many_docs_is_one_batch_in_document_order(clusters: tuple[LocalCluster, LocalCluster]) -> None:
    batched, single = clusters
    texts = mixed_texts("multi", 12)
    status, body = infer(batched, MODEL, texts)
    assert status == 200, body
    for got, expected in zip(body["inference_results"], one_by_one(single, texts), strict=True):
        assert_same_results(got, expected)


def test_queued_requests_form_token_bounded_chunks_and_skip_the_expired(clusters: tuple[LocalCluster, LocalCluster]) -> None:
    """Requests put on the queue in one push are taken as one batch: the replies' batch sizes
    are exactly the forward passes ``plan_chunks`` makes of their lengths, and a request whose
    deadline passed is dropped without a reply while the rest of its batch is served."""
    batched, single = clusters
    client = redis.Redis.from_url(batched.redis_url)
    try:
        raw_doc = client.get(keys.deployment(MODEL))
        assert raw_doc is not None
        doc = json.loads(raw_doc)
        vocabulary = read_vocabulary(client, MODEL)
        config = task_config.resolve_request_config(doc["inference_config"], None, model_id=MODEL)
        texts = mixed_texts("queued", 13)
        expired_at = 4
        now = int(time.time() * 1000)
        reply_to = keys.gateway_replies(f"test-batching-{secrets.token_hex(4)}")
        requests = [
            InferRequest(
                id=f"q{i}",
                reply_to=reply_to,
                deployment_id=MODEL,
                text=text,
                config=config,
                deadline_ms=now - 1 if i == expired_at else now + 30_000,
                enqueued_ms=now,
            )
            for i, text in enumerate(texts)
        ]
        before = counters(batched).get("inference_count", 0)
        # LPUSH a b c leaves c b a: the worker pops from the right, so it takes them in order
        client.lpush(keys.queue(MODEL, NODE), *[r.pack() for r in requests])

        live = [r for i, r in enumerate(requests) if i != expired_at]
        replies: dict[str, InferReply] = {}
        deadline = time.monotonic() + 30
        while len(replies) < len(live) and time.monotonic() < deadline:
            item = client.blpop([reply_to], timeout=1)
            if item is not None:
                reply = InferReply.unpack(as_bytes(item[1]))
                replies[reply.id] = reply
        time.sleep(BATCH_WAIT_MS / 1000)
        leftovers = [msgpack.unpackb(raw)["id"] for raw in client.lrange(reply_to, 0, -1)]
    finally:
        client.close()

    assert sorted(replies) == sorted(r.id for r in live)
    assert leftovers == []  # nothing for the expired request
    assert all(reply.error is None for reply in replies.values())

    # the chunks the allocation must have made of this batch
    task = build_task(doc["inference_config"], vocabulary)
    shapes = [Shape.of([len(row) for row in task.prepare(r.text, r.config).rows]) for r in live]
    chunks = plan_chunks(shapes, ChunkLimits(MAX_BATCH_SIZE, MAX_BATCH_TOKENS, MAX_PADDING))
    assert len(chunks) > 1 and max(len(c) for c in chunks) > 1
    # both limits split this batch: without either of them it would be fewer passes
    for loose in (ChunkLimits(MAX_BATCH_SIZE, 10**9, MAX_PADDING), ChunkLimits(MAX_BATCH_SIZE, MAX_BATCH_TOKENS, 1.0)):
        assert len(plan_chunks(shapes, loose)) < len(chunks)
    expected_sizes = {live[i].id: len(chunk) for chunk in chunks for i in chunk}
    assert {rid: int(r.timings["batch_size"]) for rid, r in replies.items()} == expected_sizes

    expected = one_by_one(single, [r.text for r in live])
    for request, reference in zip(live, expected, strict=True):
        result = replies[request.id].result_json
        assert result is not None
        assert_same_results(json.loads(result), reference)
    assert wait_for_counter(batched, "inference_count", before + len(live)) == before + len(live)


def test_a_request_that_times_out_in_a_batch_gets_408_and_the_rest_are_served(clusters: tuple[LocalCluster, LocalCluster]) -> None:
    """It opens a batch and its deadline passes during the batch wait: the producer answers
    408 and counts a timeout, the worker skips it without running it, and the requests that
    joined the batch meanwhile are served."""
    batched, single = clusters
    texts = mixed_texts("timeout", 8)
    before = counters(batched)
    url = f"{batched.url}/_ml/trained_models/{MODEL}/_infer"

    def call(i: int) -> tuple[int, Any]:
        body: dict[str, Any] = {"docs": [{"text_field": texts[i]}]}
        if i == 0:
            body["timeout"] = "40ms"  # shorter than the batch wait
        return http("POST", url, body)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(texts)) as pool:
        first = pool.submit(call, 0)  # popped by the idle allocation, which then waits 150 ms
        time.sleep(0.03)
        rest = [pool.submit(call, i) for i in range(1, len(texts))]
        answers = [first.result(), *(f.result() for f in rest)]

    status, body = answers[0]
    assert status == 408, body
    assert body["error"]["type"] == "status_exception"
    assert "timeout [40ms] waiting for inference result" in body["error"]["reason"]
    for (status, body), reference in zip(answers[1:], one_by_one(single, texts[1:]), strict=True):
        assert status == 200, body
        assert_same_results(body["inference_results"][0], reference)
    served = before.get("inference_count", 0) + len(texts) - 1
    assert wait_for_counter(batched, "inference_count", served) == served
    assert counters(batched).get("timeout_count", 0) == before.get("timeout_count", 0) + 1
