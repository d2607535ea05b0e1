"""One read of everything ``GET /metrics`` and ``/_status`` show, from Redis alone.

Any gateway reads the same keys, so any gateway describes the whole cluster, and two gateways
give the same numbers. Four pipelined round trips, whatever the cluster's size:

1. ``cluster_view.load_view`` (two): ``inferq:deployments``, each deployment document and
   its ``inferq:routes:<dep>`` hash;
2. ``inferq:nodes``, ``keys.METRICS_GATEWAY`` (``gateway/request_metrics.py``) and
   ``keys.METRICS_PLANNER`` (``gateway/control.py``);
3. per node ``inferq:node:<id>``, its heartbeat key and the key's PTTL (the age of the last
   beat is its TTL minus what is left, on Redis' clock: no skew between machines); per
   (deployment, node) placed or targeted, one ``shared.queue.FIGURES`` call: the stats hash
   (``keys.stats``: ``shared/lua/stats.lua`` counters and the worker's histograms), the
   cache's ``meta`` hash, ``LLEN`` of both queue lanes and of the allocations' processing
   lists (in flight), packed by Redis into one MessagePack string (parsing thousands of RESP
   elements in Python cost ten times more CPU). The processing lists are named by the
   ``keys.dn_allocations`` sets, read in the same round trip as the nodes (no SCAN).

No SCAN: an allocation's in-flight items (its processing list) are not counted, only what
waits in the queue.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis.asyncio as aioredis

from gateway.assignment import assignment_state
from gateway.request_metrics import GatewayFigures, parse_gateway_hash
from gateway.stats import NodeCounters, parse_counters
from shared import keys, node_registry, queue
from shared.cache import CacheStats, parse_meta
from shared.cluster_view import DeploymentView, load_view
from shared.histograms import BATCH_SIZE, FORWARD_SECONDS, Histogram
from shared.node_registry import NodeInfo
from shared.redis_conn import text


@dataclass(frozen=True)
class NodeFigures:
    node_id: str
    alive: bool
    processors: int
    memory_bytes: int
    heartbeat_age_s: float | None  # None once the heartbeat key expired
    suspect: bool = False  # alive but missing beats or stalled: gets no new requests
    allocations: int = 0  # started allocations over every deployment
    allocated_processors: int = 0  # allocations x threads per allocation


@dataclass(frozen=True)
class PlacementFigures:
    """One deployment on one node."""

    node_id: str
    routing_state: str
    allocations: int
    target_allocations: int
    threads_per_allocation: int
    queue_depth: int
    bulk_queue_depth: int
    in_flight: int  # taken by an allocation, not answered yet
    counters: NodeCounters
    cache: CacheStats
    batch_size: Histogram
    forward_seconds: Histogram


@dataclass(frozen=True)
class DeploymentFigures:
    deployment_id: str
    model_id: str
    state: str
    number_of_allocations: int  # requested
    queue_capacity: int  # per node
    cache_budget_bytes: int  # per node
    placements: list[PlacementFigures] = field(default_factory=list)

    @property
    def allocations(self) -> int:
        return sum(p.allocations for p in self.placements if p.routing_state == "started")

    @property
    def queue_depth(self) -> int:
        return sum(p.queue_depth for p in self.placements)

    @property
    def queue_capacity_total(self) -> int:
        return self.queue_capacity * len(self.placements)

    @property
    def cache_used_bytes(self) -> int:
        return sum(p.cache.used_bytes for p in self.placements)

    @property
    def cache_budget_total_bytes(self) -> int:
        return self.cache_budget_bytes * len(self.placements)

    @property
    def inference_count(self) -> int:
        return sum(p.counters.inference_count for p in self.placements)

    @property
    def cache_hits(self) -> int:
        return sum(p.cache.hits for p in self.placements)

    @property
    def cache_misses(self) -> int:
        return sum(p.cache.misses for p in self.placements)


@dataclass(frozen=True)
class ClusterSnapshot:
    time_ms: int
    nodes: list[NodeFigures]
    deployments: list[DeploymentFigures]
    gateway: GatewayFigures
    planner_actions: dict[str, int]
    read_seconds: float


def _pairs(flat: Any) -> dict[str, str]:
    items: Sequence[Any] = flat if isinstance(flat, list) else []
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def unpack_figures(raw: bytes) -> tuple[dict[str, str], dict[str, str], int, int, int]:
    """The stats hash, the cache meta hash, the two queue lengths and the in-flight count of a
    ``shared.queue.FIGURES`` reply."""
    stats, meta, depth, bulk_depth, in_flight = msgpack.unpackb(raw, raw=False, unicode_errors="replace")
    return _pairs(stats), _pairs(meta), int(depth), int(bulk_depth), int(in_flight)


def beat_age_s(raw_beat: bytes | None, pttl_ms: int, now_ms: int) -> float | None:
    """Seconds since the node's last heartbeat; None when its alive key is gone."""
    if raw_beat is None or pttl_ms == -2:
        return None
    beat = node_registry.Beat.decode(raw_beat)
    if beat is not None and pttl_ms >= 0:
        return max(0.0, (beat.ttl_ms - pttl_ms) / 1000)
    try:  # an older node's bare timestamp, on its own clock
        return max(0.0, (now_ms - int(raw_beat)) / 1000)
    except ValueError:
        return None


