"""The pure parts of monitoring: histogram buckets, the gateway hash's fields, the exposition."""

from __future__ import annotations

import re

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from gateway.cluster_snapshot import ClusterSnapshot, DeploymentFigures, NodeFigures, PlacementFigures
from gateway.metrics import render
from gateway.request_metrics import (
    GatewayFigures,
    latency_field,
    parse_gateway_hash,
    request_field,
    status_class,
)
from gateway.stats import NodeCounters
from gateway.status_page import status_data
from shared.cache import CacheStats
from shared.histograms import BATCH_SIZE, FORWARD_SECONDS, REQUEST_SECONDS, Buckets


def test_bucket_index_is_le() -> None:
    buckets = Buckets("h", (1.0, 2.0, 4.0))
    assert [buckets.index(v) for v in (0.5, 1.0, 1.5, 2.0, 4.0, 4.5)] == [0, 0, 1, 1, 2, 3]


def test_observe_then_read_gives_cumulative_buckets() -> None:
    into: dict[str, float] = {}
    for value in (1, 3, 3, 200):
        BATCH_SIZE.observe(into, value)
    histogram = BATCH_SIZE.read({k: str(v) for k, v in into.items()})
    assert histogram.count == 4 and histogram.sum == 207
    cumulative = dict(histogram.cumulative())
    assert cumulative[1] == 1 and cumulative[2] == 1 and cumulative[4] == 3 and cumulative[128] == 3
    assert cumulative[float("inf")] == 4


def test_request_buckets_resolve_cache_hits_and_slow_requests() -> None:
    assert REQUEST_SECONDS.bounds[0] < 0.0005 and REQUEST_SECONDS.bounds[-1] >= 30
    assert list(REQUEST_SECONDS.bounds) == sorted(REQUEST_SECONDS.bounds)
    assert list(FORWARD_SECONDS.bounds) == sorted(FORWARD_SECONDS.bounds)


@pytest.mark.parametrize(("status", "code"), [(200, "2xx"), (201, "2xx"), (304, "3xx"), (404, "4xx"), (429, "429"), (499, "4xx"), (503, "5xx")])
def test_status_class(status: int, code: str) -> None:
    assert status_class(status) == code


def test_gateway_hash_round_trip_with_any_id() -> None:
    odd = 'dep "quoted"\t|,x'
    raw: dict[bytes | str, bytes | str] = {
        request_field("/r/{model_id}", odd, "2xx").encode(): b"7",
        latency_field(odd, 0).encode(): b"2",
        latency_field(odd, len(REQUEST_SECONDS.bounds)).encode(): b"1",
        latency_field(odd, "sum").encode(): b"40.5",
        b"not json": b"1",
        b'["l","x",999]': b"1",  # out of range: skipped
        b'["r","too","short"]': b"1",
    }
    figures = parse_gateway_hash(raw)
    assert [(r.route, r.deployment, r.code, r.count) for r in figures.requests] == [("/r/{model_id}", odd, "2xx", 7)]
    histogram = figures.latency[odd]
    assert histogram.count == 3 and histogram.sum == 40.5 and histogram.counts[-1] == 1
    assert set(figures.latency) == {odd}


def snapshot() -> ClusterSnapshot:
    placement = PlacementFigures(
        node_id="n1", routing_state="started", allocations=2, target_allocations=2, threads_per_allocation=1,
        queue_depth=3, bulk_queue_depth=1, in_flight=2, counters=NodeCounters(inference_count=10, inference_time_ms_sum=250.0, error_count=1),
        cache=CacheStats(entries=4, used_bytes=1000, budget_bytes=4096, hits=6, misses=4, evictions=1),
        batch_size=BATCH_SIZE.read({"batch_size:2": "3", "batch_size:sum": "9"}),
        forward_seconds=FORWARD_SECONDS.read({"forward_seconds:3": "3", "forward_seconds:sum": "0.03"}),
    )  # fmt: skip
    deployment = DeploymentFigures("dep", "model", "started", 2, 1024, 4096, [placement])
    gateway = parse_gateway_hash(
        {request_field("/x/{model_id}/_infer", "dep", "2xx"): "5", latency_field("dep", 1): "5", latency_field("dep", "sum"): "0.002"}
    )
    nodes = [NodeFigures("n1", True, 4, 8 << 30, 0.5, 2, 2), NodeFigures("n2", False, 4, 8 << 30, None)]
    return ClusterSnapshot(1_700_000_000_000, nodes, [deployment], gateway, {"pass": 9, "retarget": 2}, 0.001)


def test_exposition_follows_prometheus_conventions() -> None:
    body, content_type = render(snapshot())
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, family in families.items():
        assert name.startswith("inferq_")
        assert not re.search(r"_(ms|milliseconds|kb|mb)$", name)
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    dn = (("deployment", "dep"), ("node", "n1"))
    assert found[("inferq_inference_seconds_total", dn)] == 0.25
    assert found[("inferq_cache_used_bytes", dn)] == 1000
    assert found[("inferq_batch_size_documents_bucket", (dn[0], ("le", "4.0"), dn[1]))] == 3
    assert found[("inferq_batch_size_documents_sum", dn)] == 9
    assert found[("inferq_inference_failures_total", (*dn, ("reason", "error")))] == 1
    assert found[("inferq_request_duration_seconds_bucket", (("deployment", "dep"), ("le", "0.0005")))] == 5
    assert found[("inferq_node_up", (("node", "n2"),))] == 0
    assert ("inferq_node_heartbeat_age_seconds", (("node", "n2"),)) not in found  # dead: no age
    assert found[("inferq_planner_passes_total", ())] == 9
    assert found[("inferq_planner_actions_total", (("action", "retarget"),))] == 2


def test_openmetrics_when_asked() -> None:
    body, content_type = render(snapshot(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    assert any(f.name == "inferq_http_requests" for f in parse_openmetrics(body.decode()))


def test_status_data() -> None:
    data = status_data(snapshot())
    (deployment,) = data["deployments"]
    assert deployment["hit_ratio"] == 0.6 and deployment["queue_capacity"] == 1024 and deployment["allocations"] == 2
    assert deployment["latency"]["counts"][1] == 5
    assert [n["alive"] for n in data["nodes"]] == [True, False]


def test_empty_cluster_renders() -> None:
    empty = ClusterSnapshot(0, [], [], GatewayFigures([], {}), {}, 0.0)
    body, _ = render(empty)
    assert "inferq_planner_passes_total 0.0" in body.decode()
    assert status_data(empty) == {"time_ms": 0, "nodes": [], "deployments": []}
