"""Worker nodes in Redis.

Keys: ``inferq:nodes`` (set of ids ever registered), ``inferq:node:<id>`` (hash: processors,
memory_bytes, started_ms, pid, host, name) and ``inferq:node:<id>:alive`` (a key with a TTL,
refreshed by the node's heartbeat; the node is live while it exists).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from shared import keys
from shared.redis_conn import text


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    processors: int
    memory_bytes: int
    started_ms: int
    host: str = ""
    pid: int = 0

    def mapping(self) -> dict[str, str | int]:
        return {
            "processors": self.processors,
            "memory_bytes": self.memory_bytes,
            "started_ms": self.started_ms,
            "host": self.host,
            "pid": self.pid,
        }

    @staticmethod
    def from_hash(node_id: str, raw: dict[bytes, bytes]) -> NodeInfo:
        def get(name: str, default: str = "0") -> str:
            return raw.get(name.encode(), default.encode()).decode()

        return NodeInfo(
            node_id=node_id,
            processors=int(get("processors")),
            memory_bytes=int(get("memory_bytes")),
            started_ms=int(get("started_ms")),
            host=get("host", ""),
            pid=int(get("pid")),
        )


def now_ms() -> int:
    return int(time.time() * 1000)


def register(client: redis.Redis, node_id: str, processors: int, memory_bytes: int, ttl_s: float) -> NodeInfo:
    info = NodeInfo(node_id, processors, memory_bytes, now_ms(), socket.gethostname(), os.getpid())
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.node_info(node_id))
    pipe.hset(keys.node_info(node_id), mapping=info.mapping())  # type: ignore[arg-type]  # redis-py's Mapping is invariant
    pipe.sadd(keys.NODES, node_id)
    pipe.set(keys.node_heartbeat(node_id), info.started_ms, px=int(ttl_s * 1000))
    pipe.incr(keys.STATE_VERSION)
    pipe.publish(keys.EVENTS, b"node")
    pipe.execute()
    return info


def heartbeat(client: redis.Redis, node_id: str, ttl_s: float) -> None:
    client.set(keys.node_heartbeat(node_id), now_ms(), px=int(ttl_s * 1000))


def deregister(client: redis.Redis, node_id: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.node_heartbeat(node_id))
    pipe.incr(keys.STATE_VERSION)
    pipe.publish(keys.EVENTS, b"node")
    pipe.execute()


async def live_nodes(client: aioredis.Redis) -> list[NodeInfo]:
    ids = sorted(text(n) for n in await client.smembers(keys.NODES))
    if not ids:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for node_id in ids:
            pipe.exists(keys.node_heartbeat(node_id))
            pipe.hgetall(keys.node_info(node_id))
        replies = await pipe.execute()
    nodes: list[NodeInfo] = []
    for i, node_id in enumerate(ids):
        alive, info = replies[2 * i], replies[2 * i + 1]
        if alive and info:
            nodes.append(NodeInfo.from_hash(node_id, info))
    return nodes


async def known_node_ids(client: aioredis.Redis) -> list[str]:
    return sorted(text(n) for n in await client.smembers(keys.NODES))


async def forget(client: aioredis.Redis, node_id: str) -> None:
    await client.srem(keys.NODES, node_id)
