"""Monitoring as an operator uses it, on a running cluster (gateway and two worker processes):
``/metrics`` parsed with prometheus_client after real traffic, and ``/_status`` in headless
chromium while traffic runs; its screenshot goes to ``tests/artifacts/status-page.png``."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests import browser
from tests.cluster import LocalCluster, infer, local_cluster, start, upload
from tests.integration.test_metrics_redis import Samples, samples, total, value

pytestmark = pytest.mark.slow

INFER = "/_ml/trained_models/{model_id}/_infer"


@pytest.fixture(scope="module")
def watched(redis_url: str, tiny_embedding_model: Any) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("node-1", 2), ("node-2", 2)]) as running:
        upload(running, "tiny", tiny_embedding_model)
        start(running, "tiny", "deployment_id=watched&number_of_allocations=2")
        start(running, "tiny", "deployment_id=second&number_of_allocations=1")  # on the other node
        yield running


def scrape(cluster: LocalCluster) -> Samples:
    with urllib.request.urlopen(cluster.url + "/metrics", timeout=30) as response:
        return samples(response.read().decode())


def test_counters_move_by_exactly_what_was_sent(watched: LocalCluster) -> None:
    before = scrape(watched)
    texts = [f"sentence number {i} for the metrics test" for i in range(6)]
    for i in range(0, 6, 2):  # three requests of two new documents: six forward-pass documents
        assert infer(watched, "watched", texts[i : i + 2])[0] == 200
    for i in range(0, 6, 3):  # two requests of three known documents: six cache hits
        assert infer(watched, "watched", texts[i : i + 3])[0] == 200
    assert infer(watched, "no-such-model", ["x"])[0] == 404

    def delta(after: Samples, name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # the workers' stats are written in the round trip after their replies: wait for them
    deadline = time.monotonic() + 30
    after = scrape(watched)
    while delta(after, "inferq_batch_size_documents_sum", deployment="watched") < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
        after = scrape(watched)

    assert delta(after, "inferq_http_requests_total", route=INFER, deployment="watched", code="2xx") == 5
    assert delta(after, "inferq_http_requests_total", route=INFER, deployment="", code="4xx") == 1
    assert delta(after, "inferq_request_duration_seconds_count", deployment="watched") == 5
    assert delta(after, "inferq_inference_total", deployment="watched") == 12
    assert delta(after, "inferq_cache_hits_total", deployment="watched") == 6
    assert delta(after, "inferq_cache_misses_total", deployment="watched") == 6
    assert delta(after, "inferq_batch_size_documents_sum", deployment="watched") == 6
    passes = delta(after, "inferq_forward_pass_duration_seconds_count", deployment="watched")
    assert delta(after, "inferq_batch_size_documents_count", deployment="watched") == passes
    assert 3 <= passes <= 6  # each request's documents in one or more passes
    assert total(after, "inferq_allocations", deployment="watched") == 2
    for node in ("node-1", "node-2"):
        assert value(after, "inferq_node_up", node=node) == 1
        assert value(after, "inferq_node_processors", node=node) == 2
        assert 0 <= value(after, "inferq_node_heartbeat_age_seconds", node=node) < 3
    assert value(after, "inferq_deployment_state", deployment="watched", state="started") == 1
    assert total(after, "inferq_planner_passes_total") >= 1
    assert total(after, "inferq_planner_actions_total", action="retarget") >= 1


def test_status_page_in_a_browser(watched: LocalCluster) -> None:
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            infer(watched, "watched", [f"status page text {n % 40}", f"another one {n}"])
            if n % 3 == 0:
                infer(watched, "second", [f"second text {n % 10}"])
            n += 1

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        url = watched.url + "/_status?interval_ms=1000&window_s=60"
        dom = asyncio.run(browser.dump_dom(url, budget_ms=4000))
        shot = asyncio.run(browser.screenshot(url, browser.ARTIFACTS / "status-page.png", budget_ms=60_000))
    finally:
        stop.set()
        thread.join(timeout=30)
    with urllib.request.urlopen(watched.url + "/metrics", timeout=30) as response:
        (browser.ARTIFACTS / "metrics-after-traffic.txt").write_bytes(response.read())
    assert 'data-deployment="watched"' in dom and 'data-deployment="second"' in dom
    assert 'data-node="node-1"' in dom and 'data-node="node-2"' in dom
    assert "2 deployment(s), 2/2 node(s) live" in dom
    assert shot.stat().st_size > 10_000
