"""Deployment stats: the per-node counters hash read back, and Elasticsearch's stats objects.

The counters live in one Redis hash per (deployment, node), ``keys.stats(dep, node)``, and are
written only by the Lua fragment ``shared/lua/stats.lua`` (``stats_record`` / ``stats_incr``,
composed into the request-path scripts). This module does no I/O: the caller reads the hash
(``HGETALL``) and hands it to ``parse_counters``; the ``render_*`` functions build the
``deployment_stats`` object of ``GET _ml/trained_models/_stats`` (spec section 3), including
Elasticsearch's omission rules and its "last minute" semantics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.lua import compose
from shared.units import format_bytes

BUCKET_MS = 60_000  # width of a throughput bucket; buckets are aligned to the node's start time

# KEYS: stats.  ARGV: start_ms, now_ms, results, cache_hits, time_ms_sum, nohit_time_ms_sum, errors.
RECORD_SCRIPT = compose(
    "stats",
    body="stats_record(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])\nreturn 1",
)

# KEYS: stats.  ARGV: field (rejected_execution_count | timeout_count), n.  Returns the new value.
INCR_SCRIPT = compose("stats", body="return stats_incr(KEYS[1], ARGV[1], ARGV[2])")


@dataclass(frozen=True)
class MinuteTotals:
    """Totals of one 1-minute bucket."""

    count: int = 0
    time_ms_sum: float = 0.0
    hits: int = 0

    @property
    def average_time_ms(self) -> float | None:
        return self.time_ms_sum / self.count if self.count > 0 else None


@dataclass(frozen=True)
class NodeCounters:
    """One node's counters for one deployment, as ``stats.lua`` keeps them."""

    inference_count: int = 0
    inference_time_ms_sum: float = 0.0
    nohit_count: int = 0
    nohit_time_ms_sum: float = 0.0
    cache_hit_count: int = 0
    error_count: int = 0
    rejected_execution_count: int = 0
    timeout_count: int = 0
    last_access_ms: int | None = None
    peak_throughput_per_minute: int = 0
    bucket_index: int | None = None
    bucket: MinuteTotals = MinuteTotals()
    prev_bucket_index: int | None = None
    prev_bucket: MinuteTotals = MinuteTotals()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_counters(raw: Mapping[bytes | str, bytes | str]) -> NodeCounters:
    """Typed counters from an ``HGETALL`` of ``keys.stats(dep, node)``; missing fields are 0/None."""
    fields = {_text(k): _text(v) for k, v in raw.items()}

    def integer(name: str) -> int:
        return int(float(fields[name])) if name in fields else 0

    def real(name: str) -> float:
        return float(fields[name]) if name in fields else 0.0

    def optional(name: str) -> int | None:
        return int(float(fields[name])) if name in fields else None

    return NodeCounters(
        inference_count=integer("inference_count"),
        inference_time_ms_sum=real("inference_time_ms_sum"),
        nohit_count=integer("nohit_count"),
        nohit_time_ms_sum=real("nohit_time_ms_sum"),
        cache_hit_count=integer("cache_hit_count"),
        error_count=integer("error_count"),
        rejected_execution_count=integer("rejected_execution_count"),
        timeout_count=integer("timeout_count"),
        last_access_ms=optional("last_access_ms"),
        peak_throughput_per_minute=integer("peak_throughput_per_minute"),
        bucket_index=optional("bucket_index"),
        bucket=MinuteTotals(integer("bucket_count"), real("bucket_time_ms_sum"), integer("bucket_hits")),
        prev_bucket_index=optional("prev_bucket_index"),
        prev_bucket=MinuteTotals(
            integer("prev_bucket_count"), real("prev_bucket_time_ms_sum"), integer("prev_bucket_hits")
        ),
    )


def bucket_index(*, start_ms: int, now_ms: int) -> int:
    """The start-aligned 1-minute bucket ``now_ms`` falls in (the same rule as ``stats.lua``)."""
    return (now_ms - start_ms) // BUCKET_MS


def last_minute(counters: NodeCounters, *, start_ms: int, now_ms: int) -> MinuteTotals:
    """Totals of the last *completed* bucket as of ``now_ms`` (Elasticsearch's "last minute").

    If the newest result lies in the current bucket, that is the previous bucket; if it lies in
    the previous bucket, the live bucket is the completed one; if more than one bucket has
    passed since the newest result, there is nothing (zeros).
    """
    wanted = bucket_index(start_ms=start_ms, now_ms=now_ms) - 1
    if counters.bucket_index == wanted:
        return counters.bucket
    if counters.prev_bucket_index == wanted:
        return counters.prev_bucket
    return MinuteTotals()


