"""Redis memory as a budget: how much of it the result caches may use, and each deployment's
share (pure; ``gateway.redis_memory`` reads the inputs, the control plane applies the result).

Redis holds, besides the caches, the stored models (definitions, vocabularies), the queues,
the reply lists, heartbeats, deployment documents and stats. With ``maxmemory`` and
``noeviction`` a write past the limit is refused, a queue push, a reply or a heartbeat as much
as a cache insert, so the caches get only what is left::

    memory for caches = limit - stored models - state now - reserve

- ``limit``: Redis's ``maxmemory``, or ``INFERQ_REDIS_MEMORY`` where Redis has none; 0 when
  neither is known (then budgets stay as requested, and gateways and workers warn at start).
- ``stored models``: definition parts and vocabularies as Redis's allocator holds them
  (``string_bytes``: a 1 MiB part takes 1.25 MiB).
- ``state now``: what Redis uses besides the models and the caches (queues, replies, documents,
  stats, Redis itself): ``used_memory - client buffers - models - caches``, measured each
  planner pass (client buffers come and go with requests: the reserve covers them).
- ``reserve``: room for queues, replies and state to grow: ``INFERQ_REDIS_RESERVE``, by default
  ``max(16 MiB, limit / 10)``.

A deployment's cache lives on every node that serves it and asks ``requested_bytes`` per node
(``cache_size``; by default the model's size). Per-node budgets:

- all requests fit: as requested ("fits");
- else the explicit ``cache_size`` requests are kept whole and the default-sized caches share
  what is left in proportion to their requests ("scaled");
- if the explicit ones alone do not fit (the deployment spread to more nodes), every request is
  scaled by one factor, and default-sized caches get nothing.

A scaled budget under ``MIN_SCALED_CACHE_BYTES`` is 0 (the cache is "off"). ``_start`` refuses
an explicit ``cache_size`` that does not fit next to the other explicit ones
(``explicit_refusal``).

At run time Redis is guarded by ``memory_ceiling_bytes = limit - reserve``: a cache insert that
would grow ``used_memory`` past it is skipped (``shared/lua/cache.lua``), whatever the
accounting assumed.

Redis Cluster: each ``{dep|node}`` cache lives in one slot, so on one shard; the accounting is
then run once per shard with that shard's ``maxmemory``, models and caches. We run one shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared.units import format_bytes

MIB = 1024 * 1024
MIN_RESERVE_BYTES = 16 * MIB
RESERVE_SHARE = 0.10
MIN_SCALED_CACHE_BYTES = 256 * 1024

LimitSource = Literal["maxmemory", "INFERQ_REDIS_MEMORY", "none"]
BudgetState = Literal["fits", "scaled", "off"]


def string_bytes(length: int) -> int:
    """What Redis's allocator (jemalloc) holds for a string value of ``length`` bytes: the SDS
    buffer (header, bytes, NUL) rounded up to its size class (16-byte steps to 128, then four
    classes per doubling), as ``shared/lua/cache.lua`` counts. A 1 MiB model part takes 1.25 MiB."""
    n = length + (3 if length < 256 else 5 if length < 65536 else 9) + 1
    if n <= 128:
        return max(8, -(-n // 16) * 16)
    group = 128
    while group * 2 < n:
        group *= 2
    step = group // 4
    return -(-n // step) * step


def default_reserve_bytes(limit_bytes: int) -> int:
    return max(MIN_RESERVE_BYTES, int(limit_bytes * RESERVE_SHARE))


@dataclass(frozen=True)
class RedisCapacity:
    """One Redis (one shard): its limit and what is not the caches'."""

    limit_bytes: int  # 0: unknown
    limit_source: LimitSource
    models_bytes: int
    reserve_bytes: int
    state_bytes: int = 0  # used now by everything but the models and the caches

    @classmethod
    def of(
        cls,
        *,
        maxmemory_bytes: int,
        setting_bytes: int,
        models_bytes: int,
        reserve_setting_bytes: int = 0,
        used_memory_bytes: int = 0,
        caches_bytes: int = 0,
    ) -> RedisCapacity:
        """Redis's ``maxmemory`` wins; the setting stands in where Redis has none."""
        if maxmemory_bytes > 0:
            limit, source = maxmemory_bytes, "maxmemory"
        elif setting_bytes > 0:
            limit, source = setting_bytes, "INFERQ_REDIS_MEMORY"
        else:
            limit, source = 0, "none"
        reserve = reserve_setting_bytes or (default_reserve_bytes(limit) if limit else 0)
        state = max(0, used_memory_bytes - models_bytes - caches_bytes)
        return cls(limit, source, models_bytes, reserve, state)  # type: ignore[arg-type]

    @property
    def known(self) -> bool:
        return self.limit_bytes > 0

    @property
    def cache_bytes(self) -> int:
        """What every cache together may use (0 when the limit is unknown: see ``known``)."""
        if not self.known:
            return 0
        return max(0, self.limit_bytes - self.models_bytes - self.state_bytes - self.reserve_bytes)

    @property
    def memory_ceiling_bytes(self) -> int:
        """``used_memory`` above which no cache grows (0: none)."""
        return max(1, self.limit_bytes - self.reserve_bytes) if self.known else 0

    def describe(self) -> str:
        if not self.known:
            return "Redis has no memory limit (no maxmemory, no INFERQ_REDIS_MEMORY)"
        return (
            f"[{format_bytes(self.cache_bytes)}] = [{format_bytes(self.limit_bytes)}] ({self.limit_source}) "
            f"- [{format_bytes(self.models_bytes)}] stored models "
            f"- [{format_bytes(self.state_bytes)}] queues and state "
            f"- [{format_bytes(self.reserve_bytes)}] reserved for their growth"
        )


