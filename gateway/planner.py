"""The allocation planner: which node runs how many allocations of which deployment (pure).

Spec section 7, done greedily. On every node the normal-priority deployments use at most its
processors (allocations x threads_per_allocation) and the deployments present on a node fit
its memory (one model copy per node, whatever the allocation count). Low-priority deployments
(1 allocation x 1 thread) are planned afterwards on the memory left, with a budget of
``LOW_PRIORITY_SLOTS_PER_NODE`` per node instead of processors.

Goals, in order:
1. keep current allocations where they are (no outage on a rebalance); allocations on nodes
   that are gone are re-placed, a reduced deployment gives up allocations from its fullest
   nodes first;
2. give every previously assigned deployment at least one allocation, then every new one;
3. place as many of the requested allocations as fit (round-robin over the deployments);
4. prefer nodes that already hold the deployment, then the node with the most free
   processors, then the most free memory, then the smallest node id.

Everything is iterated in sorted order, so the same input always gives the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.units import format_bytes

MB = 1024 * 1024
NATIVE_OVERHEAD_BYTES = 240 * MB  # MEMORY_OVERHEAD of StartTrainedModelDeploymentAction
LOW_PRIORITY_SLOTS_PER_NODE = 100  # MAX_LOW_PRIORITY_MODELS_PER_NODE: the low-priority "CPU" budget
NO_NODES_REASON = "No ML nodes exist in the cluster"


@dataclass(frozen=True)
class NodeCapacity:
    node_id: str
    processors: int
    memory_bytes: int


@dataclass(frozen=True)
class DeploymentDemand:
    deployment_id: str
    allocations: int  # requested total across nodes
    threads_per_allocation: int
    # per-node memory wherever it has >= 1 allocation (allocations on a node share one model copy)
    memory_bytes: int
    priority: str = "normal"  # "normal" | "low"
    current: Mapping[str, int] = field(default_factory=dict)  # node_id -> allocations (previous plan)
    max_assigned_allocations: int = 0

    @property
    def previously_assigned(self) -> bool:
        return self.max_assigned_allocations > 0 or any(n > 0 for n in self.current.values())


@dataclass(frozen=True)
class Plan:
    # deployment_id -> node_id -> allocations; every deployment has an entry, nodes only with > 0
    allocations: dict[str, dict[str, int]]
    # deployment_id -> reason, only for deployments that did not get all they asked for
    reasons: dict[str, str]


def estimate_memory_bytes(
    model_bytes: int,
    *,
    per_deployment_memory_bytes: int = 0,
    per_allocation_memory_bytes: int = 0,
    allocations: int = 1,
    cache_size_bytes: int | None = None,
) -> int:
    """Memory one node needs for a deployment (spec section 4.5; ELSER's fixed size is the
    caller's business). ``cache_size_bytes`` None means the default cache (= model size)."""
    if allocations == 0:
        return 0
    base_bytes = NATIVE_OVERHEAD_BYTES + 2 * model_bytes
    if per_deployment_memory_bytes or per_allocation_memory_bytes:
        metadata_bytes = per_deployment_memory_bytes + per_allocation_memory_bytes * allocations + model_bytes
        base_bytes = max(base_bytes, metadata_bytes)
    if cache_size_bytes is not None and cache_size_bytes > model_bytes:
        base_bytes += cache_size_bytes - model_bytes
    return base_bytes


# ---- internals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One deployment as a phase sees it."""

    deployment_id: str
    wanted: int
    threads: int
    memory_bytes: int
    keep: dict[str, int]  # live current allocations, already reduced to `wanted`
    current_nodes: frozenset[str]
    previously_assigned: bool

    @property
    def size_key(self) -> tuple[int, int, str]:
        """Biggest first (threads, then memory): first-fit decreasing packs better."""
        return (-self.threads, -self.memory_bytes, self.deployment_id)


@dataclass
class _Bins:
    """Free capacity per node during one phase, and what has been placed."""

    node_ids: list[str]  # sorted
    processors: dict[str, int]
    memory_bytes: dict[str, int]
    free_processors: dict[str, int]
    free_memory_bytes: dict[str, int]
    placed: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, item: _Item, node_id: str) -> int:
        return self.placed.get(item.deployment_id, {}).get(node_id, 0)

    def total(self, item: _Item) -> int:
        return sum(self.placed.get(item.deployment_id, {}).values())

    def fits(self, item: _Item, node_id: str) -> bool:
        """Whether one more allocation of ``item`` fits on the node."""
        present = self.count(item, node_id) > 0
        return self.free_processors[node_id] >= item.threads and (
            present or self.free_memory_bytes[node_id] >= item.memory_bytes
        )

    def place(self, item: _Item, node_id: str, allocations: int) -> None:
        if self.count(item, node_id) == 0:
            self.free_memory_bytes[node_id] -= item.memory_bytes
        self.free_processors[node_id] -= item.threads * allocations
        on_nodes = self.placed.setdefault(item.deployment_id, {})
        on_nodes[node_id] = on_nodes.get(node_id, 0) + allocations

    def best_node(self, item: _Item) -> str | None:
        candidates = [n for n in self.node_ids if self.fits(item, n)]
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda n: (
                self.count(item, n) == 0,
                n not in item.current_nodes,
                -self.free_processors[n],
                -self.free_memory_bytes[n],
                n,
            ),
        )

    def explain(self, item: _Item) -> str:
        """Why ``item`` could not get (more) allocations, node by node, joined with ``|``."""
        parts: list[str] = []
        for n in self.node_ids:
            if self.count(item, n) == 0 and self.free_memory_bytes[n] < item.memory_bytes:
                why = (
                    "This node has insufficient available memory. "
                    f"Available memory for ML [{_bytes(self.memory_bytes[n])}], "
                    f"free memory [{_bytes(self.free_memory_bytes[n])}], "
                    f"estimated memory required for this model [{_bytes(item.memory_bytes)}]."
                )
            elif self.free_processors[n] < item.threads:
                why = (
                    "This node has insufficient allocated processors. "
                    f"Available processors [{self.processors[n]}], "
                    f"free processors [{self.free_processors[n]}], "
                    f"processors required for each allocation of this model [{item.threads}]"
                )
            else:
                continue
            parts.append(f"Could not assign (more) allocations on node [{n}]. Reason: {why}")
        return "|".join(parts)


