"""The Redis memory accounting (shared.redis_budget): budgets that fit, that must shrink, that
are refused."""

from __future__ import annotations

from shared.redis_budget import (
    MIB,
    MIN_RESERVE_BYTES,
    MIN_SCALED_CACHE_BYTES,
    CacheDemand,
    CacheLimits,
    RedisCapacity,
    demand_of,
    explicit_refusal,
    plan_cache_budgets,
    string_bytes,
)

GIB = 1024 * MIB


def capacity(limit_bytes: int, models_bytes: int = 0, reserve_bytes: int = 0) -> RedisCapacity:
    return RedisCapacity.of(
        maxmemory_bytes=limit_bytes, setting_bytes=0, models_bytes=models_bytes, reserve_setting_bytes=reserve_bytes
    )


def default(deployment_id: str, requested_bytes: int, nodes: int = 1) -> CacheDemand:
    return CacheDemand(deployment_id, requested_bytes, nodes, explicit=False)


def explicit(deployment_id: str, requested_bytes: int, nodes: int = 1) -> CacheDemand:
    return CacheDemand(deployment_id, requested_bytes, nodes, explicit=True)


def test_capacity_is_the_limit_less_models_and_reserve() -> None:
    cap = capacity(1 * GIB, models_bytes=300 * MIB)
    assert cap.reserve_bytes == int(GIB * 0.10)  # 10% of 1 GiB is more than 16 MiB
    assert cap.cache_bytes == GIB - 300 * MIB - cap.reserve_bytes
    assert cap.memory_ceiling_bytes == GIB - cap.reserve_bytes
    small = capacity(100 * MIB)
    assert small.reserve_bytes == MIN_RESERVE_BYTES
    assert capacity(100 * MIB, models_bytes=200 * MIB).cache_bytes == 0  # models alone overflow: nothing


def test_what_queues_and_state_use_now_is_measured_around_models_and_caches() -> None:
    cap = RedisCapacity.of(
        maxmemory_bytes=GIB, setting_bytes=0, models_bytes=300 * MIB, reserve_setting_bytes=100 * MIB,
        used_memory_bytes=500 * MIB, caches_bytes=150 * MIB,
    )  # fmt: skip
    assert cap.state_bytes == 50 * MIB
    assert cap.cache_bytes == GIB - 300 * MIB - 50 * MIB - 100 * MIB  # the caches' own bytes are theirs


def test_maxmemory_wins_over_the_setting_which_stands_in_when_redis_has_none() -> None:
    both = RedisCapacity.of(maxmemory_bytes=GIB, setting_bytes=2 * GIB, models_bytes=0)
    assert (both.limit_bytes, both.limit_source) == (GIB, "maxmemory")
    setting = RedisCapacity.of(maxmemory_bytes=0, setting_bytes=2 * GIB, models_bytes=0)
    assert (setting.limit_bytes, setting.limit_source) == (2 * GIB, "INFERQ_REDIS_MEMORY")
    none = RedisCapacity.of(maxmemory_bytes=0, setting_bytes=0, models_bytes=5 * GIB)
    assert not none.known and none.memory_ceiling_bytes == 0 and none.limit_source == "none"


def test_budgets_that_fit_stay_as_requested() -> None:
    cap = capacity(GIB, models_bytes=100 * MIB, reserve_bytes=100 * MIB)  # 824 MiB for caches
    demands = [default("a", 90 * MIB, nodes=2), explicit("b", 200 * MIB, nodes=3)]  # 780 MiB
    budgets = plan_cache_budgets(cap, demands)
    assert {d: (b.budget_bytes, b.state) for d, b in budgets.items()} == {
        "a": (90 * MIB, "fits"),
        "b": (200 * MIB, "fits"),
    }


def test_without_a_known_limit_every_budget_stays_as_requested() -> None:
    cap = RedisCapacity.of(maxmemory_bytes=0, setting_bytes=0, models_bytes=0)
    budgets = plan_cache_budgets(cap, [default("a", 10 * GIB, nodes=8)])
    assert budgets["a"].budget_bytes == 10 * GIB and budgets["a"].state == "fits"