@dataclass(frozen=True)
class CacheDemand:
    deployment_id: str
    requested_bytes: int  # per node
    nodes: int  # nodes the deployment is placed on (each holds one cache)
    explicit: bool  # cache_size was given (else: the model's size, by default)

    @property
    def total_bytes(self) -> int:
        return self.requested_bytes * self.nodes


@dataclass(frozen=True)
class CacheBudget:
    deployment_id: str
    requested_bytes: int  # per node
    budget_bytes: int  # per node: what the cache may hold
    state: BudgetState


def _scaled(demand: CacheDemand, available: int, total: int) -> int:
    budget = demand.requested_bytes * available // total if total else demand.requested_bytes
    return budget if budget >= MIN_SCALED_CACHE_BYTES else 0


def plan_cache_budgets(capacity: RedisCapacity, demands: Sequence[CacheDemand]) -> dict[str, CacheBudget]:
    """Each deployment's per-node cache budget (see the module docstring for the rules)."""
    result: dict[str, CacheBudget] = {}
    explicit = [d for d in demands if d.explicit]
    default = [d for d in demands if not d.explicit]
    explicit_total = sum(d.total_bytes for d in explicit)
    default_total = sum(d.total_bytes for d in default)
    available = capacity.cache_bytes
    for demand in demands:
        if not capacity.known or demand.requested_bytes == 0 or explicit_total + default_total <= available:
            budget = demand.requested_bytes
        elif explicit_total <= available:
            budget = demand.requested_bytes if demand.explicit else _scaled(demand, available - explicit_total, default_total)
        else:
            budget = _scaled(demand, available, explicit_total) if demand.explicit else 0
        if budget >= demand.requested_bytes:
            state: BudgetState = "fits"
        else:
            state = "scaled" if budget > 0 else "off"
        result[demand.deployment_id] = CacheBudget(demand.deployment_id, demand.requested_bytes, budget, state)
    return result


def explicit_refusal(capacity: RedisCapacity, demands: Sequence[CacheDemand], new: CacheDemand) -> str | None:
    """Why an explicit ``cache_size`` cannot be granted next to the other explicit ones (None: it fits)."""
    if not capacity.known or not new.explicit or new.total_bytes == 0:
        return None
    others = sum(d.total_bytes for d in demands if d.explicit and d.deployment_id != new.deployment_id)
    free = max(0, capacity.cache_bytes - others)
    if new.total_bytes <= free:
        return None
    return (
        f"Could not start deployment because [cache_size] of [{format_bytes(new.requested_bytes)}] per node on "
        f"[{new.nodes}] node(s) does not fit in the Redis memory left to caches: [{format_bytes(free)}] free of "
        f"{capacity.describe()}, [{format_bytes(others)}] already given to other deployments' [cache_size]. "
        "Set a smaller [cache_size], omit it (the default is scaled to fit), or give Redis more memory"
    )


def demand_of(doc: Mapping[str, Any], nodes: int) -> CacheDemand:
    """The cache demand of one deployment document placed on ``nodes`` nodes."""
    return CacheDemand(
        deployment_id=str(doc["deployment_id"]),
        requested_bytes=int(doc.get("cache_size_bytes", 0)),
        nodes=nodes,
        explicit=bool(doc.get("cache_size_explicit", False)),
    )


@dataclass(frozen=True)
class CacheLimits:
    """What one (deployment, node) cache writer needs: its budget and Redis's ceiling."""

    budget_bytes: int
    memory_ceiling_bytes: int = 0

    @classmethod
    def of_doc(cls, doc: Mapping[str, Any]) -> CacheLimits:
        """From a deployment document (one written before budgets existed: as requested)."""
        budget = doc.get("cache_budget_bytes", doc.get("cache_size_bytes", 0))
        return cls(int(budget), int(doc.get("redis_memory_ceiling_bytes", 0)))
