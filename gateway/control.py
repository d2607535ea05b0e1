"""The control plane: start, stop and update deployments, and re-plan the cluster.

Every change of a deployment document happens under the cluster lease, so any number of
gateways can serve these calls (and run the planner loop) against one Redis. Nodes only
write their own routes; they react to the documents (see ``workers.node``).

Self-healing, in the planner pass: a dead node's queue and in-flight requests go to a live
node (in-flight ones count a delivery, ``REQUEUE_COUNTED``); the queue of a node that is alive
but stalled (``node_registry.suspect``) goes to a healthy one; a ``_stop`` whose gateway died
before finishing it is finished. Every control operation writes each document whole, so one
interrupted half way leaves documents the next pass re-plans as they are.

The planner counts what it does in ``keys.METRICS_PLANNER`` (hash: ``pass``, ``retarget``,
``reap_node``, ``requeue``), which ``GET /metrics`` reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from gateway.adaptive_settings import AdaptiveAllocations, merged_for_update
from gateway.assignment import assignment_state, render_assignment, wait_satisfied
from gateway.lease import cluster_lease
from gateway.planner import DeploymentDemand, NodeCapacity, Plan, estimate_memory_bytes, plan
from gateway.redis_memory import RedisMemorySettings, read_capacity
from gateway.request_metrics import forget_deployment
from gateway.start_params import StartParams
from shared import keys, node_registry, queue, task_config
from shared.deployment_store import DeploymentStore
from shared.errors import (
    BadRequest,
    Conflict,
    InferenceFailed,
    NotFound,
    RequestTimeout,
    TooManyRequests,
    deployment_not_found,
)
from shared.model_store import ModelStore
from shared.redis_budget import CacheBudget, CacheDemand, RedisCapacity, explicit_refusal, plan_cache_budgets
from shared.redis_budget import demand_of as cache_demand_of
from shared.redis_conn import text
from shared.units import format_bytes, format_time_ms

log = logging.getLogger(__name__)

MAX_DEPLOYMENTS = 100
STOPPING_REASON = "inference canceled as process is stopping"
STOP_TIMEOUT_S = 30.0  # how long _stop waits for the nodes to let go
# a stop the planner finishes itself: nothing live still routes it after this long (its
# gateway died before the end), or whatever is left after the stop's own timeout
ORPHANED_STOP_AFTER_S = 5.0


def now_ms() -> int:
    return int(time.time() * 1000)


def demand_of(doc: Mapping[str, Any], live: set[str]) -> DeploymentDemand:
    params = doc["task_parameters"]
    return DeploymentDemand(
        deployment_id=doc["deployment_id"],
        allocations=int(params["number_of_allocations"]),
        threads_per_allocation=int(params["threads_per_allocation"]),
        memory_bytes=int(doc["memory_bytes"]),
        priority=str(params.get("priority", "normal")),
        current=_current_allocations(doc, live),
        max_assigned_allocations=int(doc.get("max_assigned_allocations", 0)),
    )


@dataclass(frozen=True)
class CachePlan:
    """Redis's capacity for caches and every deployment's per-node cache budget."""

    capacity: RedisCapacity
    demands: list[CacheDemand]
    budgets: dict[str, CacheBudget]


def _close(new_bytes: int, old_bytes: Any) -> bool:
    """Whether a recomputed cache budget is within 1/16 of the stored one (what Redis uses besides
    models and caches moves a little on every pass: the documents are not rewritten for that)."""
    if not isinstance(old_bytes, int) or old_bytes <= 0 or new_bytes <= 0:
        return False
    return abs(new_bytes - old_bytes) <= old_bytes // 16


def _current_allocations(doc: Mapping[str, Any], live: set[str]) -> dict[str, int]:
    """Where the deployment runs now; a deployment adaptive allocations scaled to zero counts
    its standby node (``gateway.adaptive_service``), so scaling up lands where requests wait."""
    current = {n: int(a) for n, a in doc.get("targets", {}).items() if n in live and int(a) > 0}
    standby = doc.get("standby_node")
    if not current and isinstance(standby, str) and standby in live:
        current = {standby: 1}
    return current


class ControlPlane:
    def __init__(self, client: aioredis.Redis, redis_memory: RedisMemorySettings | None = None) -> None:
        self.redis = client
        self.redis_memory = redis_memory or RedisMemorySettings()
        self.models = ModelStore(client)
        self.deployments = DeploymentStore(client)

    # ---- start -------------------------------------------------------------------------------

    async def start(self, params: StartParams) -> dict[str, Any]:
        config = await self.models.get_config(params.model_id)
        if config.get("model_type", "pytorch") != "pytorch":
            raise BadRequest(
                f"model [{params.model_id}] of type [{config.get('model_type')}] cannot be deployed. "
                "Only PyTorch models can be deployed"
            )
        if params.deployment_id != params.model_id and await self.models.exists(params.deployment_id):
            raise BadRequest(
                f"Deployment id [{params.deployment_id}] is the same as an another model which is not the "
                f"model being deployed. Deployment id can be the same as the model being deployed."
            )
        status = await self.models.definition_status(params.model_id)
        if status is None:
            raise NotFound(f"Could not find trained model definition [{params.model_id}]")
        if not status.complete:
            raise BadRequest(
                f"Model definition truncated. Unable to deserialize trained model definition [{params.model_id}]"
            )
        sha256 = await self.models.checked_definition(params.model_id, status)  # 400 if refused
        model_bytes = status.total_definition_length
        metadata = config.get("metadata") or {}
        cache_bytes = model_bytes if params.cache_size_bytes is None else params.cache_size_bytes
        doc: dict[str, Any] = {
            "deployment_id": params.deployment_id,
            "model_id": params.model_id,
            "task_parameters": {
                "model_id": params.model_id,
                "deployment_id": params.deployment_id,
                "model_bytes": model_bytes,
                "threads_per_allocation": params.threads_per_allocation,
                "number_of_allocations": params.number_of_allocations,
                "queue_capacity": params.queue_capacity,
                "cache_size": params.cache_size_text or f"{model_bytes}b",
                "priority": params.priority,
                "per_deployment_memory_bytes": int(metadata.get("per_deployment_memory_bytes", 0)),
                "per_allocation_memory_bytes": int(metadata.get("per_allocation_memory_bytes", 0)),
            },
            "cache_size_bytes": cache_bytes,
            "cache_size_explicit": params.cache_size_bytes is not None,
            "cache_policy": "lfu",
            "quantization": params.quantization,
            "memory_bytes": estimate_memory_bytes(
                model_bytes,
                per_deployment_memory_bytes=int(metadata.get("per_deployment_memory_bytes", 0)),
                per_allocation_memory_bytes=int(metadata.get("per_allocation_memory_bytes", 0)),
                allocations=params.number_of_allocations,
                cache_size_bytes=params.cache_size_bytes,
            ),
            "inference_config": config["inference_config"],
            "task_type": task_config.task_type(config["inference_config"]),
            "field_names": (config.get("input") or {}).get("field_names") or ["text_field"],
            "model_sha256": sha256,
            "model_uid": config.get("_uid", ""),
            "uid": secrets.token_hex(8),
            "targets": {},
            "assignment_state": "starting",
            "start_time_ms": now_ms(),
            "max_assigned_allocations": 0,
        }
        if params.adaptive_allocations is not None:
            doc["adaptive_allocations"] = params.adaptive_allocations.to_json()
        async with cluster_lease(self.redis):
            if await self.deployments.get(params.deployment_id) is not None:
                raise BadRequest(
                    "Could not start model deployment because an existing deployment with the same id "
                    f"[{params.deployment_id}] exist"
                )
            if len(await self.deployments.ids()) >= MAX_DEPLOYMENTS:
                raise TooManyRequests(
                    "Could not start model deployment because existing deployments reached the limit of "
                    f"[{MAX_DEPLOYMENTS}]"
                )
            others = await self.deployments.all()
            result = await self.plan_with(others + [doc])
            placed = sum(result.allocations.get(params.deployment_id, {}).values())
            if placed == 0:
                reason = result.reasons.get(params.deployment_id, "No ML nodes exist in the cluster")
                raise TooManyRequests(
                    "Could not start deployment because no ML nodes with sufficient capacity were found",
                    caused_by=BadRequest(
                        "Could not start deployment because no suitable nodes were found, allocation "
                        f"explanation [{reason}]",
                        error_type="illegal_state_exception",
                    ),
                )
            if placed < params.number_of_allocations:
                raise TooManyRequests(
                    "Could not start deployment because there are not enough resources to provide all "
                    "requested allocations"
                )
            caches = await self._cache_plan(others + [doc], result)
            mine = next(d for d in caches.demands if d.deployment_id == params.deployment_id)
            refusal = explicit_refusal(caches.capacity, caches.demands, mine)
            if refusal is not None:
                raise TooManyRequests(refusal)
            await self._apply(others + [doc], result, caches)
        return await self.wait_for_start(params.deployment_id, params.wait_for, params.timeout_ms)

    async def wait_for_start(self, deployment_id: str, wait_for: str, timeout_ms: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            doc = await self.deployments.get(deployment_id)
            if doc is None:
                raise BadRequest(
                    "Error waiting for the model deployment to start. The trained model assignment was "
                    "removed while waiting"
                )
            routes = await self.deployments.routes(deployment_id)
            failed = {n: r.reason for n, r in routes.items() if r.routing_state == "failed"}
            if failed:
                await self._remove(deployment_id)
                detail = ", ".join(f"{n}={reason}" for n, reason in sorted(failed.items()))
                raise InferenceFailed(
                    "Could not start trained model deployment, the following nodes failed with errors "
                    f"[{{{detail}}}]"
                )
            if wait_satisfied(wait_for, doc, routes):
                return render_assignment(doc, routes)
            targets = {n for n, a in doc.get("targets", {}).items() if a > 0}
            if targets and all(
                n in routes and routes[n].routing_state == "started" for n in targets
            ) and wait_for != "starting":
                return render_assignment(doc, routes)  # nothing still starting: ES returns early
            if time.monotonic() >= deadline:
                raise RequestTimeout(
                    f"Timed out after [{format_time_ms(timeout_ms)}] waiting for trained model deployment "
                    f"[{deployment_id}] to start. Use the trained model stats API to track the state of the "
                    "deployment and try again once it has started."
                )
            await asyncio.sleep(0.05)

    async def assignment(self, deployment_id: str) -> dict[str, Any]:
        doc = await self.deployments.get(deployment_id)
        if doc is None:
            raise deployment_not_found(deployment_id)
        return render_assignment(doc, await self.deployments.routes(deployment_id))

    # ---- update ------------------------------------------------------------------------------

    async def update(
        self,
        deployment_id: str,
        number_of_allocations: int | None,
        adaptive_allocations: AdaptiveAllocations | None = None,
    ) -> dict[str, Any]:
        """``adaptive_allocations``: the request's settings (merged into the stored ones;
        ``adaptive_settings.RESET`` removes them), None when the request has none."""
        async with cluster_lease(self.redis):
            doc = await self.deployments.get(deployment_id)
            if doc is None:
                raise deployment_not_found(deployment_id)
            stored = AdaptiveAllocations.from_json(doc.get("adaptive_allocations"))
            adaptive = merged_for_update(stored, adaptive_allocations, number_of_allocations)
            routes = await self.deployments.routes(deployment_id)
            params = doc["task_parameters"]
            count_changes = number_of_allocations is not None and number_of_allocations != params["number_of_allocations"]
            if not count_changes and adaptive == stored:
                return render_assignment(doc, routes)
            if assignment_state(doc, routes) != "started":
                raise Conflict("cannot update deployment that is not in [started] state")
            if params.get("priority") == "low" and number_of_allocations is not None and number_of_allocations > 1:
                raise BadRequest("[number_of_allocations] must be 1 when [priority] is low", error_type="validation_exception")
            updated = json.loads(json.dumps(doc))
            if adaptive is None:
                updated.pop("adaptive_allocations", None)
            else:
                updated["adaptive_allocations"] = adaptive.to_json()
            if not count_changes:
                await self.deployments.put(updated)
                await self.deployments.bump()
                return render_assignment(updated, routes)
            assert number_of_allocations is not None
            updated["task_parameters"]["number_of_allocations"] = number_of_allocations
            others = [d for d in await self.deployments.all() if d["deployment_id"] != deployment_id]
            result = await self.plan_with(others + [updated])
            placed = sum(result.allocations.get(deployment_id, {}).values())
            if placed < number_of_allocations:
                raise TooManyRequests(
                    "Could not update deployment because there are not enough resources to provide all "
                    "requested allocations"
                )
            await self.apply_plan(others + [updated], result)
        return render_assignment(updated | {"targets": result.allocations.get(deployment_id, {})}, routes)

    # ---- stop --------------------------------------------------------------------------------

    async def stop(self, deployment_id: str, *, finish_pending_work: bool, timeout_s: float = STOP_TIMEOUT_S) -> None:
        async with cluster_lease(self.redis):
            doc = await self.deployments.get(deployment_id)
            if doc is None:
                raise deployment_not_found(deployment_id)
            doc["assignment_state"] = "stopping"
            doc["stopping_since_ms"] = now_ms()  # the planner finishes a stop whose gateway died
            doc["finish_pending_work"] = finish_pending_work
            doc["targets"] = {}
            await self.deployments.put(doc)
            await self.deployments.bump()
        if not finish_pending_work:
            await self.cancel_queued(deployment_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = {n.node_id for n in await node_registry.live_nodes(self.redis)}
            routes = await self.deployments.routes(deployment_id)
            if not any(node in live for node in routes):
                break
            await asyncio.sleep(0.05)
        await self.cancel_queued(deployment_id)  # whatever a dead node left behind
        await self._remove(deployment_id)

    async def cancel_queued(self, deployment_id: str) -> int:
        """Answer every queued (not yet running) request of the deployment with an error."""
        cancelled = 0
        error = {"status": 409, "type": "status_exception", "reason": STOPPING_REASON}
        for node in sorted(text(n) for n in await self.redis.smembers(keys.deployment_nodes(deployment_id))):
            cancelled += await queue.arun(self.redis, queue.cancel(deployment_id, node, error))
        return cancelled

    async def _remove(self, deployment_id: str) -> None:
        """Delete every per-node key of the deployment, found through its indexes."""
        nodes = sorted(text(n) for n in await self.redis.smembers(keys.deployment_nodes(deployment_id)))
        for node in nodes:
            await queue.arun(self.redis, queue.drop(deployment_id, node))
        await self.redis.unlink(keys.deployment_nodes(deployment_id))
        await self.deployments.remove(deployment_id)
        await forget_deployment(self.redis, deployment_id)  # its request counters end with it
        await self.deployments.bump()

    # ---- planning ----------------------------------------------------------------------------

    async def plan_with(self, docs: list[dict[str, Any]]) -> Plan:
        """The planner's placement of ``docs`` on the live nodes (pure ``gateway.planner``)."""
        nodes = await node_registry.live_nodes(self.redis)
        live = {n.node_id for n in nodes}
        capacities = [NodeCapacity(n.node_id, n.processors, n.memory_bytes) for n in nodes]
        demands = [demand_of(d, live) for d in docs if d.get("assignment_state") != "stopping"]
        return plan(capacities, demands)

    async def _cache_plan(self, docs: list[dict[str, Any]], result: Plan) -> CachePlan:
        """Every deployment's cache budget on the nodes the plan places it on (shared.redis_budget)."""
        placements = {
            (d["deployment_id"], n)
            for d in docs
            for n in {*d.get("targets", {}), *result.allocations.get(d["deployment_id"], {})}
        }
        capacity = await read_capacity(self.redis, self.redis_memory, sorted(placements))
        demands = [
            # not placed (yet, or its nodes are gone): budgeted as on one node, not as free
            cache_demand_of(d, max(1, len(result.allocations.get(d["deployment_id"], {}))))
            for d in docs
            if d.get("assignment_state") != "stopping"
        ]
        return CachePlan(capacity, demands, plan_cache_budgets(capacity, demands))

    async def apply_plan(self, docs: list[dict[str, Any]], result: Plan) -> bool:
        """Write ``result`` and the cache budgets it implies into the documents that changed (the
        caller holds the lease). Returns whether any did."""
        return await self._apply(docs, result, await self._cache_plan(docs, result))

    async def _apply(self, docs: list[dict[str, Any]], result: Plan, caches: CachePlan) -> bool:
        """Write the plan's targets and cache budgets into the documents that changed. Returns
        whether any did."""
        changed = False
        for doc in docs:
            if doc.get("assignment_state") == "stopping":
                continue
            deployment_id = doc["deployment_id"]
            targets = result.allocations.get(deployment_id, {})
            reason = result.reasons.get(deployment_id, "")
            budget = caches.budgets[deployment_id]
            cache_fields = {
                "cache_budget_bytes": budget.budget_bytes,
                "cache_budget_state": budget.state,
                "redis_memory_ceiling_bytes": caches.capacity.memory_ceiling_bytes,
            }
            if budget.state == doc.get("cache_budget_state") == "scaled" and _close(
                budget.budget_bytes, doc.get("cache_budget_bytes")
            ):
                cache_fields["cache_budget_bytes"] = doc["cache_budget_bytes"]  # no churn on small moves
            if (
                targets == doc.get("targets")
                and reason == doc.get("reason", "")
                and all(doc.get(k) == v for k, v in cache_fields.items())
                and doc.get("_stored")
            ):
                continue
            if cache_fields["cache_budget_bytes"] != doc.get("cache_budget_bytes"):
                log.info("cache budget of [%s]: %s per node (%s); Redis memory for caches %s", deployment_id,
                         format_bytes(budget.budget_bytes), budget.state, caches.capacity.describe())  # fmt: skip
            doc.pop("_stored", None)
            doc.update(cache_fields)
            doc["targets"] = targets
            if targets:  # producers create per-node keys on these nodes: index them first
                await self.redis.sadd(keys.deployment_nodes(deployment_id), *targets)
            if reason:
                doc["reason"] = reason
            else:
                doc.pop("reason", None)
            doc["max_assigned_allocations"] = max(int(doc.get("max_assigned_allocations", 0)), sum(targets.values()))
            await self.deployments.put(doc)
            await self.count_action("retarget")
            changed = True
        if changed:
            await self.deployments.bump()
        return changed

    async def count_action(self, action: str) -> None:
        await self.redis.hincrby(keys.METRICS_PLANNER, action, 1)

    async def replan(self) -> bool:
        """One planner pass (the caller holds the lease): re-place allocations of dead nodes,
        give waiting deployments what now fits, and requeue a dead node's work."""
        docs = await self.deployments.all()
        for doc in docs:
            doc["_stored"] = True
        result = await self.plan_with(docs)
        changed = await self.apply_plan(docs, result)
        await self._reap_dead_nodes()
        await self._finish_orphaned_stops(docs)
        await self._hand_over_stalled(docs)
        return changed

    async def _finish_orphaned_stops(self, docs: list[dict[str, Any]]) -> None:
        """Finish the ``_stop`` of a gateway that died half way: cancel what is queued, remove."""
        stopping = [d for d in docs if d.get("assignment_state") == "stopping"]
        if not stopping:
            return
        live = {n.node_id for n in await node_registry.live_nodes(self.redis)}
        for doc in stopping:
            deployment_id = doc["deployment_id"]
            age_s = (now_ms() - int(doc.get("stopping_since_ms", 0))) / 1000
            routed = any(node in live for node in await self.deployments.routes(deployment_id))
            if age_s >= STOP_TIMEOUT_S + ORPHANED_STOP_AFTER_S or (age_s >= ORPHANED_STOP_AFTER_S and not routed):
                log.warning("finishing the interrupted stop of deployment [%s]", deployment_id)
                await self.cancel_queued(deployment_id)
                await self._remove(deployment_id)

    async def _hand_over_stalled(self, docs: list[dict[str, Any]]) -> None:
        """Queued (not yet taken) requests of a live node whose process is stalled go to a
        healthy node of the same deployment: the gateways already route new ones elsewhere."""
        stalled = await node_registry.suspect_nodes(self.redis, await node_registry.known_node_ids(self.redis))
        if not stalled:
            return
        for doc in docs:
            if doc.get("assignment_state") == "stopping":
                continue
            deployment_id = doc["deployment_id"]
            targets = doc.get("targets", {})
            heirs = sorted(n for n, a in targets.items() if a > 0 and n not in stalled)
            routes = await self.deployments.routes(deployment_id)
            heirs = [n for n in heirs if n in routes and routes[n].routing_state == "started"]
            if not heirs:
                continue
            for node_id in sorted(stalled & set(targets)):
                await self.hand_over(deployment_id, node_id, heirs[0], lanes=(queue.INTERACTIVE,))

    async def _reap_dead_nodes(self) -> None:
        live = {n.node_id for n in await node_registry.live_nodes(self.redis)}
        known = await node_registry.known_node_ids(self.redis)
        dead = [n for n in known if n not in live]
        if not dead:
            return
        docs = {d["deployment_id"]: d for d in await self.deployments.all()}
        for node_id in dead:
            leftovers = False
            for deployment_id, doc in docs.items():
                routes = await self.deployments.routes(deployment_id)
                if node_id in routes:
                    await self.deployments.drop_route(deployment_id, node_id)
                    await self.deployments.bump()
                heirs = sorted(n for n, a in doc.get("targets", {}).items() if a > 0 and n in live)
                # in-flight requests back on the dead node's queue first (served next), each
                # counting a delivery: a request that kills its workers is not run for ever
                await queue.arun(self.redis, queue.recover(deployment_id, node_id))
                if not await queue.arun(self.redis, queue.queued(deployment_id, node_id)):
                    continue
                if not heirs:
                    leftovers = True
                    continue
                # different hash tags: copied, then removed (crash-safe, shared.queue.hand_over)
                await self.hand_over(deployment_id, node_id, heirs[0])
                await self.count_action("requeue")
            if not leftovers and await node_registry.dead_for_ms(self.redis, node_id) >= node_registry.REAP_GRACE_MS:
                await node_registry.forget(self.redis, node_id)
                await self.count_action("reap_node")

    async def hand_over(
        self, deployment_id: str, source_node: str, target_node: str, lanes: Sequence[str] = queue.LANES
    ) -> int:
        """Queued requests of one node go to another node's queues (``shared.queue.hand_over``)."""
        return await queue.arun(self.redis, queue.hand_over(deployment_id, source_node, target_node, lanes))


