"""Settings, built from an environment mapping (tests pass a dict; nothing reads os.environ at import).

Every variable is ``INFERQ_*``; the CLI's options default to these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return int(raw) if raw not in (None, "") else default


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    return raw if raw not in (None, "") else default


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class GatewaySettings:
    redis_url: str = DEFAULT_REDIS_URL
    host: str = "127.0.0.1"
    port: int = 9200
    cluster_name: str = "inferq"
    max_body_bytes: int = 100 * 1024 * 1024
    planner_interval_s: float = 1.0
    state_refresh_s: float = 1.0
    cache_timeout_s: float = 0.1
    cache_affinity: bool = True  # route identical inputs to the same node (consistent hashing)
    auth_required: bool = False
    bootstrap_api_key: str = ""  # "id:secret" created with every privilege at start, if set
    adaptive_idle_s: float = 900.0  # adaptive allocations: no request this long scales to the minimum
    adaptive_cooldown_s: float = 300.0  # no scale-down this soon after a scale-up
    adaptive_interval_s: float = 1.0  # how often the scaler reads the stats

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        return cls(
            redis_url=_str(env, "INFERQ_REDIS_URL", DEFAULT_REDIS_URL),
            host=_str(env, "INFERQ_HOST", "127.0.0.1"),
            port=_int(env, "INFERQ_PORT", 9200),
            cluster_name=_str(env, "INFERQ_CLUSTER_NAME", "inferq"),
            max_body_bytes=_int(env, "INFERQ_MAX_BODY_BYTES", 100 * 1024 * 1024),
            planner_interval_s=_float(env, "INFERQ_PLANNER_INTERVAL_S", 1.0),
            state_refresh_s=_float(env, "INFERQ_STATE_REFRESH_S", 1.0),
            cache_timeout_s=_float(env, "INFERQ_CACHE_TIMEOUT_S", 0.1),
            cache_affinity=_str(env, "INFERQ_CACHE_AFFINITY", "on").lower() not in ("0", "off", "false", "no"),
            auth_required=_str(env, "INFERQ_AUTH", "off").lower() in ("1", "on", "true", "yes"),
            bootstrap_api_key=_str(env, "INFERQ_BOOTSTRAP_API_KEY", ""),
            adaptive_idle_s=_float(env, "INFERQ_ADAPTIVE_IDLE_S", 900.0),
            adaptive_cooldown_s=_float(env, "INFERQ_ADAPTIVE_COOLDOWN_S", 300.0),
            adaptive_interval_s=_float(env, "INFERQ_ADAPTIVE_INTERVAL_S", 1.0),
        )


@dataclass(frozen=True)
class WorkerSettings:
    node_id: str = "node-1"
    processors: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_bytes: int = 8 * 1024**3
    redis_url: str = DEFAULT_REDIS_URL
    heartbeat_ttl_s: float = 6.0
    reconcile_interval_s: float = 0.5
    max_batch_size: int = 8  # documents per forward pass (docs/benchmarks.md)
    max_batch_tokens: int = 8192
    batch_wait_ms: float = 0.0
    max_take: int = 32  # documents an allocation takes off its queue at once
    max_padding: float = 0.25  # share of a forward pass's tokens that may be padding
    bulk_take: int = 8  # bulk documents an allocation takes at once while interactive requests are about
    model_dir: str = ""  # local copies of definitions, keyed by content hash

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        return cls(
            node_id=_str(env, "INFERQ_NODE_ID", "node-1"),
            processors=_int(env, "INFERQ_PROCESSORS", os.cpu_count() or 1),
            memory_bytes=_int(env, "INFERQ_MEMORY_BYTES", 8 * 1024**3),
            redis_url=_str(env, "INFERQ_REDIS_URL", DEFAULT_REDIS_URL),
            heartbeat_ttl_s=_float(env, "INFERQ_HEARTBEAT_TTL_S", 6.0),
            reconcile_interval_s=_float(env, "INFERQ_RECONCILE_INTERVAL_S", 0.5),
            max_batch_size=_int(env, "INFERQ_MAX_BATCH_SIZE", 8),
            max_batch_tokens=_int(env, "INFERQ_MAX_BATCH_TOKENS", 8192),
            batch_wait_ms=_float(env, "INFERQ_BATCH_WAIT_MS", 0.0),
            max_take=_int(env, "INFERQ_MAX_TAKE", 32),
            max_padding=_float(env, "INFERQ_MAX_PADDING", 0.25),
            bulk_take=_int(env, "INFERQ_BULK_TAKE", 8),
            model_dir=_str(env, "INFERQ_MODEL_DIR", os.path.expanduser("~/.cache/inferq/models")),
        )
