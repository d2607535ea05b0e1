from __future__ import annotations

from typing import Any

from gateway.stats import (
    MinuteTotals,
    NodeCounters,
    last_minute,
    parse_counters,
    render_deployment_stats,
    render_inference_stats,
    render_node_stats,
)

START_MS = 1_700_000_000_000
MINUTE_MS = 60_000


def started_node(
    counters: NodeCounters, *, now_ms: int, node_id: str = "node-a", **overrides: Any
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "node_id": node_id,
        "node_name": f"{node_id}-name",
        "transport_address": "127.0.0.1:9300",
        "counters": counters,
        "routing_state": "started",
        "reason": None,
        "start_ms": START_MS,
        "now_ms": now_ms,
        "pending_requests": 2,
        "threads_per_allocation": 1,
        "number_of_allocations": 2,
    }
    kwargs.update(overrides)
    return render_node_stats(**kwargs)


def test_parse_counters_from_hgetall_bytes() -> None:
    raw = {
        b"inference_count": b"12",
        b"inference_time_ms_sum": b"498",
        b"nohit_count": b"9",
        b"nohit_time_ms_sum": b"497.70000000000005",
        b"cache_hit_count": b"3",
        b"error_count": b"1",
        b"timeout_count": b"2",
        b"last_access_ms": b"1700000050000",
        b"peak_throughput_per_minute": b"12",
        b"bucket_index": b"0",
        b"bucket_count": b"12",
        b"bucket_time_ms_sum": b"498",
        b"bucket_hits": b"3",
        b"prev_bucket_index": b"-1",
        b"prev_bucket_count": b"0",
        b"prev_bucket_time_ms_sum": b"0",
        b"prev_bucket_hits": b"0",
    }
    counters = parse_counters(raw)
    assert counters == NodeCounters(
        inference_count=12,
        inference_time_ms_sum=498.0,
        nohit_count=9,
        nohit_time_ms_sum=497.70000000000005,
        cache_hit_count=3,
        error_count=1,
        rejected_execution_count=0,
        timeout_count=2,
        last_access_ms=1_700_000_050_000,
        peak_throughput_per_minute=12,
        bucket_index=0,
        bucket=MinuteTotals(12, 498.0, 3),
        prev_bucket_index=-1,
        prev_bucket=MinuteTotals(0, 0.0, 0),
    )
    assert parse_counters({}) == NodeCounters()
    assert parse_counters({"inference_count": "4"}).inference_count == 4


def test_last_minute_is_the_last_completed_bucket() -> None:
    live, prev = MinuteTotals(7, 70.0, 1), MinuteTotals(3, 60.0, 2)
    counters = NodeCounters(bucket_index=5, bucket=live, prev_bucket_index=4, prev_bucket=prev)

    def at(now_ms: int) -> MinuteTotals:
        return last_minute(counters, start_ms=START_MS, now_ms=START_MS + now_ms)

    # newest result in the current bucket: the previous bucket is the completed one
    assert at(5 * MINUTE_MS + 10) == prev
    # newest result in the previous bucket: the live totals are the completed bucket
    assert at(6 * MINUTE_MS) == live
    assert at(7 * MINUTE_MS - 1) == live
    # more than one bucket without results: nothing
    assert at(7 * MINUTE_MS) == MinuteTotals()
    # never any result
    assert last_minute(NodeCounters(), start_ms=START_MS, now_ms=START_MS + 5) == MinuteTotals()
    # a previous bucket that was skipped over (zeroed by the roll)
    skipped = NodeCounters(bucket_index=9, bucket=MinuteTotals(1, 5.0, 0), prev_bucket_index=8)
    assert last_minute(skipped, start_ms=START_MS, now_ms=START_MS + 9 * MINUTE_MS) == MinuteTotals()
    assert MinuteTotals().average_time_ms is None
    assert MinuteTotals(4, 10.0, 0).average_time_ms == 2.5


def test_started_node_with_results() -> None:
    counters = NodeCounters(
        inference_count=12,
        inference_time_ms_sum=498.0,
        nohit_count=9,
        nohit_time_ms_sum=495.0,
        cache_hit_count=3,
        error_count=1,
        rejected_execution_count=4,
        timeout_count=0,
        last_access_ms=START_MS + 70_000,
        peak_throughput_per_minute=10,
        bucket_index=1,
        bucket=MinuteTotals(2, 30.0, 1),
        prev_bucket_index=0,
        prev_bucket=MinuteTotals(10, 468.0, 2),
    )
    stats = started_node(counters, now_ms=START_MS + 90_000)
    assert stats == {
        "node": {
            "node-a": {
                "name": "node-a-name",
                "ephemeral_id": "node-a",
                "transport_address": "127.0.0.1:9300",
                "external_id": "node-a-name",
                "attributes": {},
                "roles": ["ml"],
            }
        },
        "routing_state": {"routing_state": "started"},
        "inference_count": 12,
        "average_inference_time_ms": 41.5,
        "average_inference_time_ms_excluding_cache_hits": 55.0,
        "inference_cache_hit_count": 3,
        "last_access": START_MS + 70_000,
        "number_of_pending_requests": 2,
        "error_count": 1,
        "rejected_execution_count": 4,
        "start_time": START_MS,
        "threads_per_allocation": 1,
        "number_of_allocations": 2,
        "peak_throughput_per_minute": 10,
        "throughput_last_minute": 10,
        "average_inference_time_ms_last_minute": 46.8,
        "inference_cache_hit_count_last_minute": 2,
    }
    # Key order follows Elasticsearch's (clients diff JSON).
    assert list(stats)[:4] == ["node", "routing_state", "inference_count", "average_inference_time_ms"]


