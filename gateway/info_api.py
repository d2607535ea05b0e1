"""``GET _ml/info``: the cluster's machine-learning limits, as Elasticsearch reports them.

``limits`` sums the live worker nodes (``shared.node_registry``: ``inferq:nodes``,
``inferq:node:<id>`` and its ``:alive`` key): ``total_ml_processors`` and
``max_single_ml_node_processors`` are what a client needs to tell, before it uploads
anything, whether a new deployment can be placed (``inferq import --start`` does).
Without live nodes ``limits`` is empty, as in Elasticsearch without ML nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway.app_keys import REDIS
from gateway.http import check_params, json_response
from gateway.models_api import VERSION
from shared import node_registry
from shared.node_registry import NodeInfo

MB = 1024 * 1024


def render_limits(nodes: Sequence[NodeInfo]) -> dict[str, Any]:
    """Elasticsearch's ``limits`` object for these nodes (memory in whole ``mb``, as it renders)."""
    if not nodes:
        return {}
    largest_mb = max(n.memory_bytes for n in nodes) // MB
    return {
        "max_single_ml_node_processors": max(n.processors for n in nodes),
        "total_ml_processors": sum(n.processors for n in nodes),
        "max_model_memory_limit": f"{largest_mb}mb",
        "effective_max_model_memory_limit": f"{largest_mb}mb",
        "total_ml_memory": f"{sum(n.memory_bytes for n in nodes) // MB}mb",
    }


async def ml_info(request: web.Request) -> web.Response:
    check_params(request, ())
    nodes = await node_registry.live_nodes(request.app[REDIS])
    return json_response(
        request,
        {
            "defaults": {"anomaly_detectors": {}, "datafeeds": {}},
            "upgrade_mode": False,
            "native_code": {"version": VERSION, "build_hash": "inferq"},
            "limits": render_limits(nodes),
        },
    )
