from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.planner import (
    LOW_PRIORITY_SLOTS_PER_NODE,
    MB,
    DeploymentDemand,
    NodeCapacity,
    Plan,
    estimate_memory_bytes,
    plan,
    reduce_allocations,
)

GB = 1024 * MB


def node(node_id: str, processors: int = 8, memory_bytes: int = 16 * GB) -> NodeCapacity:
    return NodeCapacity(node_id, processors, memory_bytes)


def dep(
    deployment_id: str,
    allocations: int = 1,
    threads: int = 1,
    memory_bytes: int = 1 * GB,
    **kwargs: object,
) -> DeploymentDemand:
    return DeploymentDemand(
        deployment_id, allocations, threads, memory_bytes, **kwargs  # type: ignore[arg-type]
    )


# ---- strategies ------------------------------------------------------------------------------

NODE_IDS = [f"n{i}" for i in range(5)]
GONE_IDS = ["gone-a", "gone-b"]


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeCapacity]:
    ids = draw(st.lists(st.sampled_from(NODE_IDS), unique=True, max_size=4))
    return [
        NodeCapacity(i, draw(st.integers(0, 16)), draw(st.integers(0, 12)) * GB) for i in ids
    ]


@st.composite
def demands(draw: st.DrawFn) -> list[DeploymentDemand]:
    count = draw(st.integers(0, 6))
    out = []
    for i in range(count):
        current = draw(
            st.dictionaries(st.sampled_from(NODE_IDS + GONE_IDS), st.integers(0, 6), max_size=3)
        )
        out.append(
            DeploymentDemand(
                deployment_id=f"d{i}",
                allocations=draw(st.integers(0, 8)),
                threads_per_allocation=draw(st.sampled_from([1, 1, 2, 4, 8])),
                memory_bytes=draw(st.integers(0, 6)) * GB,
                priority=draw(st.sampled_from(["normal", "normal", "low"])),
                current=current,
                max_assigned_allocations=draw(st.integers(0, 3)),
            )
        )
    return out


def assert_within_capacity(
    nodes: list[NodeCapacity], deployments: list[DeploymentDemand], result: Plan
) -> None:
    by_id = {d.deployment_id: d for d in deployments}
    assert set(result.allocations) == set(by_id)
    for capacity in nodes:
        used_processors = 0
        used_memory = 0
        low_models = 0
        for deployment_id, on_nodes in result.allocations.items():
            count = on_nodes.get(capacity.node_id, 0)
            if count == 0:
                continue
            demand = by_id[deployment_id]
            used_memory += demand.memory_bytes
            if demand.priority == "low":
                low_models += 1
            else:
                used_processors += count * demand.threads_per_allocation
        assert used_processors <= capacity.processors
        assert used_memory <= capacity.memory_bytes
        assert low_models <= LOW_PRIORITY_SLOTS_PER_NODE
    node_ids = {n.node_id for n in nodes}
    for deployment_id, on_nodes in result.allocations.items():
        demand = by_id[deployment_id]
        assert set(on_nodes) <= node_ids
        assert all(count > 0 for count in on_nodes.values())
        wanted = min(demand.allocations, 1) if demand.priority == "low" else demand.allocations
        total = sum(on_nodes.values())
        assert total <= wanted
        if demand.priority == "low":
            assert all(count == 1 for count in on_nodes.values())
        assert (deployment_id in result.reasons) == (total < wanted)


def as_current(deployments: list[DeploymentDemand], previous: Plan) -> list[DeploymentDemand]:
    out = []
    for d in deployments:
        placed = previous.allocations[d.deployment_id]
        assigned = max(d.max_assigned_allocations, sum(placed.values()))
        out.append(dataclasses.replace(d, current=placed, max_assigned_allocations=assigned))
    return out


