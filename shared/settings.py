"""Settings, built from an environment mapping (tests pass a dict; nothing reads os.environ at import).

Every variable is ``INFERQ_*``; the CLI's options default to these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.redis_conn import RedisUrlError, is_cluster_url, redact_url
from shared.units import parse_byte_size


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return int(raw) if raw not in (None, "") else default


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    return raw if raw not in (None, "") else default


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(env, name, default).lower()
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _bytes(env: Mapping[str, str], name: str) -> int:
    """A byte size ("2gb", "512mb", or a bare 0); unset is 0."""
    raw = env.get(name)
    return parse_byte_size(raw, name) if raw not in (None, "") else 0


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url_from_env(env: Mapping[str, str]) -> str:
    """Where inferq keeps its state: one Redis (``redis://``, ``rediss://``, ``unix://``) or a
    Redis Cluster (``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://``;
    ``shared.redis_conn``). ``INFERQ_REDIS_URL``, else ``REDIS_URL``."""
    return _str(env, "INFERQ_REDIS_URL", _str(env, "REDIS_URL", DEFAULT_REDIS_URL))


@dataclass(frozen=True)
class BulkSettings:
    """Bulk jobs run on RQ, which needs one plain Redis for its queue, jobs and results
    (``INFERQ_BULK_REDIS_URL``); unset, it is inferq's own Redis (``redis_url``), which must
    then be a plain one: with a Redis Cluster, give RQ a Redis of its own
    (docs/protocol.md, "Running on Redis Cluster")."""

    redis_url: str = DEFAULT_REDIS_URL
    bulk_redis_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BulkSettings:
        env = os.environ if env is None else env
        return cls(redis_url=redis_url_from_env(env), bulk_redis_url=_str(env, "INFERQ_BULK_REDIS_URL", ""))

    def rq_url(self) -> str:
        """The Redis RQ uses; ``RedisUrlError`` when that would be a Redis Cluster."""
        if self.bulk_redis_url and is_cluster_url(self.bulk_redis_url):
            raise RedisUrlError(
                f"INFERQ_BULK_REDIS_URL (--bulk-redis-url) {redact_url(self.bulk_redis_url)} is a Redis Cluster: "
                "bulk jobs run on RQ, which needs one plain Redis (redis:// or rediss://)"
            )
        if not self.bulk_redis_url and is_cluster_url(self.redis_url):
            raise RedisUrlError(
                f"INFERQ_REDIS_URL {redact_url(self.redis_url)} is a Redis Cluster, and bulk jobs run on RQ, which "
                "needs one plain Redis: set INFERQ_BULK_REDIS_URL (--bulk-redis-url) to one "
                "(docs/protocol.md, \"Running on Redis Cluster\")"
            )
        return self.bulk_redis_url or self.redis_url


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
    idle_timeout_s: float = 30.0  # a connection without a complete request head this long is closed
    body_timeout_s: float = 30.0  # a request body not fully received this long after its head: 408, closed
    max_docs_per_request: int = 10_000  # documents in one _infer
    max_text_bytes: int = 1024 * 1024  # UTF-8 bytes of one document's text
    redis_memory_bytes: int = 0  # Redis's memory where it has no maxmemory (docs/operations-redis-memory.md)
    redis_reserve_bytes: int = 0  # Redis memory kept for queues and state; 0: max(16 MiB, 10%)
    adaptive_idle_s: float = 900.0  # adaptive allocations: no request this long scales to the minimum
    adaptive_cooldown_s: float = 300.0  # no scale-down this soon after a scale-up
    adaptive_interval_s: float = 1.0  # how often the scaler reads the stats
    reuse_port: bool = False  # SO_REUSEPORT: more gateway processes on the same port
    event_loop: str = "uvloop"  # "uvloop" (where installed) or "asyncio"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        return cls(
            redis_url=redis_url_from_env(env),
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
            idle_timeout_s=_float(env, "INFERQ_IDLE_TIMEOUT_S", 30.0),
            body_timeout_s=_float(env, "INFERQ_BODY_TIMEOUT_S", 30.0),
            max_docs_per_request=_int(env, "INFERQ_MAX_DOCS_PER_REQUEST", 10_000),
            max_text_bytes=_int(env, "INFERQ_MAX_TEXT_BYTES", 1024 * 1024),
            redis_memory_bytes=_bytes(env, "INFERQ_REDIS_MEMORY"),
            redis_reserve_bytes=_bytes(env, "INFERQ_REDIS_RESERVE"),
            adaptive_idle_s=_float(env, "INFERQ_ADAPTIVE_IDLE_S", 900.0),
            adaptive_cooldown_s=_float(env, "INFERQ_ADAPTIVE_COOLDOWN_S", 300.0),
            adaptive_interval_s=_float(env, "INFERQ_ADAPTIVE_INTERVAL_S", 1.0),
            reuse_port=_str(env, "INFERQ_REUSE_PORT", "off").lower() in ("1", "on", "true", "yes"),
            event_loop=_choice(env, "INFERQ_EVENT_LOOP", "uvloop", ("uvloop", "asyncio")),
        )


@dataclass(frozen=True)
class WorkerSettings:
    node_id: str = "node-1"
    processors: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_bytes: int = 8 * 1024**3
    redis_url: str = DEFAULT_REDIS_URL
    heartbeat_ttl_s: float = 6.0
    hung_after_s: float = 60.0  # the node's process stalled this long stops heartbeating (declared dead)
    max_redeliveries: int = 1  # a request whose worker died holding it is run again this many times
    reconcile_interval_s: float = 0.5
    max_batch_size: int = 32  # documents per forward pass (docs/benchmarks.md)
    max_batch_tokens: int = 2048  # padded tokens per forward pass
    batch_wait_ms: float = 0.0
    max_take: int = 256  # documents an allocation takes off its queue at once (at most)
    max_padding: float = 0.25  # share of a forward pass's tokens that may be padding
    bulk_take: int = 1  # bulk documents an allocation takes at once while interactive requests are about (benchmarks.adaptive)
    interactive_reserve: bool = True  # the first of 2+ allocations takes no bulk while interactive requests are about
    bulk_nice: int = 9  # bulk forward passes on their own thread this much nicer; the only allocation of a node gets a bulk lane (0: off)
    max_take_tokens: int = 4096  # padded tokens (documents x longest row) one allocation takes at once
    nice: int = 10  # added to the worker's scheduling niceness: gateways answer (429s) before inference
    model_dir: str = ""  # local copies of definitions, keyed by content hash
    confine: bool = True  # Landlock: the process writes only under model_dir and /dev (workers.confinement)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        return cls(
            node_id=_str(env, "INFERQ_NODE_ID", "node-1"),
            processors=_int(env, "INFERQ_PROCESSORS", os.cpu_count() or 1),
            memory_bytes=_int(env, "INFERQ_MEMORY_BYTES", 8 * 1024**3),
            redis_url=redis_url_from_env(env),
            heartbeat_ttl_s=_float(env, "INFERQ_HEARTBEAT_TTL_S", 6.0),
            hung_after_s=_float(env, "INFERQ_HUNG_AFTER_S", 60.0),
            max_redeliveries=_int(env, "INFERQ_MAX_REDELIVERIES", 1),
            reconcile_interval_s=_float(env, "INFERQ_RECONCILE_INTERVAL_S", 0.5),
            max_batch_size=_int(env, "INFERQ_MAX_BATCH_SIZE", 32),
            max_batch_tokens=_int(env, "INFERQ_MAX_BATCH_TOKENS", 2048),
            batch_wait_ms=_float(env, "INFERQ_BATCH_WAIT_MS", 0.0),
            max_take=_int(env, "INFERQ_MAX_TAKE", 256),
            max_padding=_float(env, "INFERQ_MAX_PADDING", 0.25),
            bulk_take=_int(env, "INFERQ_BULK_TAKE", 1),
            interactive_reserve=_str(env, "INFERQ_INTERACTIVE_RESERVE", "on").lower() not in ("0", "off", "false", "no"),
            bulk_nice=_int(env, "INFERQ_BULK_NICE", 9),
            max_take_tokens=_int(env, "INFERQ_MAX_TAKE_TOKENS", 4096),
            nice=_int(env, "INFERQ_WORKER_NICE", 10),
            model_dir=_str(env, "INFERQ_MODEL_DIR", os.path.expanduser("~/.cache/inferq/models")),
            confine=_str(env, "INFERQ_WORKER_CONFINE", "on").lower() not in ("0", "off", "false", "no"),
        )
