"""A process-local, refreshed view of deployments and their routes (read side of the cluster).

Producers route every request from this view, so the hot path reads no cluster state from
Redis: the view reloads when ``inferq:events`` announces a change, and every
``refresh_s`` in case a message was missed. Each reload also reads the alive keys of the
routed nodes: a node that is suspect (beat late, process stalled: ``node_registry.suspect``)
gets no new requests while another node can take them, before the planner declares it dead. The alias hash (``inferq:model_aliases``) is read
with the documents, so aliases resolve without a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from shared import keys
from shared.deployment_store import RouteStatus
from shared.node_registry import suspect_nodes
from shared.pubsub import Subscription
from shared.redis_conn import text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeploymentView:
    doc: dict[str, Any]
    routes: dict[str, RouteStatus]
    suspect: frozenset[str] = frozenset()  # nodes to avoid while others can serve

    @property
    def deployment_id(self) -> str:
        return str(self.doc["deployment_id"])

    @property
    def model_id(self) -> str:
        return str(self.doc["model_id"])

    @property
    def state(self) -> str:
        return str(self.doc.get("assignment_state", "starting"))

    @property
    def queue_capacity(self) -> int:
        return int(self.doc["task_parameters"]["queue_capacity"])

    @property
    def cache_size_bytes(self) -> int:
        return int(self.doc.get("cache_size_bytes", 0))

    @property
    def cache_policy(self) -> str:
        return str(self.doc.get("cache_policy", "lfu"))

    def routable_weights(self) -> dict[str, int]:
        """Nodes that take new requests: route started, allocations > 0, still targeted, and not
        suspect (unless every such node is)."""
        targets: dict[str, int] = self.doc.get("targets", {})
        weights = {
            node: route.current_allocations
            for node, route in self.routes.items()
            if route.routing_state == "started" and route.current_allocations > 0 and targets.get(node, 0) > 0
        }
        healthy = {node: w for node, w in weights.items() if node not in self.suspect}
        return healthy or weights

    def cold_weights(self) -> dict[str, int]:
        """Where a request waits when no node is routable: the standby node of a deployment
        with adaptive allocations (scaled to zero, or scaling up from it). Its queue is bounded
        as any other; the scaler sees the waiting request and starts an allocation there."""
        adaptive = self.doc.get("adaptive_allocations") or {}
        standby = self.doc.get("standby_node")
        if adaptive.get("enabled") is True and isinstance(standby, str) and standby:
            return {standby: 1}
        return {}

    def start_ms(self, node_id: str) -> int:
        route = self.routes.get(node_id)
        return route.started_ms if route and route.started_ms else int(self.doc.get("start_time_ms", 0))


@dataclass
class ClusterView:
    deployments: dict[str, DeploymentView] = field(default_factory=dict)
    by_model: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # model alias -> model id

    def model_id(self, model_id_or_alias: str) -> str:
        """A model alias resolved to its model id; anything else unchanged."""
        return self.aliases.get(model_id_or_alias, model_id_or_alias)

    def resolve(self, model_or_deployment_id: str) -> DeploymentView | None:
        """A deployment id, else a model id or alias: one of the model's deployments, a started
        one (routable now) first, as Elasticsearch picks among started deployments."""
        view = self.deployments.get(model_or_deployment_id)
        if view is not None:
            return view
        ids = self.by_model.get(self.model_id(model_or_deployment_id), [])
        if len(ids) == 1:
            return self.deployments[ids[0]]
        for deployment_id in ids:
            candidate = self.deployments[deployment_id]
            if candidate.state not in ("stopping", "failed") and candidate.routable_weights():
                return candidate
        return self.deployments[ids[0]] if ids else None


async def load_view(client: aioredis.Redis) -> ClusterView:
    ids = sorted(text(d) for d in await client.smembers(keys.DEPLOYMENTS))
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.MODEL_ALIASES)
        for deployment_id in ids:
            pipe.get(keys.deployment(deployment_id))
            pipe.hgetall(keys.routes(deployment_id))
        aliases, *replies = await pipe.execute()
    loaded: list[tuple[dict[str, Any], dict[str, RouteStatus]]] = []
    for i, _ in enumerate(ids):
        raw_doc, raw_routes = replies[2 * i], replies[2 * i + 1]
        if raw_doc is None:
            continue
        loaded.append((json.loads(raw_doc), {text(n): RouteStatus.from_json(v) for n, v in raw_routes.items()}))
    suspects = await suspect_nodes(client, sorted({n for _, routes in loaded for n in routes}))
    view = ClusterView(aliases={text(a): text(m) for a, m in aliases.items()})
    for doc, routes in loaded:
        dv = DeploymentView(doc, routes, suspects)
        view.deployments[dv.deployment_id] = dv
        view.by_model.setdefault(dv.model_id, []).append(dv.deployment_id)
    return view


class ViewWatcher:
    """Keeps a ``ClusterView`` fresh: pub/sub wake-ups plus a periodic reload."""

    def __init__(self, client: aioredis.Redis, pubsub_client: aioredis.Redis, refresh_s: float = 1.0) -> None:
        self.client = client
        self.pubsub_client = pubsub_client
        self.refresh_s = refresh_s
        self.view = ClusterView()
        self._changed = asyncio.Event()
        self.node_events = asyncio.Event()  # set on a node joining or leaving (the planner waits on it)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self.view = await load_view(self.client)
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._reload_loop())]

    async def refresh(self) -> ClusterView:
        self.view = await load_view(self.client)
        return self.view

    async def close(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                async with Subscription(self.pubsub_client, keys.EVENTS) as events:
                    while not self._stopping:
                        message = await events.get(timeout_s=1.0)
                        if message is not None:
                            self._changed.set()
                            if message == b"node":
                                self.node_events.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: retry, the periodic reload covers the gap
                log.warning("event subscription failed: %s", exc)
                await asyncio.sleep(0.5)

    async def _reload_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.refresh_s)
            self._changed.clear()
            try:
                self.view = await load_view(self.client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster view reload failed: %s", exc)
                await asyncio.sleep(0.2)