# ---- properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(clusters(), demands())
def test_never_oversubscribes(nodes: list[NodeCapacity], deployments: list[DeploymentDemand]) -> None:
    assert_within_capacity(nodes, deployments, plan(nodes, deployments))


@settings(max_examples=200, deadline=None)
@given(clusters(), demands(), st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(
    nodes: list[NodeCapacity], deployments: list[DeploymentDemand], rnd: random.Random
) -> None:
    expected = plan(nodes, deployments)
    shuffled_nodes = list(nodes)
    rnd.shuffle(shuffled_nodes)
    shuffled = [
        dataclasses.replace(d, current=dict(sorted(d.current.items(), key=lambda _: rnd.random())))
        for d in deployments
    ]
    rnd.shuffle(shuffled)
    assert plan(shuffled_nodes, shuffled) == expected
    assert plan(nodes, deployments) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 16), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=6),
    st.data(),
)
def test_places_everything_when_capacity_clearly_suffices(
    processors: list[int], wanted: list[tuple[int, bool]], data: st.DataObject
) -> None:
    # Single-thread allocations, and every node can hold every model at once: only the
    # processor total can bind, and it is large enough.
    nodes = [NodeCapacity(f"n{i}", p, 10 * GB) for i, p in enumerate(processors)]
    budget = sum(processors)
    deployments = []
    for i, (allocations, low) in enumerate(wanted):
        allocations = min(allocations, budget)
        if not low:
            budget -= allocations
        current = data.draw(
            st.dictionaries(st.sampled_from(NODE_IDS + GONE_IDS), st.integers(0, 4), max_size=2)
        )
        deployments.append(
            dep(f"d{i}", allocations, 1, GB, priority="low" if low else "normal", current=current)
        )
    result = plan(nodes, deployments)
    assert result.reasons == {}
    for d in deployments:
        expected = min(d.allocations, 1) if d.priority == "low" else d.allocations
        assert sum(result.allocations[d.deployment_id].values()) == expected


@settings(max_examples=200, deadline=None)
@given(clusters(), demands(), st.integers(0, 16), st.integers(0, 12))
def test_replan_after_a_node_joins_moves_nothing(
    nodes: list[NodeCapacity],
    deployments: list[DeploymentDemand],
    new_processors: int,
    new_memory_gb: int,
) -> None:
    first = plan(nodes, deployments)
    again = as_current(deployments, first)

    # The same cluster again: a fixed point.
    assert plan(nodes, again) == first

    # One more node: everything stays where it was; the new node only adds.
    joined = [*nodes, NodeCapacity("joiner", new_processors, new_memory_gb * GB)]
    second = plan(joined, again)
    assert_within_capacity(joined, again, second)
    for deployment_id, on_nodes in first.allocations.items():
        for node_id, count in on_nodes.items():
            assert second.allocations[deployment_id].get(node_id, 0) >= count, (deployment_id, node_id)


@settings(max_examples=200, deadline=None)
@given(clusters(), demands(), st.data())
def test_reduction_only_removes(
    nodes: list[NodeCapacity], deployments: list[DeploymentDemand], data: st.DataObject
) -> None:
    first = plan(nodes, deployments)
    again = as_current(deployments, first)
    reduced = [
        dataclasses.replace(d, allocations=data.draw(st.integers(min(1, d.allocations), d.allocations)))
        for d in again
    ]
    result = plan(nodes, reduced)
    assert_within_capacity(nodes, reduced, result)
    # (Low-priority ones may still lose their place to a normal deployment that now fits.)
    for d in (d for d in reduced if d.priority == "normal"):
        kept = result.allocations[d.deployment_id]
        had = sum(d.current.values())
        if d.allocations <= had:
            assert sum(kept.values()) == d.allocations
            assert all(kept.get(n, 0) <= c for n, c in d.current.items())
            assert set(kept) <= set(d.current)
            if had > 0:
                assert kept, "a reduced deployment keeps at least one node"


# ---- examples --------------------------------------------------------------------------------