def placed_nodes(view: DeploymentView) -> list[str]:
    """Nodes the deployment runs on or is meant to: its routes and its positive targets."""
    targets: dict[str, int] = view.doc.get("targets", {})
    return sorted(set(view.routes) | {node for node, n in targets.items() if n > 0})


def _hash(raw: Any) -> dict[Any, Any]:
    return raw if isinstance(raw, dict) else dict(_pairs(raw)) if raw else {}


def _read_figures(pairs: Sequence[tuple[str, str]]) -> queue.Ops[list[Any]]:
    """Two round trips: the node list, both metrics hashes and the allocation sets; then per node
    its info hash, heartbeat and its PTTL, and per (deployment, node) one ``FIGURES`` call. The
    replies in that order (the nodes' ahead of the figures)."""
    first = yield queue.Batch((
        queue.Command(("SMEMBERS", keys.NODES)),
        queue.Command(("HGETALL", keys.METRICS_GATEWAY)),
        queue.Command(("HGETALL", keys.METRICS_PLANNER)),
        *(queue.allocations_command(d, n) for d, n in pairs),
    ))  # fmt: skip
    for reply in first:
        if isinstance(reply, Exception):
            raise reply
    raw_nodes, raw_gateway, raw_planner, *raw_allocations = first
    node_ids = sorted(text(n) for n in raw_nodes)
    second = yield queue.Batch((
        *(queue.Command((command, key(node_id))) for node_id in node_ids
          for command, key in (("HGETALL", keys.node_info), ("GET", keys.node_heartbeat), ("PTTL", keys.node_heartbeat))),
        *(queue.figures_call(d, n, names) for (d, n), names in zip(pairs, raw_allocations, strict=True)),
    ))  # fmt: skip
    for reply in second:
        if isinstance(reply, Exception):
            raise reply
    return [raw_nodes, raw_gateway, raw_planner, *second]


async def read_snapshot(client: aioredis.Redis) -> ClusterSnapshot:
    started = time.perf_counter()
    view = await load_view(client)
    views = [view.deployments[d] for d in sorted(view.deployments)]
    pairs = [(dv, node) for dv in views for node in placed_nodes(dv)]
    replies = iter(await queue.arun(client, _read_figures([(dv.deployment_id, node) for dv, node in pairs])))
    raw_nodes, raw_gateway, raw_planner = next(replies), next(replies), next(replies)
    node_ids = sorted(text(n) for n in raw_nodes)
    now_ms = int(time.time() * 1000)

    infos: dict[str, tuple[NodeInfo, bytes | None, int]] = {}
    for node_id in node_ids:
        raw_info, beat, pttl_ms = _hash(next(replies)), next(replies), int(next(replies))
        infos[node_id] = (NodeInfo.from_hash(node_id, raw_info), beat, pttl_ms)

    deployments: list[DeploymentFigures] = []
    placements_by_dep: dict[str, list[PlacementFigures]] = {}
    for dv, node in pairs:
        stats_fields, meta, depth, bulk_depth, in_flight = unpack_figures(next(replies))
        route = dv.routes.get(node)
        targets: dict[str, int] = dv.doc.get("targets", {})
        placements_by_dep.setdefault(dv.deployment_id, []).append(
            PlacementFigures(
                node_id=node,
                routing_state=route.routing_state if route else "starting",
                allocations=route.current_allocations if route else 0,
                target_allocations=int(targets.get(node, 0)),
                threads_per_allocation=route.threads_per_allocation if route else 0,
                queue_depth=depth,
                bulk_queue_depth=bulk_depth,
                in_flight=in_flight,
                counters=parse_counters(stats_fields),  # type: ignore[arg-type]  # Mapping is invariant in its key
                cache=parse_meta(meta, dv.cache_size_bytes),
                batch_size=BATCH_SIZE.read(stats_fields),
                forward_seconds=FORWARD_SECONDS.read(stats_fields),
            )
        )
    for dv in views:
        params = dv.doc.get("task_parameters", {})
        deployments.append(
            DeploymentFigures(
                deployment_id=dv.deployment_id,
                model_id=dv.model_id,
                state=assignment_state(dv.doc, dv.routes),
                number_of_allocations=int(params.get("number_of_allocations", 0)),
                queue_capacity=dv.queue_capacity,
                cache_budget_bytes=dv.cache_size_bytes,
                placements=placements_by_dep.get(dv.deployment_id, []),
            )
        )

    nodes: list[NodeFigures] = []
    for node_id, (info, beat, pttl_ms) in infos.items():
        running = [
            p for d in deployments for p in d.placements if p.node_id == node_id and p.routing_state == "started"
        ]
        nodes.append(
            NodeFigures(
                node_id=node_id,
                alive=beat is not None,
                processors=info.processors,
                memory_bytes=info.memory_bytes,
                heartbeat_age_s=beat_age_s(beat, pttl_ms, now_ms),
                suspect=beat is not None and node_registry.suspect(beat, pttl_ms),
                allocations=sum(p.allocations for p in running),
                allocated_processors=sum(p.allocations * p.threads_per_allocation for p in running),
            )
        )
    planner = {text(k): int(float(text(v))) for k, v in _hash(raw_planner).items()}
    return ClusterSnapshot(
        time_ms=now_ms,
        nodes=nodes,
        deployments=deployments,
        gateway=parse_gateway_hash(_hash(raw_gateway)).only(set(view.deployments)),
        planner_actions=planner,
        read_seconds=time.perf_counter() - started,
    )
