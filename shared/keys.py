"""Every Redis key inferq uses, built in one place.

Keys that one Lua script or transaction touches together share a hash tag, so the same
scripts run on a sharded Redis Cluster:

- ``{dep|node}`` — everything of one deployment on one node: its bounded request queue,
  the allocations' processing lists, the result cache and the node's stats counters.
- ``{model:<id>}`` — one model's config, definition parts and vocabulary.

Cluster-wide state (nodes, deployments, routes, the planner lease, events) lives under
plain keys, each touched on its own.
"""

from __future__ import annotations

PREFIX = "inferq"

# ---- cluster-wide ---------------------------------------------------------------------------

MODELS = f"{PREFIX}:models"  # set of model ids
DEPLOYMENTS = f"{PREFIX}:deployments"  # set of deployment ids
NODES = f"{PREFIX}:nodes"  # set of node ids ever seen (liveness is node_heartbeat)
PLANNER_LEASE = f"{PREFIX}:planner:lease"
EVENTS = f"{PREFIX}:events"  # pub/sub channel: something in cluster state changed
STATE_VERSION = f"{PREFIX}:state:version"  # INCR on every cluster-state change
API_KEYS = f"{PREFIX}:api_keys"  # hash: key id -> msgpack record
METRICS_GATEWAY = f"{PREFIX}:metrics:gateway"  # hash: every gateway's request counters (gateway/request_metrics.py)
METRICS_PLANNER = f"{PREFIX}:metrics:planner"  # hash: planner action -> count (gateway/control.py)


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
    return f"{PREFIX}:deployment:{deployment_id}"


def routes(deployment_id: str) -> str:
    """Hash: node id -> JSON route status written by that node (state, current allocations)."""
    return f"{PREFIX}:routes:{deployment_id}"


def node_info(node_id: str) -> str:
    """Hash: processors, memory_bytes, started_ms, pid, host."""
    return f"{PREFIX}:node:{node_id}"


def node_heartbeat(node_id: str) -> str:
    """String with a TTL; the node is alive while it exists."""
    return f"{PREFIX}:node:{node_id}:alive"


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


def processing(deployment_id: str, node_id: str, allocation: str) -> str:
    """One allocation's in-flight items: moved here on pop, removed on acknowledgement."""
    return f"{dn_prefix(deployment_id, node_id)}:processing:{allocation}"


def processing_pattern(deployment_id: str, node_id: str) -> str:
    return f"{dn_prefix(deployment_id, node_id)}:processing:*"


def stats(deployment_id: str, node_id: str) -> str:
    """Hash of the node's counters for the deployment."""
    return f"{dn_prefix(deployment_id, node_id)}:stats"


def cache_prefix(deployment_id: str, node_id: str) -> str:
    """Prefix of every key of the (deployment, node) result cache."""
    return f"{dn_prefix(deployment_id, node_id)}:cache"


def dn_pattern(deployment_id: str) -> str:
    """SCAN pattern for every per-node key of a deployment (used when it stops)."""
    return f"{PREFIX}:dn:{{{deployment_id}|*"