def test_no_nodes() -> None:
    result = plan([], [dep("a"), dep("zero", allocations=0)])
    assert result.allocations == {"a": {}, "zero": {}}
    assert result.reasons == {"a": "No ML nodes exist in the cluster"}


def test_opens_on_the_node_with_most_free_processors() -> None:
    result = plan([node("n1", 6), node("n2", 8)], [dep("a", 2), dep("b", 3, threads=2)])
    # b (bigger) opens first, on n2 (8 free); a then opens on n1 (both have 6 free, n1 has more
    # free memory). Each then fills the node it is on.
    assert result.allocations == {"a": {"n1": 2}, "b": {"n2": 3}}
    assert result.reasons == {}


def test_prefers_nodes_already_holding_the_deployment() -> None:
    result = plan(
        [node("n1", 8), node("n2", 16)],
        [dep("a", 4, current={"n1": 2}, max_assigned_allocations=2)],
    )
    assert result.allocations == {"a": {"n1": 4}}


def test_cpu_reason_text() -> None:
    result = plan(
        [node("n1", 4)],
        [dep("a", 4, current={"n1": 4}), dep("b", 1)],
    )
    assert result.allocations == {"a": {"n1": 4}, "b": {}}
    assert result.reasons == {
        "b": "Could not assign (more) allocations on node [n1]. Reason: This node has insufficient "
        "allocated processors. Available processors [4], free processors [0], processors required "
        "for each allocation of this model [1]"
    }


def test_memory_reason_text_and_several_nodes_joined() -> None:
    result = plan(
        [node("n2", 8, 2 * GB), node("n1", 2, 8 * GB)],
        [dep("a", 1, threads=4, memory_bytes=3 * GB)],
    )
    assert result.allocations == {"a": {}}
    assert result.reasons["a"] == (
        "Could not assign (more) allocations on node [n1]. Reason: This node has insufficient "
        "allocated processors. Available processors [2], free processors [2], processors required "
        "for each allocation of this model [4]"
        "|"
        "Could not assign (more) allocations on node [n2]. Reason: This node has insufficient "
        "available memory. Available memory for ML [2147483648 (2gb)], free memory [2147483648 (2gb)], "
        "estimated memory required for this model [3221225472 (3gb)]."
    )


def test_threads_above_every_node_gets_a_reason() -> None:
    result = plan([node("n1", 4), node("n2", 2)], [dep("big", 1, threads=8)])
    assert result.allocations == {"big": {}}
    assert result.reasons["big"].count("insufficient allocated processors") == 2


def test_partial_placement_gets_a_reason() -> None:
    result = plan([node("n1", 3)], [dep("a", 5)])
    assert result.allocations == {"a": {"n1": 3}}
    assert "free processors [0]" in result.reasons["a"]


def test_reduction_takes_from_the_fullest_nodes() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    result = plan(nodes, [dep("a", 2, current={"n1": 3, "n2": 1})])
    assert result.allocations == {"a": {"n1": 1, "n2": 1}}
    result = plan(nodes, [dep("a", 1, current={"n1": 1, "n2": 1, "n3": 1})])
    assert result.allocations == {"a": {"n1": 1}}
    assert reduce_allocations({"n1": 4, "n2": 4}, 5) == {"n1": 3, "n2": 2}
    assert reduce_allocations({"n1": 4}, 0) == {}


def test_allocations_on_a_lost_node_are_replaced() -> None:
    result = plan(
        [node("n1", 4), node("n2", 8)],
        [dep("a", 4, current={"n1": 2, "gone": 2}, max_assigned_allocations=4)],
    )
    # The two on n1 stay; the lost two go to n1 first (it already holds the model).
    assert result.allocations == {"a": {"n1": 4}}
    result = plan(
        [node("n1", 2), node("n2", 8)],
        [dep("a", 4, current={"n1": 2, "gone": 2}, max_assigned_allocations=4)],
    )
    assert result.allocations == {"a": {"n1": 2, "n2": 2}}


