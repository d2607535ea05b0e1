"""Whether Redis is configured to keep inferq's state: one warning each, at start, for a Redis
that persists nothing, that may evict keys (queues, deployments, model parts) or that has no
memory limit (docs/operations-redis-memory.md). Gateways and workers call ``warn_redis_config``.

Redis keys: none. Reads ``CONFIG GET`` (``appendonly``, ``save``, ``maxmemory``,
``maxmemory-policy``); where a managed Redis disables ``CONFIG``, ``INFO persistence`` and
``INFO memory`` stand in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from shared.redis_conn import text

log = logging.getLogger(__name__)

CONFIG_NAMES = ("appendonly", "save", "maxmemory", "maxmemory-policy")
SAFE_POLICIES = ("noeviction",)  # volatile-* evict keys with a TTL: heartbeats and reply lists among them


def config_warnings(config: Mapping[str, str]) -> list[str]:
    """The warnings for one Redis configuration (``CONFIG GET`` names; a name not known: unchecked)."""
    warnings: list[str] = []
    appendonly, save = config.get("appendonly"), config.get("save")
    if appendonly == "no" and save is not None and not save.strip():
        warnings.append(
            "Redis persists nothing (appendonly no, no save points): a Redis restart loses every model, "
            "deployment and API key; run it with --appendonly yes --appendfsync everysec"
        )
    policy = config.get("maxmemory-policy")
    if policy is not None and policy not in SAFE_POLICIES:
        warnings.append(
            f"Redis maxmemory-policy is [{policy}]: it may evict queued requests, replies, heartbeats, "
            "deployments or model parts; run it with --maxmemory-policy noeviction (the caches keep to "
            "their budgets by themselves)"
        )
    if config.get("maxmemory") in ("0", "0b"):
        warnings.append(
            "Redis has no memory limit (maxmemory 0): result caches are not budgeted against it and Redis "
            "can grow until the host kills it; set --maxmemory (or INFERQ_REDIS_MEMORY for the budgets)"
        )
    return warnings


def _from_info(persistence: Mapping[str, Any], memory: Mapping[str, Any]) -> dict[str, str]:
    config = {"appendonly": "yes" if int(persistence.get("aof_enabled", 0)) else "no"}
    if "maxmemory" in memory:
        config["maxmemory"] = str(memory["maxmemory"])
    if "maxmemory_policy" in memory:
        config["maxmemory-policy"] = str(memory["maxmemory_policy"])
    return config  # INFO does not show save points: that check is skipped


def _decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def read_config(client: redis.Redis) -> dict[str, str]:
    try:
        return _decode(client.config_get(*CONFIG_NAMES) or {})
    except redis.ResponseError:  # CONFIG disabled or renamed
        return _from_info(client.info("persistence"), client.info("memory"))


async def read_config_async(client: aioredis.Redis) -> dict[str, str]:
    try:
        return _decode(await client.config_get(*CONFIG_NAMES) or {})
    except redis.ResponseError:
        return _from_info(await client.info("persistence"), await client.info("memory"))


def _log(warnings: list[str], who: str) -> None:
    for warning in warnings:
        log.warning("%s: %s", who, warning)


def warn_redis_config(client: redis.Redis, who: str) -> list[str]:
    """Log (and return) the warnings for the Redis ``client`` talks to; a failure to read is not one."""
    try:
        warnings = config_warnings(read_config(client))
    except redis.RedisError as exc:
        log.info("could not read the Redis configuration: %s", exc)
        return []
    _log(warnings, who)
    return warnings


async def warn_redis_config_async(client: aioredis.Redis, who: str) -> list[str]:
    try:
        warnings = config_warnings(await read_config_async(client))
    except redis.RedisError as exc:
        log.info("could not read the Redis configuration: %s", exc)
        return []
    _log(warnings, who)
    return warnings
