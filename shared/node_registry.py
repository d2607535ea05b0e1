"""Worker nodes in Redis.

Keys: ``inferq:nodes`` (set of ids ever registered), ``inferq:node:<id>`` (hash: processors,
memory_bytes, started_ms, pid, host, name) and ``inferq:node:<id>:alive`` (a key with a TTL,
refreshed by the node's heartbeat; the node is live while it exists). The alive key's value is
a ``Beat``: when it was written, the TTL it was written with, and how long the node's process
has made no progress (``stalled_ms``); gateways stop routing to a node whose beat is late or
stalled (``suspect``) before the planner declares it dead.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from shared import keys
from shared.pubsub import publish
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


def register(
    client: redis.Redis, node_id: str, processors: int, memory_bytes: int, ttl_s: float, pid: int | None = None
) -> NodeInfo:
    info = NodeInfo(node_id, processors, memory_bytes, now_ms(), socket.gethostname(), pid or os.getpid())
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.node_info(node_id))
    pipe.hset(keys.node_info(node_id), mapping=info.mapping())  # type: ignore[arg-type]  # redis-py's Mapping is invariant
    pipe.sadd(keys.NODES, node_id)
    pipe.set(keys.node_heartbeat(node_id), Beat(info.started_ms, int(ttl_s * 1000)).encode(), px=int(ttl_s * 1000))
    pipe.incr(keys.STATE_VERSION)
    publish(pipe, keys.EVENTS, b"node")
    pipe.execute()
    return info


SUSPECT_STALLED_MS = 2000  # a node whose process made no progress this long gets no new requests


@dataclass(frozen=True)
class Beat:
    """The value of ``inferq:node:<id>:alive``: ``"<beat_ms> <ttl_ms> <stalled_ms>"``."""

    beat_ms: int
    ttl_ms: int
    stalled_ms: int = 0

    def encode(self) -> bytes:
        return b"%d %d %d" % (self.beat_ms, self.ttl_ms, self.stalled_ms)

    @staticmethod
    def decode(raw: bytes | str | None) -> Beat | None:
        parts = (raw.decode() if isinstance(raw, bytes) else raw or "").split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return None  # an older node writes a bare timestamp: never suspect for its value
        return Beat(int(parts[0]), int(parts[1]), int(parts[2]))


def suspect(raw_beat: bytes | str | None, pttl_ms: int) -> bool:
    """Whether a node should get no new requests: its alive key is gone, two beats (a beat every
    third of the TTL) were missed, or its process has been stalled ``SUSPECT_STALLED_MS``."""
    if pttl_ms < 0:
        return pttl_ms == -2  # -2: no key; -1: a key without a TTL (not written by a heartbeat)
    beat = Beat.decode(raw_beat)
    if beat is None:
        return False
    return pttl_ms < beat.ttl_ms / 3 or beat.stalled_ms >= SUSPECT_STALLED_MS


def heartbeat(client: redis.Redis, node_id: str, ttl_s: float, stalled_ms: int = 0) -> bool:
    """Refresh the alive key; returns False when the node was not registered any more (its alive
    key had expired or was removed, its hash or its ``inferq:nodes`` entry is gone: reaped,
    Redis restarted without persistence or failed over): the caller registers again."""
    ttl_ms = int(ttl_s * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.node_heartbeat(node_id), Beat(now_ms(), ttl_ms, stalled_ms).encode(), px=ttl_ms, get=True)
    pipe.exists(keys.node_info(node_id))
    pipe.sismember(keys.NODES, node_id)
    previous, has_info, known = pipe.execute()
    return previous is not None and bool(has_info) and bool(known)


def deregister(client: redis.Redis, node_id: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.node_heartbeat(node_id))
    pipe.incr(keys.STATE_VERSION)
    publish(pipe, keys.EVENTS, b"node")
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


async def suspect_nodes(client: aioredis.Redis, node_ids: list[str]) -> frozenset[str]:
    """The nodes among ``node_ids`` that should get no new requests (``suspect``)."""
    if not node_ids:
        return frozenset()
    async with client.pipeline(transaction=False) as pipe:
        for node_id in node_ids:
            pipe.get(keys.node_heartbeat(node_id))
            pipe.pttl(keys.node_heartbeat(node_id))
        replies = await pipe.execute()
    return frozenset(n for i, n in enumerate(node_ids) if suspect(replies[2 * i], int(replies[2 * i + 1])))


async def known_node_ids(client: aioredis.Redis) -> list[str]:
    return sorted(text(n) for n in await client.smembers(keys.NODES))


async def forget(client: aioredis.Redis, node_id: str) -> None:
    """A dead node is gone for good (it registers again if it ever comes back)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.srem(keys.NODES, node_id)
        pipe.delete(keys.node_info(node_id))
        await pipe.execute()


REAP_GRACE_MS = 5000  # a dead node stays known this long: its queue is handed over on every pass


async def dead_for_ms(client: aioredis.Redis, node_id: str) -> int:
    """How long the planner has seen this (dead) node dead: the first call notes the time in its
    hash (``reaped_ms``; registering again clears it) and returns 0. A producer whose view lagged
    may still push onto the dead node's queue for a moment; the planner keeps handing it over
    until ``REAP_GRACE_MS`` has passed, then forgets the node."""
    now = now_ms()
    async with client.pipeline(transaction=True) as pipe:
        pipe.hsetnx(keys.node_info(node_id), "reaped_ms", now)
        pipe.hget(keys.node_info(node_id), "reaped_ms")
        _, first = await pipe.execute()
    return now - int(first or now)