def node_object(
    *,
    node_id: str,
    node_name: str,
    transport_address: str,
    ephemeral_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``node`` object of a per-node stats entry: keyed by node id, as DiscoveryNode renders."""
    return {
        node_id: {
            "name": node_name,
            "ephemeral_id": ephemeral_id if ephemeral_id is not None else node_id,
            "transport_address": transport_address,
            "external_id": node_name,
            "attributes": dict(attributes or {}),
            "roles": ["ml"],
        }
    }


def render_node_stats(
    *,
    node_id: str,
    node_name: str,
    transport_address: str,
    counters: NodeCounters,
    routing_state: str,
    reason: str | None,
    start_ms: int,
    now_ms: int,
    pending_requests: int,
    threads_per_allocation: int,
    number_of_allocations: int,
    ephemeral_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One entry of ``deployment_stats.nodes``.

    ``start_ms`` is when this node's process for the deployment started (the buckets are
    aligned to it and it is reported as ``start_time``); ``threads_per_allocation`` and
    ``number_of_allocations`` are what the node actually runs. A node whose route is not
    ``started`` has only ``node``, ``routing_state`` (with ``reason`` when given) and the two
    throughput fields, both 0. For a started node the counts follow Elasticsearch: averages
    only when ``inference_count > 0``, ``error_count`` / ``rejected_execution_count`` /
    ``timeout_count`` only when > 0, ``last_access`` only after the first result,
    ``average_inference_time_ms_last_minute`` only when the last completed bucket had results.
    """
    node = node_object(
        node_id=node_id,
        node_name=node_name,
        transport_address=transport_address,
        ephemeral_id=ephemeral_id,
        attributes=attributes,
    )
    if routing_state != "started":
        state: dict[str, Any] = {"routing_state": routing_state}
        if reason is not None:
            state["reason"] = reason
        return {
            "node": node,
            "routing_state": state,
            "peak_throughput_per_minute": 0,
            "throughput_last_minute": 0,
        }

    c = counters
    out: dict[str, Any] = {"node": node, "routing_state": {"routing_state": "started"}}
    out["inference_count"] = c.inference_count
    if c.inference_count > 0:
        out["average_inference_time_ms"] = c.inference_time_ms_sum / c.inference_count
        # Elasticsearch reports 0.0 here when every result was a cache hit.
        out["average_inference_time_ms_excluding_cache_hits"] = (
            c.nohit_time_ms_sum / c.nohit_count if c.nohit_count > 0 else 0.0
        )
    out["inference_cache_hit_count"] = c.cache_hit_count
    if c.last_access_ms is not None:
        out["last_access"] = c.last_access_ms
    out["number_of_pending_requests"] = pending_requests
    if c.error_count > 0:
        out["error_count"] = c.error_count
    if c.rejected_execution_count > 0:
        out["rejected_execution_count"] = c.rejected_execution_count
    if c.timeout_count > 0:
        out["timeout_count"] = c.timeout_count
    out["start_time"] = start_ms
    out["threads_per_allocation"] = threads_per_allocation
    out["number_of_allocations"] = number_of_allocations
    minute = last_minute(c, start_ms=start_ms, now_ms=now_ms)
    out["peak_throughput_per_minute"] = c.peak_throughput_per_minute
    out["throughput_last_minute"] = minute.count
    if minute.average_time_ms is not None:
        out["average_inference_time_ms_last_minute"] = minute.average_time_ms
    out["inference_cache_hit_count_last_minute"] = minute.hits
    return out


def _sum(node_stats: Sequence[Mapping[str, Any]], name: str) -> int:
    return sum(int(node.get(name, 0)) for node in node_stats)


def render_deployment_stats(
    *,
    deployment: Mapping[str, Any],
    node_stats: list[dict[str, Any]],
    allocation_status: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``deployment_stats`` object of one deployment.

    ``deployment`` is the deployment document (``task_parameters``, ``cache_size_bytes``,
    ``assignment_state``, ``reason``?, ``start_time_ms``, ``adaptive_allocations``?);
    ``node_stats`` the rendered ``render_node_stats`` entries, in the order to report them;
    ``allocation_status`` the ready ``{allocation_count, target_allocation_count, state}``.
    The deployment-level counts are sums over ``node_stats``, exactly as Elasticsearch sums its
    node objects (a node that is not started contributes nothing), and are written only when
    > 0; ``peak_throughput_per_minute`` (the sum of the nodes' peaks) is always written.
    """
    params: Mapping[str, Any] = deployment["task_parameters"]
    out: dict[str, Any] = {
        "deployment_id": deployment["deployment_id"],
        "model_id": deployment["model_id"],
        "threads_per_allocation": params["threads_per_allocation"],
        "number_of_allocations": params["number_of_allocations"],
    }
    if deployment.get("adaptive_allocations") is not None:
        out["adaptive_allocations"] = deployment["adaptive_allocations"]
    out["queue_capacity"] = params["queue_capacity"]
    out["state"] = deployment.get("assignment_state", "starting")
    if deployment.get("reason") is not None:
        out["reason"] = deployment["reason"]
    out["allocation_status"] = dict(allocation_status)
    out["cache_size"] = format_bytes(int(deployment.get("cache_size_bytes", 0)))
    out["priority"] = params.get("priority", "normal")
    out["start_time"] = deployment["start_time_ms"]
    for name in ("error_count", "rejected_execution_count", "timeout_count", "inference_count"):
        total = _sum(node_stats, name)
        if total > 0:
            out[name] = total
    out["peak_throughput_per_minute"] = _sum(node_stats, "peak_throughput_per_minute")
    out["nodes"] = node_stats
    # inferq extension (docs/operations-redis-memory.md): the per-node cache budget Redis's memory
    # allows (``cache_size`` is what was asked), and the bytes the node caches hold now
    out["cache_budget_bytes"] = int(deployment.get("cache_budget_bytes", deployment.get("cache_size_bytes", 0)))
    out["cache_budget_state"] = str(deployment.get("cache_budget_state", "fits"))
    out["cache_used_bytes"] = _sum(node_stats, "cache_used_bytes")
    return out


def render_inference_stats(deployment_stats: Mapping[str, Any], *, timestamp_ms: int) -> dict[str, Any]:
    """The model's ``inference_stats`` made up from its deployment stats (spec section 3):
    ``failure_count`` = errors + timeouts + rejections; ``cache_miss_count`` is always 0."""
    failures = sum(
        int(deployment_stats.get(name, 0))
        for name in ("error_count", "timeout_count", "rejected_execution_count")
    )
    return {
        "failure_count": failures,
        "inference_count": int(deployment_stats.get("inference_count", 0)),
        "cache_miss_count": 0,
        "missing_all_fields_count": 0,
        "timestamp": timestamp_ms,
    }
