"""Inference endpoints (``_inference``) and model aliases in Redis.

Keys: ``inferq:inference:endpoint:<id>`` (JSON document: ``inference_id``, ``task_type``,
``service``, ``service_settings``, optional ``task_settings`` / ``chunking_settings``, and the
private ``_created_deployment`` flag), the set ``inferq:inference:endpoints`` listing every id
(listing reads the set, never SCAN), and the hash ``inferq:model_aliases`` (alias -> model id).

Creating an endpoint is one ``SET NX`` with its ``SADD`` in the same MULTI, so two gateways
racing on one id cannot both win. Alias changes bump ``inferq:state:version`` and publish on
``inferq:events`` so every gateway's cluster view (which resolves aliases on the ``_infer``
hot path) reloads at once.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from shared import keys
from shared.errors import ResourceAlreadyExists
from shared.pubsub import publish
from shared.redis_conn import text


class EndpointStore:
    """Asyncio access to the inference endpoint documents (gateway)."""

    def __init__(self, redis_client: aioredis.Redis) -> None:
        self.redis = redis_client

    async def get(self, inference_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.inference_endpoint(inference_id))
        return json.loads(raw) if raw is not None else None

    async def all(self) -> list[dict[str, Any]]:
        """Every endpoint, sorted by id."""
        ids = sorted(text(i) for i in await self.redis.smembers(keys.INFERENCE_ENDPOINTS))
        if not ids:
            return []
        raws = await self.redis.mget([keys.inference_endpoint(i) for i in ids])
        return [json.loads(r) for r in raws if r is not None]

    async def create(self, doc: dict[str, Any]) -> None:
        inference_id = str(doc["inference_id"])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.inference_endpoint(inference_id), json.dumps(doc), nx=True)
            pipe.sadd(keys.INFERENCE_ENDPOINTS, inference_id)
            created, _ = await pipe.execute()
        if not created:
            raise ResourceAlreadyExists(f"Inference endpoint [{inference_id}] already exists")

    async def replace(self, doc: dict[str, Any]) -> None:
        await self.redis.set(keys.inference_endpoint(str(doc["inference_id"])), json.dumps(doc), xx=True)

    async def delete(self, inference_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.inference_endpoint(inference_id))
            pipe.srem(keys.INFERENCE_ENDPOINTS, inference_id)
            await pipe.execute()


class AliasStore:
    """Model aliases: one hash, alias -> model id."""

    def __init__(self, redis_client: aioredis.Redis) -> None:
        self.redis = redis_client

    async def all(self) -> dict[str, str]:
        return {text(a): text(m) for a, m in (await self.redis.hgetall(keys.MODEL_ALIASES)).items()}

    async def get(self, alias: str) -> str | None:
        raw = await self.redis.hget(keys.MODEL_ALIASES, alias)
        return text(raw) if raw is not None else None

    async def put(self, alias: str, model_id: str, *, only_new: bool) -> bool:
        """Point ``alias`` at ``model_id``; with ``only_new`` only when the alias is free
        (``HSETNX``: a concurrent put cannot slip in between check and write). Returns
        whether it was written."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if only_new:
                pipe.hsetnx(keys.MODEL_ALIASES, alias, model_id)
            else:
                pipe.hset(keys.MODEL_ALIASES, alias, model_id)
            pipe.incr(keys.STATE_VERSION)
            publish(pipe, keys.EVENTS, b"alias")
            written, _, _ = await pipe.execute()
        return bool(written) or not only_new

    async def delete(self, *aliases: str) -> None:
        if not aliases:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.MODEL_ALIASES, *aliases)
            pipe.incr(keys.STATE_VERSION)
            publish(pipe, keys.EVENTS, b"alias")
            await pipe.execute()


def aliases_of(aliases: dict[str, str], model_id: str) -> list[str]:
    return sorted(a for a, m in aliases.items() if m == model_id)