def test_default_budgets_shrink_in_proportion_to_fit_next_to_explicit_ones() -> None:
    cap = capacity(GIB, models_bytes=124 * MIB, reserve_bytes=100 * MIB)  # 800 MiB for caches
    demands = [
        explicit("fixed", 100 * MIB, nodes=2),  # 200 MiB, kept whole
        default("big", 400 * MIB, nodes=2),  # 800 MiB asked
        default("small", 200 * MIB, nodes=2),  # 400 MiB asked
    ]
    budgets = plan_cache_budgets(cap, demands)
    assert budgets["fixed"].budget_bytes == 100 * MIB and budgets["fixed"].state == "fits"
    # 600 MiB left for 1200 MiB asked: each default gets half of what it asked
    assert budgets["big"].budget_bytes == 200 * MIB and budgets["big"].state == "scaled"
    assert budgets["small"].budget_bytes == 100 * MIB and budgets["small"].state == "scaled"
    used = sum(b.budget_bytes * d.nodes for b, d in zip(budgets.values(), demands, strict=True))
    assert used <= cap.cache_bytes


def test_when_explicit_budgets_alone_overflow_all_shrink_and_defaults_are_off() -> None:
    cap = capacity(GIB, models_bytes=124 * MIB, reserve_bytes=100 * MIB)  # 800 MiB
    demands = [explicit("x", 400 * MIB, nodes=4), default("d", 50 * MIB, nodes=1)]  # x spread to 4 nodes
    budgets = plan_cache_budgets(cap, demands)
    assert budgets["x"].budget_bytes == 200 * MIB and budgets["x"].state == "scaled"
    assert budgets["d"].budget_bytes == 0 and budgets["d"].state == "off"


def test_a_scaled_budget_too_small_to_be_useful_is_off() -> None:
    cap = capacity(100 * MIB, models_bytes=100 * MIB - MIN_RESERVE_BYTES - 100 * 1024)  # 100 KiB for caches
    budgets = plan_cache_budgets(cap, [default("a", 50 * MIB)])
    assert budgets["a"].budget_bytes == 0 < MIN_SCALED_CACHE_BYTES and budgets["a"].state == "off"


def test_a_disabled_cache_fits() -> None:
    cap = capacity(100 * MIB, models_bytes=100 * MIB)
    budgets = plan_cache_budgets(cap, [explicit("a", 0, nodes=3), default("b", 0)])
    assert all(b.budget_bytes == 0 and b.state == "fits" for b in budgets.values())
    assert explicit_refusal(cap, [], explicit("a", 0, nodes=3)) is None


def test_an_explicit_cache_size_that_does_not_fit_next_to_the_others_is_refused() -> None:
    cap = capacity(GIB, models_bytes=124 * MIB, reserve_bytes=100 * MIB)  # 800 MiB
    others = [explicit("x", 300 * MIB, nodes=2), default("d", 400 * MIB, nodes=2)]  # defaults do not count
    fits = explicit("new", 100 * MIB, nodes=2)
    assert explicit_refusal(cap, [*others, fits], fits) is None
    too_big = explicit("new", 150 * MIB, nodes=2)
    message = explicit_refusal(cap, [*others, too_big], too_big)
    assert message is not None
    assert message.startswith("Could not start deployment because [cache_size] of [150mb] per node on [2] node(s)")
    assert "[200mb] free of [800mb] = [1gb] (maxmemory) - [124mb] stored models - [0b] queues and state" in message
    # without a limit there is nothing to refuse against
    unknown = RedisCapacity.of(maxmemory_bytes=0, setting_bytes=0, models_bytes=0)
    assert explicit_refusal(unknown, [too_big], too_big) is None


def test_documents_give_the_demand_and_the_writer_its_limits() -> None:
    doc = {"deployment_id": "d", "cache_size_bytes": 5 * MIB, "cache_size_explicit": True}
    assert demand_of(doc, 3) == CacheDemand("d", 5 * MIB, 3, True)
    assert CacheLimits.of_doc(doc) == CacheLimits(5 * MIB, 0)  # written before budgets existed
    doc |= {"cache_budget_bytes": MIB, "redis_memory_ceiling_bytes": 900 * MIB}
    assert CacheLimits.of_doc(doc) == CacheLimits(MIB, 900 * MIB)


def test_string_bytes_follow_the_allocator_as_memory_usage_reports() -> None:
    # the values MEMORY USAGE reports for a string key minus its key and object overhead, per size class
    assert string_bytes(1024 * 1024) == 1024 * 1024 + 256 * 1024  # a 1 MiB model part
    assert string_bytes(100) == 112  # 3-byte header + 100 + NUL = 104 -> 112
    assert string_bytes(1000) == 1024  # 5 + 1000 + 1 = 1006 -> 1024