class PeriodicTask(Protocol):
    """Work the lease holder does after each planner pass (``gateway.adaptive_service``)."""

    wake: asyncio.Event

    def due(self) -> bool: ...

    async def tick(self) -> None: ...


async def planner_loop(
    control: ControlPlane,
    interval_s: float,
    stop: asyncio.Event,
    wake: asyncio.Event | None = None,
    adaptive: PeriodicTask | None = None,
) -> None:
    """Re-plan every ``interval_s`` (node joins, deaths, freed capacity), one gateway at a time,
    at once when ``wake`` is set (a node came or went);
    then, under the same lease, run the adaptive allocations scaler when it is due (at once
    when ``adaptive.wake`` is set)."""
    from gateway.lease import release, try_lease

    wake = wake or asyncio.Event()

    while not stop.is_set():
        try:
            token = await try_lease(control.redis)
            if token is not None:
                try:
                    await control.replan()
                    await control.count_action("pass")
                    if adaptive is not None and adaptive.due():
                        await adaptive.tick()
                finally:
                    await release(control.redis, token)
            elif adaptive is not None:
                adaptive.wake.clear()  # another gateway holds the lease: its scaler runs
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("planner pass failed: %s", exc)
        waits: list[asyncio.Task[Any]] = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
        if adaptive is not None:
            waits.append(asyncio.ensure_future(adaptive.wake.wait()))
        await asyncio.wait(waits, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
        wake.clear()
