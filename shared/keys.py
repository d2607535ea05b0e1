"""Every Redis key inferq uses, built in one place.

Keys that one Lua script or transaction touches together share a hash tag, so the same
scripts run on a sharded Redis Cluster (docs/protocol.md, "Keys by hash tag"):

- ``{dep|node}`` — everything of one deployment on one node: its bounded request queues
  (the interactive ``queue`` and the ``bulk`` lane), the allocations' processing lists and
  their index, the result cache (index, meta, entries) and the node's stats counters. The
  request path's scripts (``shared.queue``) touch this tag only.
- ``{model:<id>}`` — one model's config, definition parts and vocabulary.
- ``{control}`` — every cluster-wide control-plane key (models, deployments, nodes, routes,
  heartbeats, the indexes, the planner lease, the state version, API keys, inference
  endpoints, aliases, metrics hashes, the events channels): one slot, so any MULTI over them
  is single-slot.
- ``inferq:replies:<gateway>`` — one gateway's reply list, a slot of its own (no tag).

Nothing is ever found by ``SCAN``/``KEYS`` (no user string becomes a pattern, and a pattern
does not cross the shards of a Redis Cluster): what must be found later is indexed where it
is created — ``deployment_nodes`` (nodes holding per-node keys of a deployment),
``node_deployments`` (deployments a node ran allocations of) and ``dn_allocations`` (the
processing lists of one deployment on one node).
"""

from __future__ import annotations

PREFIX = "inferq"
CONTROL_TAG = "{control}"
CONTROL = f"{PREFIX}:{CONTROL_TAG}"  # the start of every control-plane key

# ---- cluster-wide: one {control} hash tag ---------------------------------------------------

MODELS = f"{CONTROL}:models"  # set of model ids
DEPLOYMENTS = f"{CONTROL}:deployments"  # set of deployment ids
NODES = f"{CONTROL}:nodes"  # set of node ids ever seen (liveness is node_heartbeat)
PLANNER_LEASE = f"{CONTROL}:planner:lease"
EVENTS = f"{CONTROL}:events"  # pub/sub channel: something in cluster state changed
STATE_VERSION = f"{CONTROL}:state:version"  # INCR on every cluster-state change
API_KEYS = f"{CONTROL}:api_keys"  # hash: key id -> msgpack record
API_KEY_EVENTS = f"{CONTROL}:api_keys:events"  # pub/sub channel: ids of invalidated keys
INFERENCE_ENDPOINTS = f"{CONTROL}:inference:endpoints"  # set of inference endpoint ids
MODEL_ALIASES = f"{CONTROL}:model_aliases"  # hash: model alias -> model id
METRICS_GATEWAY = f"{CONTROL}:metrics:gateway"  # hash: every gateway's request counters (gateway/request_metrics.py)
METRICS_PLANNER = f"{CONTROL}:metrics:planner"  # hash: planner action -> count (gateway/control.py)


def model_tag(model_id: str) -> str:
    return f"{{model:{model_id}}}"


def model_config(model_id: str) -> str:
    return f"{PREFIX}:{model_tag(model_id)}:config"


def model_part(model_id: str, part: int) -> str:
    return f"{PREFIX}:{model_tag(model_id)}:part:{part}"


def model_parts_meta(model_id: str) -> str:
    """Hash: part number -> decoded length, plus total_parts / total_definition_length."""
    return f"{PREFIX}:{model_tag(model_id)}:parts"


def model_vocabulary(model_id: str) -> str:
    return f"{PREFIX}:{model_tag(model_id)}:vocabulary"


def deployment(deployment_id: str) -> str:
    """JSON document: task parameters, planner targets, state, start time."""
    return f"{CONTROL}:deployment:{deployment_id}"


def deployment_nodes(deployment_id: str) -> str:
    """Set of node ids that hold (or held) per-node keys of the deployment: added when the
    planner targets a node and when an allocation starts; read when the deployment goes."""
    return f"{CONTROL}:deployment:{deployment_id}:nodes"


