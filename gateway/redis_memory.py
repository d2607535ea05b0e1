"""Reads what ``shared.redis_budget`` accounts: Redis's ``maxmemory`` (``INFO memory``, which
managed Redis services answer where ``CONFIG`` is disabled) and the bytes of the stored models.

Redis keys read: ``inferq:models``, each model's ``{model:<id>}:parts`` hash and the length of
its ``{model:<id>}:vocabulary``. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from shared import keys
from shared.redis_budget import RedisCapacity
from shared.redis_conn import text


@dataclass(frozen=True)
class RedisMemorySettings:
    """``INFERQ_REDIS_MEMORY`` (the limit where Redis has no maxmemory) and
    ``INFERQ_REDIS_RESERVE`` (what queues and state keep; 0: the default share)."""

    memory_bytes: int = 0
    reserve_bytes: int = 0


async def stored_models_bytes(client: aioredis.Redis) -> int:
    """Definition parts and vocabularies of every stored model, as recorded (one round trip after
    the model list)."""
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
        total += sum(int(v) for f, v in parts.items() if text(f).isdigit()) + int(vocabulary_bytes or 0)
    return total


async def read_capacity(client: aioredis.Redis, settings: RedisMemorySettings) -> RedisCapacity:
    memory = await client.info("memory")
    return RedisCapacity.of(
        maxmemory_bytes=int(memory.get("maxmemory", 0)),
        setting_bytes=settings.memory_bytes,
        models_bytes=await stored_models_bytes(client),
        reserve_setting_bytes=settings.reserve_bytes,
    )
