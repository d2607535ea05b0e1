"""Reads what ``shared.redis_budget`` accounts: Redis's ``maxmemory`` and ``used_memory``
(``INFO memory``, which managed Redis services answer where ``CONFIG`` is disabled), the bytes
of the stored models and of the caches.

Redis keys read: ``inferq:models``, each model's ``{model:<id>}:parts`` hash and the length of
its ``{model:<id>}:vocabulary``, each (deployment, node) cache's ``meta`` hash (its bytes), and
``INFO memory``. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared import keys, queue
from shared.redis_budget import RedisCapacity, string_bytes
from shared.redis_conn import masters_info, text


@dataclass(frozen=True)
class RedisMemorySettings:
    """``INFERQ_REDIS_MEMORY`` (the limit where Redis has no maxmemory) and
    ``INFERQ_REDIS_RESERVE`` (what queues and state keep; 0: the default share)."""

    memory_bytes: int = 0
    reserve_bytes: int = 0


async def stored_models_bytes(client: aioredis.Redis) -> int:
    """Definition parts and vocabularies of every stored model, as Redis's allocator holds them
    (from the recorded lengths: one round trip after the model list)."""
    model_ids = [text(m) for m in await client.smembers(keys.MODELS)]  # type: ignore[misc]
    if not model_ids:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for model_id in model_ids:
            pipe.hgetall(keys.model_parts_meta(model_id))
            pipe.strlen(keys.model_vocabulary(model_id))
        replies = await pipe.execute()
    total = 0
    for parts, vocabulary_bytes in zip(replies[::2], replies[1::2], strict=True):
        total += sum(string_bytes(int(v)) for f, v in parts.items() if text(f).isdigit())
        total += string_bytes(int(vocabulary_bytes or 0))
    return total


async def caches_bytes(client: aioredis.Redis, placements: Iterable[tuple[str, str]]) -> int:
    """The bytes the (deployment, node) caches account for now (their ``meta.bytes``)."""
    pairs = list(placements)
    if not pairs:
        return 0
    metas = await queue.arun(client, queue.cache_meta(pairs, ("bytes",)))
    return sum(int(float(meta[0])) for meta in metas if meta[0] is not None)


async def read_capacity(
    client: aioredis.Redis, settings: RedisMemorySettings, placements: Iterable[tuple[str, str]] = ()
) -> RedisCapacity:
    """Redis's capacity for caches; ``placements``: every (deployment, node) that may hold a cache."""
    models = await stored_models_bytes(client)
    caches = await caches_bytes(client, placements)
    # a Redis Cluster: the masters' figures summed (models and caches spread over the shards by
    # their hash tags; one shard can fill before the sum does: docs/protocol.md)
    masters = await masters_info(client, "memory")
    maxmemory = 0 if any(int(m.get("maxmemory", 0)) == 0 for m in masters) else sum(int(m["maxmemory"]) for m in masters)
    return RedisCapacity.of(
        maxmemory_bytes=maxmemory,
        setting_bytes=settings.memory_bytes,
        models_bytes=models,
        reserve_setting_bytes=settings.reserve_bytes,
        # client buffers carry requests and replies in flight: the reserve is there for them
        used_memory_bytes=sum(int(m.get("used_memory", 0)) - int(m.get("mem_clients_normal", 0)) for m in masters),
        caches_bytes=caches,
    )