def test_started_node_before_any_result() -> None:
    stats = started_node(NodeCounters(), now_ms=START_MS + 1000, pending_requests=0)
    assert stats == {
        "node": stats["node"],
        "routing_state": {"routing_state": "started"},
        "inference_count": 0,
        "inference_cache_hit_count": 0,
        "number_of_pending_requests": 0,
        "start_time": START_MS,
        "threads_per_allocation": 1,
        "number_of_allocations": 2,
        "peak_throughput_per_minute": 0,
        "throughput_last_minute": 0,
        "inference_cache_hit_count_last_minute": 0,
    }


def test_all_cache_hits_report_zero_excluding_cache_hits() -> None:
    counters = NodeCounters(
        inference_count=2, inference_time_ms_sum=1.0, cache_hit_count=2, last_access_ms=START_MS
    )
    stats = started_node(counters, now_ms=START_MS)
    assert stats["average_inference_time_ms"] == 0.5
    assert stats["average_inference_time_ms_excluding_cache_hits"] == 0.0


def test_not_started_node_has_only_routing_and_throughput() -> None:
    counters = NodeCounters(
        inference_count=5, error_count=2, peak_throughput_per_minute=5, last_access_ms=START_MS
    )
    stats = started_node(counters, now_ms=START_MS, routing_state="starting", reason="")
    assert stats == {
        "node": stats["node"],
        "routing_state": {"routing_state": "starting", "reason": ""},
        "peak_throughput_per_minute": 0,
        "throughput_last_minute": 0,
    }
    failed = started_node(counters, now_ms=START_MS, routing_state="failed", reason="boom")
    assert failed["routing_state"] == {"routing_state": "failed", "reason": "boom"}
    stopping = started_node(counters, now_ms=START_MS, routing_state="stopping", reason=None)
    assert stopping["routing_state"] == {"routing_state": "stopping"}


def deployment_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "deployment_id": "my-ner",
        "model_id": "my-ner-model",
        "task_parameters": {
            "model_id": "my-ner-model",
            "deployment_id": "my-ner",
            "model_bytes": 265632637,
            "threads_per_allocation": 1,
            "number_of_allocations": 3,
            "queue_capacity": 1024,
            "cache_size": "265632637b",
            "priority": "normal",
            "per_deployment_memory_bytes": 0,
            "per_allocation_memory_bytes": 0,
        },
        "cache_size_bytes": 265632637,
        "targets": {"node-a": 2, "node-b": 1},
        "assignment_state": "started",
        "start_time_ms": START_MS,
        "max_assigned_allocations": 3,
    }
    doc.update(overrides)
    return doc


ALLOCATION_STATUS = {"allocation_count": 2, "target_allocation_count": 3, "state": "started"}


def test_deployment_stats_sums_started_nodes() -> None:
    a = started_node(
        NodeCounters(
            inference_count=12,
            inference_time_ms_sum=120.0,
            nohit_count=12,
            nohit_time_ms_sum=120.0,
            error_count=1,
            timeout_count=2,
            last_access_ms=START_MS,
            peak_throughput_per_minute=12,
        ),
        now_ms=START_MS,
    )
    b = started_node(
        NodeCounters(inference_count=5, error_count=7, peak_throughput_per_minute=99),
        node_id="node-b",
        now_ms=START_MS,
        routing_state="starting",
        reason="",
    )
    stats = render_deployment_stats(
        deployment=deployment_doc(reason="not enough processors"),
        node_stats=[a, b],
        allocation_status=ALLOCATION_STATUS,
    )
    assert stats == {
        "deployment_id": "my-ner",
        "model_id": "my-ner-model",
        "threads_per_allocation": 1,
        "number_of_allocations": 3,
        "queue_capacity": 1024,
        "state": "started",
        "reason": "not enough processors",
        "allocation_status": ALLOCATION_STATUS,
        "cache_size": "253.3mb",
        "priority": "normal",
        "start_time": START_MS,
        "error_count": 1,
        "timeout_count": 2,
        "inference_count": 12,
        "peak_throughput_per_minute": 12,
        "nodes": [a, b],
        "cache_budget_bytes": 265632637,  # inferq: documents written before budgets, as asked
        "cache_budget_state": "fits",
        "cache_used_bytes": 0,
    }
    assert list(stats) == [
        "deployment_id",
        "model_id",
        "threads_per_allocation",
        "number_of_allocations",
        "queue_capacity",
        "state",
        "reason",
        "allocation_status",
        "cache_size",
        "priority",
        "start_time",
        "error_count",
        "timeout_count",
        "inference_count",
        "peak_throughput_per_minute",
        "nodes",
        "cache_budget_bytes",
        "cache_budget_state",
        "cache_used_bytes",
    ]
    assert render_inference_stats(stats, timestamp_ms=START_MS + 5) == {
        "failure_count": 3,
        "inference_count": 12,
        "cache_miss_count": 0,
        "missing_all_fields_count": 0,
        "timestamp": START_MS + 5,
    }


def test_deployment_stats_without_activity_omits_counts() -> None:
    a = started_node(NodeCounters(), now_ms=START_MS)
    adaptive = {"enabled": True, "min_number_of_allocations": 1}
    doc = deployment_doc(cache_size_bytes=0, adaptive_allocations=adaptive)
    stats = render_deployment_stats(deployment=doc, node_stats=[a], allocation_status=ALLOCATION_STATUS)
    for name in ("error_count", "rejected_execution_count", "timeout_count", "inference_count", "reason"):
        assert name not in stats
    assert stats["peak_throughput_per_minute"] == 0
    assert stats["cache_size"] == "0b"
    assert stats["adaptive_allocations"] == adaptive
    assert list(stats).index("adaptive_allocations") == list(stats).index("number_of_allocations") + 1
    assert render_inference_stats(stats, timestamp_ms=1)["failure_count"] == 0