def _bytes(size: int) -> str:
    return f"{size} ({format_bytes(max(size, 0))})"


def reduce_allocations(current: Mapping[str, int], wanted: int) -> dict[str, int]:
    """Take allocations off until at most ``wanted`` remain: always from the node holding the
    most (ties: the largest node id), so the last node standing is never emptied."""
    kept = {n: c for n, c in current.items() if c > 0}
    excess = sum(kept.values()) - max(wanted, 0)
    while excess > 0:
        fullest = max(kept, key=lambda n: (kept[n], n))
        kept[fullest] -= 1
        if kept[fullest] == 0:
            del kept[fullest]
        excess -= 1
    return kept


def _plan_phase(bins: _Bins, items: Sequence[_Item]) -> dict[str, str]:
    """Place ``items`` into ``bins`` (mutated); return the reasons of the unsatisfied ones."""
    # 1. Keep what is already running, as far as it still fits.
    for item in sorted(items, key=lambda i: i.deployment_id):
        for node_id in sorted(item.keep):
            if bins.fits(item, node_id):
                count = min(item.keep[node_id], bins.free_processors[node_id] // item.threads)
                bins.place(item, node_id, count)

    # 2. One allocation for every deployment that has none: previously assigned ones first.
    empty = [i for i in items if i.wanted > 0 and bins.total(i) == 0]
    for item in sorted(empty, key=lambda i: (not i.previously_assigned, i.size_key)):
        chosen = bins.best_node(item)
        if chosen is not None:
            bins.place(item, chosen, 1)

    # 3. The rest, one allocation per deployment per round, until nothing more fits.
    hungry = sorted((i for i in items if bins.total(i) < i.wanted), key=lambda i: i.size_key)
    while hungry:
        still_hungry: list[_Item] = []
        for item in hungry:
            chosen = bins.best_node(item)
            if chosen is None:
                continue
            bins.place(item, chosen, 1)
            if bins.total(item) < item.wanted:
                still_hungry.append(item)
        hungry = still_hungry

    return {i.deployment_id: bins.explain(i) for i in items if bins.total(i) < i.wanted}


def _item(demand: DeploymentDemand, live_nodes: set[str], *, low: bool) -> _Item:
    if demand.threads_per_allocation < 1 or demand.allocations < 0 or demand.memory_bytes < 0:
        raise ValueError(f"invalid demand for deployment [{demand.deployment_id}]: {demand}")
    wanted = min(demand.allocations, 1) if low else demand.allocations
    live = {n: c for n, c in demand.current.items() if n in live_nodes and c > 0}
    return _Item(
        deployment_id=demand.deployment_id,
        wanted=wanted,
        threads=1 if low else demand.threads_per_allocation,
        memory_bytes=demand.memory_bytes,
        keep=reduce_allocations(live, wanted),
        current_nodes=frozenset(live),
        previously_assigned=demand.previously_assigned,
    )


def plan(nodes: Sequence[NodeCapacity], deployments: Sequence[DeploymentDemand]) -> Plan:
    """Plan every deployment onto ``nodes`` (see the module docstring for the rules)."""
    node_ids = sorted(n.node_id for n in nodes)
    if len(set(node_ids)) != len(node_ids):
        raise ValueError("duplicate node ids")
    deployment_ids = [d.deployment_id for d in deployments]
    if len(set(deployment_ids)) != len(deployment_ids):
        raise ValueError("duplicate deployment ids")

    if not nodes:
        return Plan(
            allocations={d: {} for d in sorted(deployment_ids)},
            reasons={d.deployment_id: NO_NODES_REASON for d in deployments if d.allocations > 0},
        )

    live = set(node_ids)
    by_id = {n.node_id: n for n in nodes}
    normal = [_item(d, live, low=False) for d in deployments if d.priority != "low"]
    low = [_item(d, live, low=True) for d in deployments if d.priority == "low"]

    normal_bins = _Bins(
        node_ids=node_ids,
        processors={n: by_id[n].processors for n in node_ids},
        memory_bytes={n: by_id[n].memory_bytes for n in node_ids},
        free_processors={n: by_id[n].processors for n in node_ids},
        free_memory_bytes={n: by_id[n].memory_bytes for n in node_ids},
    )
    reasons = _plan_phase(normal_bins, normal)

    low_bins = _Bins(
        node_ids=node_ids,
        processors={n: LOW_PRIORITY_SLOTS_PER_NODE for n in node_ids},
        memory_bytes=normal_bins.memory_bytes,
        free_processors={n: LOW_PRIORITY_SLOTS_PER_NODE for n in node_ids},
        free_memory_bytes=dict(normal_bins.free_memory_bytes),
    )
    reasons.update(_plan_phase(low_bins, low))

    allocations: dict[str, dict[str, int]] = {}
    for deployment_id in sorted(deployment_ids):
        placed = normal_bins.placed.get(deployment_id) or low_bins.placed.get(deployment_id) or {}
        allocations[deployment_id] = {n: placed[n] for n in sorted(placed) if placed[n] > 0}
    return Plan(allocations=allocations, reasons=dict(sorted(reasons.items())))
