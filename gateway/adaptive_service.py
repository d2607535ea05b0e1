"""Adaptive allocations at work: read the deployments' node stats, run each scaler, apply.

Runs in the planner loop, under the cluster lease (``gateway.control.planner_loop``), at most
every ``interval_s``, and at once when a request reached a deployment that is at zero
allocations (``wake``). Per adaptive deployment it reads, for every node it has (targets,
routes, its standby node), the stats hash and both queue lengths in one pipeline, feeds the
difference to ``gateway.adaptive.AdaptiveScaler`` and, when the scaler asks for another count,
writes it to the document and re-plans (the nodes follow the targets as for ``_update``).

Scale to zero keeps a **standby node** in the document (``standby_node``): the node that last
ran it, where its definition is cached on disk. Producers send requests for a deployment with
no routable node there (``DeploymentView.cold_weights``), bounded by ``queue_capacity`` as
always; a waiting request makes the scaler go to ``max(1, min)``, and the planner puts that
allocation on the standby node (``demand_of`` counts it as the deployment's current node), so
the queued requests are served where they wait. If the planner must place it elsewhere, the
standby queue is moved to the new node.

Keys read: ``inferq:dn:{dep|node}:stats``, ``…:queue``, ``…:bulk:queue``; written: the
deployment documents (through ``ControlPlane``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.adaptive import AdaptiveScaler, NodeSample, ScalerConfig, window_of
from gateway.adaptive_settings import AdaptiveAllocations
from gateway.assignment import routable_allocations
from gateway.control import ControlPlane
from shared import histograms, node_registry, queue
from shared.redis_conn import text

log = logging.getLogger(__name__)


def adaptive_settings_of(doc: Mapping[str, Any]) -> AdaptiveAllocations | None:
    settings = AdaptiveAllocations.from_json(doc.get("adaptive_allocations"))
    return settings if settings is not None and settings.is_enabled else None


def sample_of(stats: Mapping[bytes | str, bytes | str], queued: int) -> NodeSample:
    fields = {text(k): float(v) for k, v in stats.items() if text(k) in _SAMPLE_FIELDS}
    # the allocations' busy time: their forward passes (shared.histograms), else the summed request time
    busy_s = fields.get(_FORWARD_SUM)
    busy_ms = busy_s * 1000 if busy_s is not None else fields.get("nohit_time_ms_sum", 0.0)
    return NodeSample(
        answered=int(fields.get("inference_count", 0)),
        failed=int(sum(fields.get(n, 0) for n in ("error_count", "timeout_count", "rejected_execution_count"))),
        pending=queued,
        busy_ms=busy_ms,
    )


_FORWARD_SUM = histograms.FORWARD_SECONDS.sum_field()
_SAMPLE_FIELDS = frozenset(
    ("inference_count", "error_count", "timeout_count", "rejected_execution_count", _FORWARD_SUM, "nohit_time_ms_sum")
)


def standby_for(doc: Mapping[str, Any], live: Sequence[str]) -> str | None:
    """Where a deployment at zero allocations waits: the node holding most of its allocations
    (its definition is on that node's disk), else its current standby, else the first live node."""
    targets: Mapping[str, int] = doc.get("targets", {})
    running = sorted((n for n, a in targets.items() if a > 0 and n in live), key=lambda n: (-targets[n], n))
    if running:
        return running[0]
    current = doc.get("standby_node")
    if isinstance(current, str) and current in live:
        return current
    return sorted(live)[0] if live else None


class AdaptiveService:
    def __init__(
        self,
        control: ControlPlane,
        config: ScalerConfig,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.control = control
        self.config = config
        self.interval_s = interval_s
        self.clock = clock
        self.wake = asyncio.Event()  # a request reached a deployment at zero allocations
        self.scalers: dict[str, AdaptiveScaler] = {}
        self._samples: dict[str, tuple[float, dict[str, NodeSample]]] = {}
        self._last_tick_s = 0.0

    def due(self) -> bool:
        return self.wake.is_set() or self.clock() - self._last_tick_s >= self.interval_s

    async def tick(self) -> None:
        """One pass over the adaptive deployments (the caller holds the cluster lease)."""
        self.wake.clear()
        now = self._last_tick_s = self.clock()
        docs = await self.control.deployments.all()
        adaptive = {
            d["deployment_id"]: d for d in docs if d.get("assignment_state") != "stopping" and adaptive_settings_of(d)
        }
        for gone in set(self.scalers) - set(adaptive):
            del self.scalers[gone]
            self._samples.pop(gone, None)
        if not adaptive:
            return
        nodes = await node_registry.live_nodes(self.control.redis)
        live = [n.node_id for n in nodes]
        processors = sum(n.processors for n in nodes)
        for deployment_id, doc in sorted(adaptive.items()):
            try:
                await self._tick_one(doc, docs, live, processors, now)
            except Exception as exc:  # one deployment's trouble must not stop the others
                log.warning("adaptive allocations of [%s]: %s", deployment_id, exc)

    async def _tick_one(
        self, doc: dict[str, Any], docs: Sequence[Mapping[str, Any]], live: Sequence[str], processors: int, now: float
    ) -> None:
        deployment_id = doc["deployment_id"]
        settings = adaptive_settings_of(doc)
        assert settings is not None
        count = int(doc["task_parameters"]["number_of_allocations"])
        threads = int(doc["task_parameters"]["threads_per_allocation"])
        routes = await self.control.deployments.routes(deployment_id)
        standby = doc.get("standby_node")
        node_ids = sorted(
            {n for n, a in doc.get("targets", {}).items() if a > 0} | set(routes) | ({standby} if standby else set())
        )
        current = await self._read(deployment_id, node_ids)
        previous_s, previous = self._samples.get(deployment_id, (now - self.interval_s, {}))
        self._samples[deployment_id] = (now, current)
        scaler = self.scalers.get(deployment_id)
        if scaler is None:
            scaler = self.scalers[deployment_id] = AdaptiveScaler(deployment_id, count, now, self.config)
        scaler.process(window_of(previous, current), max(now - previous_s, 1e-3), count, now)
        used_by_others = sum(
            sum(int(a) for a in d.get("targets", {}).values()) * int(d["task_parameters"]["threads_per_allocation"])
            for d in docs
            if d["deployment_id"] != deployment_id and d.get("task_parameters", {}).get("priority", "normal") != "low"
        )
        capacity = max(0, processors - used_by_others) // max(1, threads)
        if routable_allocations(routes) < count:
            # allocations still loading: neither idle time nor a verdict on the load yet
            scaler.last_request_s = now
            return
        wanted = scaler.decide(settings.min_allocations, settings.max_allocations, capacity, now)
        if count == 0 and wanted is None and standby not in live:
            await self._scale(doc, 0, live)  # the standby node died: pick a live one
            return
        if wanted is not None:
            log.info("adaptive allocations: [%s] from %d to %d allocations", deployment_id, count, wanted)
            await self._scale(doc, wanted, live)

    async def _read(self, deployment_id: str, node_ids: Sequence[str]) -> dict[str, NodeSample]:
        if not node_ids:
            return {}
        read = await queue.arun(self.control.redis, queue.samples(deployment_id, node_ids))
        return {node: sample_of(s.stats, s.queued) for node, s in read.items()}

    async def _scale(self, doc: dict[str, Any], allocations: int, live: Sequence[str]) -> None:
        """Set the count and re-plan, as an ``_update`` would (the lease is held)."""
        deployment_id = doc["deployment_id"]
        updated = json.loads(json.dumps(doc))
        updated["task_parameters"]["number_of_allocations"] = allocations
        if allocations == 0:
            standby = standby_for(doc, live)
            if standby is not None:
                updated["standby_node"] = standby
        others = [d for d in await self.control.deployments.all() if d["deployment_id"] != deployment_id]
        result = await self.control.plan_with(others + [updated])
        targets = result.allocations.get(deployment_id, {})
        placed = sum(targets.values())
        if 0 < placed < allocations:
            updated["task_parameters"]["number_of_allocations"] = placed  # what the processors hold
            result.reasons.pop(deployment_id, None)
        old_standby = updated.get("standby_node")
        if placed > 0 and old_standby not in targets:
            updated["standby_node"] = standby_for(updated | {"targets": targets}, live)
        docs = others + [updated]
        await self.control.apply_plan(docs, result)
        if placed > 0 and isinstance(old_standby, str) and old_standby not in targets:
            heir = updated.get("standby_node")
            if isinstance(heir, str):  # requests that waited on the old standby node go along
                await self.control.hand_over(deployment_id, old_standby, heir)
