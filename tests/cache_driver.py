"""The result cache of one (deployment, node), reached the way the service reaches it.

There is no cache client in the service: the gateway's ``DISPATCH`` reads the cache and the
worker's ``COMPLETE`` fills it (``shared.queue``). Tests and benchmarks drive those same scripts
through the typed calls: ``get`` is a ``DISPATCH`` with ``capacity=0`` (a lookup: a miss queues
nothing), ``put`` a ``COMPLETE`` of an empty batch carrying one result to cache. ``footprint``
compares the accounting with ``MEMORY USAGE`` of the cache's three keys (no SCAN).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shared import keys, queue
from shared.cache import CacheStats, Policy, parse_meta

ALLOCATION = "t0"  # the processing list the test's COMPLETE acknowledges (empty)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class CacheFootprint:
    """The accounting against what Redis reports."""

    accounted_bytes: int = 0  # meta.bytes
    recorded_bytes: int = 0  # sum of the per-entry footprints recorded in the index
    entries: int = 0  # meta.entries
    indexed_entries: int = 0  # ZCARD of the index
    stored_entries: int = 0  # HLEN of the entries hash
    redis_bytes: int = 0  # sum of MEMORY USAGE (SAMPLES 0) over the cache's keys


class _Base:
    def __init__(
        self,
        deployment_id: str,
        node_id: str,
        *,
        budget_bytes: int,
        policy: Policy = "lfu",
        memory_ceiling_bytes: int = 0,
    ) -> None:
        self.deployment_id = deployment_id
        self.node_id = node_id
        self.budget_bytes = budget_bytes
        self.policy: Policy = policy
        self.memory_ceiling_bytes = memory_ceiling_bytes

    def _get(self, digest: str, at_ms: int | None) -> queue.Ops[bytes | None]:
        outcome = yield from queue.dispatch(
            self.deployment_id, self.node_id, digest=digest, payload=b"", capacity=0,
            now_ms=now_ms() if at_ms is None else at_ms, policy=self.policy,
        )  # fmt: skip
        return outcome.value

    def _put(self, digest: str, value: bytes, at_ms: int | None) -> queue.Ops[bool]:
        completion = queue.Completion(
            budget_bytes=self.budget_bytes, policy=self.policy, now_ms=now_ms() if at_ms is None else at_ms,
            start_ms=0, results=0, time_ms_sum=0, errors=0, memory_ceiling_bytes=self.memory_ceiling_bytes,
            cache_pairs=(digest, value),
        )  # fmt: skip
        yield from queue.complete(self.deployment_id, self.node_id, ALLOCATION, completion)
        return bool((yield queue.Command(("HEXISTS", keys.cache_entries(self.deployment_id, self.node_id), digest))))

    def _stats(self) -> queue.Ops[CacheStats]:
        raw = yield queue.Command(("HGETALL", keys.cache_meta(self.deployment_id, self.node_id)))
        return parse_meta(raw, self.budget_bytes)

    def _footprint(self) -> queue.Ops[CacheFootprint]:
        accounted, recorded, entries, indexed = yield from queue.audit(self.deployment_id, self.node_id)
        d, n = self.deployment_id, self.node_id
        usages = yield queue.Batch(tuple(
            queue.Command(("MEMORY", "USAGE", key, "SAMPLES", 0))
            for key in (keys.cache_index(d, n), keys.cache_meta(d, n), keys.cache_entries(d, n))
        ))  # fmt: skip
        stored = yield queue.Command(("HLEN", keys.cache_entries(d, n)))
        return CacheFootprint(accounted, recorded, entries, indexed, int(stored), sum(int(u or 0) for u in usages))


class SyncCache(_Base):
    def __init__(self, client: Any, deployment_id: str, node_id: str, **kwargs: Any) -> None:
        super().__init__(deployment_id, node_id, **kwargs)
        self.redis = client

    def get(self, digest: str, at_ms: int | None = None) -> bytes | None:
        return queue.run(self.redis, self._get(digest, at_ms))

    def put(self, digest: str, value: bytes, at_ms: int | None = None) -> bool:
        return queue.run(self.redis, self._put(digest, value, at_ms))

    def clear(self) -> int:
        return queue.run(self.redis, queue.clear(self.deployment_id, self.node_id))

    def stats(self) -> CacheStats:
        return queue.run(self.redis, self._stats())

    def footprint(self) -> CacheFootprint:
        return queue.run(self.redis, self._footprint())


class AsyncCache(_Base):
    def __init__(self, client: Any, deployment_id: str, node_id: str, **kwargs: Any) -> None:
        super().__init__(deployment_id, node_id, **kwargs)
        self.redis = client

    async def get(self, digest: str, at_ms: int | None = None) -> bytes | None:
        return await queue.arun(self.redis, self._get(digest, at_ms))

    async def put(self, digest: str, value: bytes, at_ms: int | None = None) -> bool:
        return await queue.arun(self.redis, self._put(digest, value, at_ms))

    async def clear(self) -> int:
        return await queue.arun(self.redis, queue.clear(self.deployment_id, self.node_id))

    async def stats(self) -> CacheStats:
        return await queue.arun(self.redis, self._stats())

    async def footprint(self) -> CacheFootprint:
        return await queue.arun(self.redis, self._footprint())