def inference_endpoint(inference_id: str) -> str:
    """JSON document: an ``_inference`` endpoint's task type, service and settings."""
    return f"{CONTROL}:inference:endpoint:{inference_id}"


def routes(deployment_id: str) -> str:
    """Hash: node id -> JSON route status written by that node (state, current allocations)."""
    return f"{CONTROL}:routes:{deployment_id}"


def node_info(node_id: str) -> str:
    """Hash: processors, memory_bytes, started_ms, pid, host."""
    return f"{CONTROL}:node:{node_id}"


def node_heartbeat(node_id: str) -> str:
    """String with a TTL; the node is alive while it exists."""
    return f"{CONTROL}:node:{node_id}:alive"


def node_deployments(node_id: str) -> str:
    """Set of deployment ids the node ran allocations of (its processing lists to requeue)."""
    return f"{CONTROL}:node:{node_id}:deployments"


def gateway_replies(gateway_id: str) -> str:
    """List the workers RPUSH replies onto; read by one BLPOP loop in that gateway."""
    return f"{PREFIX}:replies:{gateway_id}"


# ---- per (deployment, node): one hash tag ----------------------------------------------------


def dn_tag(deployment_id: str, node_id: str) -> str:
    return f"{{{deployment_id}|{node_id}}}"


def dn_prefix(deployment_id: str, node_id: str) -> str:
    return f"{PREFIX}:dn:{dn_tag(deployment_id, node_id)}"


def queue(deployment_id: str, node_id: str) -> str:
    """Bounded request list: producers LPUSH, allocations take from the right (FIFO)."""
    return f"{dn_prefix(deployment_id, node_id)}:queue"


def bulk_queue(deployment_id: str, node_id: str) -> str:
    """The bulk lane: bounded like ``queue``; allocations take from it after the interactive
    ``queue`` (with a bounded share, so it is never starved). Ends in ``:queue`` so everything
    that finds a deployment's queues by pattern finds both lanes."""
    return f"{dn_prefix(deployment_id, node_id)}:bulk:queue"


def processing(deployment_id: str, node_id: str, allocation: str) -> str:
    """One allocation's in-flight items: moved here on pop, removed on acknowledgement."""
    return f"{dn_prefix(deployment_id, node_id)}:processing:{allocation}"


def dn_allocations(deployment_id: str, node_id: str) -> str:
    """Set of the allocation names (``a<N>``) that have a processing list on the node."""
    return f"{dn_prefix(deployment_id, node_id)}:allocations"


def stats(deployment_id: str, node_id: str) -> str:
    """Hash of the node's counters for the deployment."""
    return f"{dn_prefix(deployment_id, node_id)}:stats"


def cache_index(deployment_id: str, node_id: str) -> str:
    """Zset of the result cache's entries: member = 26-byte header + digest, score = LFU count or
    LRU tick (``shared/lua/cache.lua``); ZPOPMIN gives the next entry to evict."""
    return f"{dn_prefix(deployment_id, node_id)}:cache:idx"


def cache_meta(deployment_id: str, node_id: str) -> str:
    """Hash of the result cache's counters: bytes, entries, hits, misses, evictions, ..."""
    return f"{dn_prefix(deployment_id, node_id)}:cache:meta"


def cache_entries(deployment_id: str, node_id: str) -> str:
    """Hash of the result cache's entries: digest -> 26-byte header + cached value. One key, so
    every script that reads, writes or evicts entries declares it in ``KEYS``."""
    return f"{dn_prefix(deployment_id, node_id)}:cache:entries"


def dn_keys(deployment_id: str, node_id: str) -> tuple[str, ...]:
    """Every fixed key of one (deployment, node); the processing lists come from ``dn_allocations``."""
    return (
        queue(deployment_id, node_id),
        bulk_queue(deployment_id, node_id),
        stats(deployment_id, node_id),
        dn_allocations(deployment_id, node_id),
        cache_index(deployment_id, node_id),
        cache_meta(deployment_id, node_id),
        cache_entries(deployment_id, node_id),
    )