def test_previously_assigned_deployments_get_one_first() -> None:
    nodes = [node("n1", 2)]
    result = plan(
        nodes,
        [
            dep("a-new", 2),
            dep("b-old", 1, current={"gone": 1}),
            dep("c-old", 3, max_assigned_allocations=3),
        ],
    )
    assert result.allocations == {"a-new": {}, "b-old": {"n1": 1}, "c-old": {"n1": 1}}
    assert set(result.reasons) == {"a-new", "c-old"}


def test_current_allocations_stay_even_when_another_node_is_emptier() -> None:
    result = plan(
        [node("n1", 4), node("big", 64)],
        [dep("a", 2, current={"n1": 2}), dep("b", 2, threads=2, current={"n1": 1})],
    )
    assert result.allocations == {"a": {"n1": 2}, "b": {"n1": 1, "big": 1}}


def test_current_allocations_that_no_longer_fit_are_cut() -> None:
    # The node shrank from 8 to 3 processors.
    result = plan([node("n1", 3)], [dep("a", 4, current={"n1": 4})])
    assert result.allocations == {"a": {"n1": 3}}
    assert "a" in result.reasons


def test_low_priority_is_one_by_one_and_may_oversubscribe_cpu() -> None:
    result = plan(
        [node("n1", 2, 4 * GB)],
        [dep("normal", 2, memory_bytes=2 * GB), dep("low", 5, threads=4, memory_bytes=GB, priority="low")],
    )
    assert result.allocations == {"normal": {"n1": 2}, "low": {"n1": 1}}
    assert result.reasons == {}


def test_low_priority_gets_only_the_memory_left() -> None:
    result = plan(
        [node("n1", 8, 4 * GB)],
        [
            dep("low", 1, memory_bytes=2 * GB, priority="low", current={"n1": 1}),
            dep("normal", 1, memory_bytes=3 * GB),
        ],
    )
    assert result.allocations == {"low": {}, "normal": {"n1": 1}}
    assert "insufficient available memory" in result.reasons["low"]
    assert "free memory [1073741824 (1gb)]" in result.reasons["low"]


def test_low_priority_spreads_over_nodes() -> None:
    nodes = [node("n1", 1), node("n2", 1)]
    result = plan(nodes, [dep(f"l{i}", priority="low") for i in range(4)])
    assert sorted(next(iter(a)) for a in result.allocations.values()) == ["n1", "n1", "n2", "n2"]


def test_zero_allocations_requested() -> None:
    result = plan([node("n1")], [dep("a", 0, current={"n1": 2}, max_assigned_allocations=2)])
    assert result == Plan(allocations={"a": {}}, reasons={})


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(ValueError):
        plan([node("n1"), node("n1")], [])
    with pytest.raises(ValueError):
        plan([node("n1")], [dep("a"), dep("a")])


def test_estimate_memory_bytes() -> None:
    model = 100 * MB
    assert estimate_memory_bytes(model) == 240 * MB + 200 * MB
    # eland metadata: the larger of the two formulas
    assert estimate_memory_bytes(model, per_deployment_memory_bytes=50 * MB) == 440 * MB
    with_metadata = estimate_memory_bytes(
        model, per_deployment_memory_bytes=300 * MB, per_allocation_memory_bytes=100 * MB, allocations=2
    )
    assert with_metadata == 300 * MB + 200 * MB + 100 * MB
    # a cache larger than the model costs the difference; the default one is free
    assert estimate_memory_bytes(model, cache_size_bytes=150 * MB) == 440 * MB + 50 * MB
    assert estimate_memory_bytes(model, cache_size_bytes=0) == 440 * MB
    assert estimate_memory_bytes(model, cache_size_bytes=model) == 440 * MB
    assert estimate_memory_bytes(model, allocations=0) == 0
