"""``GET /_status``: a live page of the cluster, served from files in the package.

- ``/_status`` (the page), ``/_status/status.js`` and ``/_status/status.css``: static files
  from ``gateway/static/`` (no CDN, no build step); open routes, so a browser can load the
  page before it has a key (``gateway/auth.py``);
- ``/_status/data``: the JSON the page polls, made from the same ``ClusterSnapshot`` as
  ``GET /metrics`` and guarded like ``_stats``. The page keeps the last minutes of samples
  itself and draws throughput and latency from the differences between polls.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.app_keys import RECORDER, REDIS
from gateway.cluster_snapshot import ClusterSnapshot, read_snapshot
from gateway.http import check_params, json_response

PAGE = "/_status"
DATA = "/_status/data"
ASSETS = {  # path -> (file in gateway/static, content type); nothing else is served
    PAGE: ("status.html", "text/html"),
    PAGE + "/status.js": ("status.js", "text/javascript"),
    PAGE + "/status.css": ("status.css", "text/css"),
}
OPEN_PATHS = frozenset(ASSETS)


@cache
def _asset(name: str) -> bytes:
    return (resources.files("gateway") / "static" / name).read_bytes()


async def get_asset(request: web.Request) -> web.Response:
    name, content_type = ASSETS[request.match_info.route.resource.canonical]  # type: ignore[union-attr]
    return web.Response(
        body=_asset(name), content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"}
    )


def status_data(snapshot: ClusterSnapshot) -> dict[str, Any]:
    """The page's JSON (pure): nodes, deployments and the cumulative counters it turns into rates."""
    deployments: list[dict[str, Any]] = []
    for d in snapshot.deployments:
        lookups = d.cache_hits + d.cache_misses
        latency = snapshot.gateway.latency.get(d.deployment_id)
        deployments.append(
            {
                "deployment_id": d.deployment_id,
                "model_id": d.model_id,
                "state": d.state,
                "allocations": d.allocations,
                "requested_allocations": d.number_of_allocations,
                "nodes": [p.node_id for p in d.placements],
                "queue_depth": d.queue_depth,
                "bulk_queue_depth": sum(p.bulk_queue_depth for p in d.placements),
                "in_flight": sum(p.in_flight for p in d.placements),
                "queue_capacity": d.queue_capacity_total,
                "cache_used_bytes": d.cache_used_bytes,
                "cache_budget_bytes": d.cache_budget_total_bytes,
                "cache_hits": d.cache_hits,
                "cache_misses": d.cache_misses,
                "hit_ratio": d.cache_hits / lookups if lookups else None,
                "inference_count": d.inference_count,
                "latency": {
                    "bounds": list(latency.bounds) if latency else [],
                    "counts": list(latency.counts) if latency else [],
                    "sum_s": latency.sum if latency else 0.0,
                },
            }
        )
    return {
        "time_ms": snapshot.time_ms,
        "nodes": [
            {
                "node_id": n.node_id,
                "alive": n.alive,
                "suspect": n.suspect,
                "processors": n.processors,
                "memory_bytes": n.memory_bytes,
                "allocations": n.allocations,
                "allocated_processors": n.allocated_processors,
                "heartbeat_age_s": n.heartbeat_age_s,
            }
            for n in snapshot.nodes
        ],
        "deployments": deployments,
    }


async def get_data(request: web.Request) -> web.Response:
    check_params(request, ())
    await request.app[RECORDER].flush()
    return json_response(request, status_data(await read_snapshot(request.app[REDIS])))


def setup(app: web.Application) -> None:
    for path in ASSETS:
        app.router.add_get(path, get_asset)
    app.router.add_get(DATA, get_data)
