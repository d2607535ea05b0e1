"""Deployment state in Redis.

Keys: ``inferq:deployment:<id>`` (JSON document: task parameters, planner targets, state),
``inferq:routes:<id>`` (hash: node id -> JSON route status, written by that node only),
the set ``inferq:deployments``, and ``inferq:state:version`` + the ``inferq:events``
channel, bumped/published on every change so gateways and nodes refresh at once.

The document is written only under the cluster lease (planner and control plane), so the
planner's targets and the control plane's changes never race; routes have one writer each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from shared import keys
from shared.pubsub import publish
from shared.redis_conn import text

ROUTING_STATES = ("starting", "started", "stopping", "stopped", "failed")


@dataclass(frozen=True)
class RouteStatus:
    routing_state: str
    current_allocations: int = 0
    reason: str = ""
    started_ms: int = 0
    threads_per_allocation: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(raw: bytes | str) -> RouteStatus:
        data = json.loads(raw)
        return RouteStatus(
            routing_state=str(data.get("routing_state", "starting")),
            current_allocations=int(data.get("current_allocations", 0)),
            reason=str(data.get("reason", "")),
            started_ms=int(data.get("started_ms", 0)),
            threads_per_allocation=int(data.get("threads_per_allocation", 0)),
        )


def _decode_routes(raw: Mapping[bytes | str, bytes | str]) -> dict[str, RouteStatus]:
    return {text(node): RouteStatus.from_json(value) for node, value in raw.items()}


class DeploymentStore:
    """Asyncio access (gateway, planner)."""

    def __init__(self, redis_client: aioredis.Redis) -> None:
        self.redis = redis_client

    async def get(self, deployment_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.deployment(deployment_id))
        return json.loads(raw) if raw is not None else None

    async def ids(self) -> list[str]:
        return sorted(text(d) for d in await self.redis.smembers(keys.DEPLOYMENTS))

    async def all(self) -> list[dict[str, Any]]:
        ids = await self.ids()
        if not ids:
            return []
        raws = await self.redis.mget([keys.deployment(d) for d in ids])
        return [json.loads(r) for r in raws if r is not None]

    async def put(self, doc: dict[str, Any]) -> None:
        deployment_id = doc["deployment_id"]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.deployment(deployment_id), json.dumps(doc))
            pipe.sadd(keys.DEPLOYMENTS, deployment_id)
            await pipe.execute()

    async def remove(self, deployment_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.deployment(deployment_id), keys.routes(deployment_id))
            pipe.srem(keys.DEPLOYMENTS, deployment_id)
            await pipe.execute()

    async def routes(self, deployment_id: str) -> dict[str, RouteStatus]:
        return _decode_routes(await self.redis.hgetall(keys.routes(deployment_id)))

    async def drop_route(self, deployment_id: str, node_id: str) -> None:
        await self.redis.hdel(keys.routes(deployment_id), node_id)

    async def bump(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(keys.STATE_VERSION)
            publish(pipe, keys.EVENTS, b"changed")
            await pipe.execute()


class SyncDeploymentStore:
    """Blocking access (worker nodes)."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self.redis = redis_client

    def ids(self) -> list[str]:
        return sorted(text(d) for d in self.redis.smembers(keys.DEPLOYMENTS))

    def all(self) -> list[dict[str, Any]]:
        ids = self.ids()
        if not ids:
            return []
        raws = self.redis.mget([keys.deployment(d) for d in ids])
        return [json.loads(r) for r in raws if r is not None]

    def set_route(self, deployment_id: str, node_id: str, status: RouteStatus) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.routes(deployment_id), node_id, status.to_json())
        pipe.incr(keys.STATE_VERSION)
        publish(pipe, keys.EVENTS, b"route")
        pipe.execute()

    def own_routes(self, deployment_ids: list[str], node_id: str) -> dict[str, RouteStatus | None]:
        """This node's route of each deployment, None where it is missing."""
        pipe = self.redis.pipeline(transaction=False)
        for deployment_id in deployment_ids:
            pipe.hget(keys.routes(deployment_id), node_id)
        raws = pipe.execute()
        return {d: None if r is None else RouteStatus.from_json(r) for d, r in zip(deployment_ids, raws, strict=True)}

    def drop_route(self, deployment_id: str, node_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(keys.routes(deployment_id), node_id)
        pipe.incr(keys.STATE_VERSION)
        publish(pipe, keys.EVENTS, b"route")
        pipe.execute()
