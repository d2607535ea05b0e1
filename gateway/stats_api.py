"""``GET _ml/trained_models[/<ids>]/_stats`` (spec §3): one entry per deployment, or per
undeployed model, with per-node counters read from each ``{dep|node}`` stats hash."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from gateway.app_keys import MODELS, PRODUCER, REDIS
from gateway.assignment import allocation_status, assignment_state
from gateway.http import check_params, json_response, query_bool, query_int
from gateway.planner import estimate_memory_bytes
from gateway.stats import parse_counters, render_deployment_stats, render_inference_stats, render_node_stats
from shared import node_registry, queue
from shared.cluster_view import DeploymentView

_CACHE_FIELDS = ("bytes", "entries", "no_headroom")


def _cache_fields(doc: dict[str, Any], meta: list[Any]) -> dict[str, int]:
    """A node's cache, an inferq extension (docs/operations-redis-memory.md)."""
    used, entries, no_headroom = (int(float(v)) if v is not None else 0 for v in meta)
    return {
        "cache_budget_bytes": int(doc.get("cache_budget_bytes", doc.get("cache_size_bytes", 0))),
        "cache_used_bytes": used,
        "cache_entry_count": entries,
        "cache_no_headroom_count": no_headroom,
    }


async def _deployment_stats(client: aioredis.Redis, view: DeploymentView, now: int) -> dict[str, Any]:
    deployment_id = view.deployment_id
    nodes = sorted(set(view.routes) | {n for n, a in view.doc.get("targets", {}).items() if a > 0})
    infos = {n.node_id: n for n in await node_registry.live_nodes(client)}
    in_flight_by_node = await queue.arun(client, queue.in_flight(deployment_id, nodes))
    samples = await queue.arun(client, queue.samples(deployment_id, nodes))
    metas = await queue.arun(client, queue.cache_meta([(deployment_id, node) for node in nodes], _CACHE_FIELDS))
    rendered: list[dict[str, Any]] = []
    params = view.doc["task_parameters"]
    for node, cache_meta in zip(nodes, metas, strict=True):
        raw, queued, in_flight = samples[node].stats, samples[node].queued, in_flight_by_node[node]
        route = view.routes.get(node)
        info = infos.get(node)
        rendered.append(
            render_node_stats(
                node_id=node,
                node_name=node,
                transport_address=f"{info.host}:{info.pid}" if info else "unknown",
                counters=parse_counters(raw),
                routing_state=route.routing_state if route else "starting",
                reason=route.reason or None if route else None,
                start_ms=view.start_ms(node),
                now_ms=now,
                pending_requests=queued + in_flight,
                threads_per_allocation=route.threads_per_allocation if route else int(params["threads_per_allocation"]),
                number_of_allocations=route.current_allocations if route else 0,
            )
            | _cache_fields(view.doc, cache_meta)
        )
    doc = dict(view.doc)
    doc["assignment_state"] = assignment_state(view.doc, view.routes)
    return render_deployment_stats(
        deployment=doc, node_stats=rendered, allocation_status=allocation_status(view.doc, view.routes)
    )


async def get_stats(request: web.Request) -> web.Response:
    check_params(request, ("allow_no_match", "from", "size"))
    expression = request.match_info.get("model_id", "_all")
    allow_no_match = query_bool(request, "allow_no_match", True)
    store = request.app[MODELS]
    view = await request.app[PRODUCER].watcher.refresh()
    model_ids = set(await store.ids())
    # a deployment id is also accepted where a model id is
    tokens = [view.model_id(t.strip()) for t in expression.split(",") if t.strip()] or ["_all"]  # aliases resolved
    extra_models = {view.deployments[t].model_id for t in tokens if t in view.deployments and t not in model_ids}
    rewritten = ",".join(
        view.deployments[t].model_id if t in view.deployments and t not in model_ids else t for t in tokens
    )
    ids = await store.match(rewritten, allow_no_match=allow_no_match)
    ids = sorted(set(ids) | extra_models)
    now = int(time.time() * 1000)
    client = request.app[REDIS]
    entries: list[dict[str, Any]] = []
    for model_id in ids:
        try:
            config = await store.get_config(model_id)
        except Exception:
            continue
        status = await store.definition_status(model_id)
        model_bytes = status.total_definition_length if status else 0
        metadata = config.get("metadata") or {}
        base = {
            "model_id": model_id,
            "model_size_stats": {
                "model_size_bytes": model_bytes,
                "required_native_memory_bytes": estimate_memory_bytes(
                    model_bytes,
                    per_deployment_memory_bytes=int(metadata.get("per_deployment_memory_bytes", 0)),
                    per_allocation_memory_bytes=int(metadata.get("per_allocation_memory_bytes", 0)),
                ),
            },
            "pipeline_count": 0,
        }
        deployment_ids = sorted(view.by_model.get(model_id, []))
        if not deployment_ids:
            entries.append(base | {"inference_stats": render_inference_stats({}, timestamp_ms=now)})
            continue
        for deployment_id in deployment_ids:
            stats = await _deployment_stats(client, view.deployments[deployment_id], now)
            entries.append(
                base | {"inference_stats": render_inference_stats(stats, timestamp_ms=now), "deployment_stats": stats}
            )
    start, size = query_int(request, "from", 0), query_int(request, "size", 100)
    return json_response(request, {"count": len(ids), "trained_model_stats": entries[start : start + size]})
