"""The result cache of one (deployment, node): held in Redis, bounded in bytes, never in the way.

Keys, all under ``shared.keys.cache_prefix(deployment_id, node_id)`` (one ``{dep|node}`` hash
tag, so one cluster slot); their layout and the byte accounting are described in
``shared/lua/cache.lua``, which owns every write to them:

- ``<prefix>:e:<digest>``: one string per entry (a 26-byte header, then the value);
- ``<prefix>:idx``: the eviction index (zset);
- ``<prefix>:meta``: counters (hash: bytes, entries, hits, misses, evictions, stored,
  rejected_too_large, no_headroom, last_evicted_count, tick, headroom_bytes, headroom_ms).

Each operation is written once, as a generator that yields Redis requests and receives their
replies (``_CacheOps``); ``_run_async`` drives it over ``redis.asyncio`` and ``_run_sync`` over
``redis.Redis``. ``ResultCache`` (asyncio) and ``SyncResultCache`` (threads) are thin shells over
the same operations, and ``NullCache`` / ``SyncNullCache`` stand in when the budget is 0, so
callers never ask whether caching is on: ``make_cache`` / ``make_sync_cache`` pick one.

On the request path (``get``/``put``) a slow or failing Redis is a miss / a value not stored:
the async shell bounds each call with ``asyncio.timeout(timeout_s)``, the sync shell relies on
the client's socket timeouts (``sync_cache_client`` builds a suitable client), both swallow
Redis and socket errors, count them locally, and skip the cache for ``retry_after_s`` after a
failure so a broken Redis costs at most one bounded wait per window. ``clear``, ``stats`` and
``footprint`` are control-plane calls and raise.

Redis memory is a budget (docs/operations-redis-memory.md): besides its own ``budget_bytes``, an
insert that would grow the cache first checks Redis's ``used_memory`` against
``memory_ceiling_bytes``; when Redis is short (counted in ``no_headroom``) the entry goes in only
in place of evicted ones, or not at all, so a cache never takes the memory queues, replies,
heartbeats and state need.

The clients must not decode responses (values are bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Literal, Protocol, TypeVar

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from shared.lua import compose

log = logging.getLogger(__name__)

Policy = Literal["lfu", "lru"]
POLICIES: tuple[Policy, ...] = ("lfu", "lru")

DEFAULT_TIMEOUT_S = 0.1
DEFAULT_RETRY_AFTER_S = 1.0
_SCAN_COUNT = 500

# Script bodies: ARGV carries the prefix and arguments; KEYS names the keys each call touches
# up front (evictions also touch other entries under the same hash tag).
GET_BODY = "return cache_get(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))"
PUT_BODY = """
local headroom = cache_headroom(ARGV[7], ARGV[6])
local stored = cache_put(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), headroom)
cache_save_headroom(headroom, ARGV[1] .. ":meta")
return stored
"""
CLEAR_BODY = "return cache_clear(ARGV[1])"
SWEEP_BODY = "return cache_sweep(ARGV[1], KEYS)"
AUDIT_BODY = "return cache_audit(ARGV[1])"


def cache_digest(*parts: bytes | str) -> str:
    """128-bit hex digest (blake2b) of the key material; each part is length-framed, so
    ``("ab", "c")`` and ``("a", "bc")`` differ. ``str`` parts are hashed as UTF-8."""
    return DigestPrefix(*parts).digest()


class DigestPrefix:
    """``cache_digest`` of leading parts hashed once: ``DigestPrefix(a, b).digest(c)`` is
    ``cache_digest(a, b, c)`` (the request path shares model, uid and config across texts)."""

    def __init__(self, *parts: bytes | str) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        _frame_into(self._hash, parts)

    def digest(self, *parts: bytes | str) -> str:
        h = self._hash.copy()
        _frame_into(h, parts)
        return h.hexdigest()


def _frame_into(h: Any, parts: tuple[bytes | str, ...]) -> None:
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)


def entry_key(prefix: str, digest: str) -> str:
    return f"{prefix}:e:{digest}"


def index_key(prefix: str) -> str:
    return f"{prefix}:idx"


def meta_key(prefix: str) -> str:
    return f"{prefix}:meta"


def scan_pattern(prefix: str) -> str:
    """SCAN pattern for every key of the cache (glob characters in the prefix escaped); only for
    ``footprint`` (diagnostics and tests), never on a service path."""
    escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix)
    return f"{escaped}:*"


# ---- scripts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LuaScript:
    source: str
    sha: str

    @classmethod
    def compose(cls, body: str) -> LuaScript:
        source = compose("cache", body=body)
        return cls(source, hashlib.sha1(source.encode("utf-8")).hexdigest())


@dataclass(frozen=True, slots=True)
class CacheScripts:
    get: LuaScript
    put: LuaScript
    clear: LuaScript
    sweep: LuaScript
    audit: LuaScript


@cache
def cache_scripts() -> CacheScripts:
    """The composed scripts (built on first use, not at import)."""
    return CacheScripts(
        get=LuaScript.compose(GET_BODY),
        put=LuaScript.compose(PUT_BODY),
        clear=LuaScript.compose(CLEAR_BODY),
        sweep=LuaScript.compose(SWEEP_BODY),
        audit=LuaScript.compose(AUDIT_BODY),
    )


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int = 0
    used_bytes: int = 0
    budget_bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    stored: int = 0
    rejected_too_large: int = 0
    no_headroom: int = 0  # inserts that found Redis at its ceiling (then only replacing, or skipped)
    errors: int = 0  # this process: Redis failures and timeouts turned into misses
    skipped: int = 0  # this process: calls not sent while backing off after a failure


@dataclass(frozen=True, slots=True)
class CacheFootprint:
    """Diagnostics: the accounting against what Redis reports."""

    accounted_bytes: int = 0  # meta.bytes
    recorded_bytes: int = 0  # sum of the per-entry footprints recorded in the index
    entries: int = 0  # meta.entries
    indexed_entries: int = 0  # ZCARD of the index
    redis_bytes: int = 0  # sum of MEMORY USAGE (SAMPLES 0) over every key of the cache
    keys: int = 0  # keys found under the prefix (entries + index + meta)


# ---- operations, written once (sans-IO) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Eval:
    script: LuaScript
    keys: tuple[str | bytes, ...]
    args: tuple[str | bytes | int, ...]


@dataclass(frozen=True, slots=True)
class _Command:
    args: tuple[str | bytes | int, ...]


@dataclass(frozen=True, slots=True)
class _Pipeline:
    commands: tuple[tuple[str | bytes | int, ...], ...]


_Request = _Eval | _Command | _Pipeline
T = TypeVar("T")
_Ops = Generator[_Request, Any, T]


def _clear_ops(prefix: str) -> _Ops[int]:
    """Atomically drop every indexed entry, the index and the counters: the index is how the
    cache's keys are found (never a SCAN, which a user-named deployment could turn into a
    pattern and which does not cross Redis Cluster shards). Returns the number of entries removed."""
    return int((yield _Eval(cache_scripts().clear, (index_key(prefix), meta_key(prefix)), (prefix,))))


def _int(value: Any) -> int:
    return int(float(value)) if value is not None else 0


def parse_meta(raw: Any, budget_bytes: int) -> CacheStats:
    """``CacheStats`` from an ``HGETALL`` of ``meta_key(prefix)`` (a missing hash is all zeros)."""
    meta = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (raw or {}).items()}
    return CacheStats(
        entries=_int(meta.get("entries")),
        used_bytes=_int(meta.get("bytes")),
        budget_bytes=budget_bytes,
        hits=_int(meta.get("hits")),
        misses=_int(meta.get("misses")),
        evictions=_int(meta.get("evictions")),
        stored=_int(meta.get("stored")),
        rejected_too_large=_int(meta.get("rejected_too_large")),
        no_headroom=_int(meta.get("no_headroom")),
    )


@dataclass(frozen=True, slots=True)
class _CacheOps:
    prefix: str
    budget_bytes: int
    policy: Policy
    memory_ceiling_bytes: int = 0  # Redis used_memory above which nothing grows the cache; 0: none

    def get(self, digest: str, now_ms: int) -> _Ops[bytes | None]:
        keys = (entry_key(self.prefix, digest), index_key(self.prefix), meta_key(self.prefix))
        reply = yield _Eval(cache_scripts().get, keys, (self.prefix, digest, self.policy, now_ms))
        if reply is None:
            return None
        return reply.encode("utf-8") if isinstance(reply, str) else bytes(reply)

    def put(self, digest: str, value: bytes, now_ms: int) -> _Ops[bool]:
        keys = (entry_key(self.prefix, digest), index_key(self.prefix), meta_key(self.prefix))
        args = (self.prefix, digest, value, self.budget_bytes, self.policy, now_ms, self.memory_ceiling_bytes)
        reply = yield _Eval(cache_scripts().put, keys, args)
        return bool(reply == 1)

    def clear(self) -> _Ops[int]:
        return (yield from _clear_ops(self.prefix))

    def stats(self) -> _Ops[CacheStats]:
        raw = yield _Command(("HGETALL", meta_key(self.prefix)))
        return parse_meta(raw, self.budget_bytes)

    def footprint(self) -> _Ops[CacheFootprint]:
        keys = (index_key(self.prefix), meta_key(self.prefix))
        accounted, recorded, entries, indexed = yield _Eval(cache_scripts().audit, keys, (self.prefix,))
        redis_bytes = 0
        key_count = 0
        cursor = 0
        while True:
            cursor, found = yield _Command(
                ("SCAN", cursor, "MATCH", scan_pattern(self.prefix), "COUNT", _SCAN_COUNT)
            )
            if found:
                usages = yield _Pipeline(tuple(("MEMORY", "USAGE", k, "SAMPLES", 0) for k in found))
                redis_bytes += sum(int(u or 0) for u in usages)
                key_count += len(found)
            if int(cursor) == 0:
                break
        return CacheFootprint(
            accounted_bytes=int(accounted),
            recorded_bytes=int(recorded),
            entries=int(entries),
            indexed_entries=int(indexed),
            redis_bytes=redis_bytes,
            keys=key_count,
        )


# ---- drivers ---------------------------------------------------------------------------------


def _run_sync(client: redis.Redis, ops: _Ops[T]) -> T:
    reply: Any = None
    try:
        while True:
            request = ops.send(reply)
            if isinstance(request, _Eval):
                keys, args = request.keys, request.args
                try:
                    reply = client.evalsha(request.script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    reply = client.eval(request.script.source, len(keys), *keys, *args)
            elif isinstance(request, _Command):
                reply = client.execute_command(*request.args)  # type: ignore[no-untyped-call]
            else:
                with client.pipeline(transaction=False) as pipe:
                    for command in request.commands:
                        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                    reply = pipe.execute()
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _run_async(client: redis.asyncio.Redis, ops: _Ops[T]) -> T:
    reply: Any = None
    try:
        while True:
            request = ops.send(reply)
            if isinstance(request, _Eval):
                keys, args = request.keys, request.args
                try:
                    reply = await client.evalsha(request.script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    reply = await client.eval(request.script.source, len(keys), *keys, *args)
            elif isinstance(request, _Command):
                reply = await client.execute_command(*request.args)  # type: ignore[no-untyped-call]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for command in request.commands:
                        pipe.execute_command(*command)
                    reply = await pipe.execute()
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def clear_cache(redis_client: redis.asyncio.Redis, prefix: str) -> int:
    """Delete every key of the cache under ``prefix`` (for ``_clear`` and for dropping a
    deployment). Safe while other clients use the cache. Returns the number of keys removed."""
    return await _run_async(redis_client, _clear_ops(prefix))


def clear_cache_sync(redis_client: redis.Redis, prefix: str) -> int:
    """``clear_cache`` over a sync client."""
    return _run_sync(redis_client, _clear_ops(prefix))


def sync_cache_client(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> redis.Redis:
    """A sync client whose every call on the cache path is bounded by ``timeout_s``: socket and
    connect timeouts, and no retries (redis-py 8 retries 3 times with backoff by default)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


# ---- the shells ------------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Breaker:
    """Counts failures and skips the cache for ``retry_after_s`` after each one."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        self.errors = 0
        self.skipped = 0
        self._skip_until_s = 0.0

    def allow(self) -> bool:
        if time.monotonic() >= self._skip_until_s:
            return True
        self.skipped += 1
        return False

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        self._skip_until_s = time.monotonic() + self.retry_after_s
        log.warning(
            "result cache %s unavailable (%s: %s); skipping it for %.1f s",
            self.name,
            type(exc).__name__,
            exc,
            self.retry_after_s,
        )

    def local(self, stats: CacheStats) -> CacheStats:
        return replace(stats, errors=self.errors, skipped=self.skipped)


def _check_args(client: Any, budget_bytes: int, policy: str, timeout_s: float) -> None:
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes} (use make_cache for 0)")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    connection_kwargs: dict[str, Any] = getattr(client, "get_connection_kwargs", dict)()
    if connection_kwargs.get("decode_responses"):
        raise ValueError("the cache needs a client created with decode_responses=False")


class Cache(Protocol):
    """What the gateway and asyncio workers use; ``ResultCache`` or ``NullCache``."""

    budget_bytes: int

    async def get(self, digest: str) -> bytes | None: ...
    async def put(self, digest: str, value: bytes) -> bool: ...
    async def clear(self) -> int: ...
    async def stats(self) -> CacheStats: ...
    async def footprint(self) -> CacheFootprint: ...


class SyncCache(Protocol):
    """The same over a sync client (worker threads); ``SyncResultCache`` or ``SyncNullCache``."""

    budget_bytes: int

    def get(self, digest: str) -> bytes | None: ...
    def put(self, digest: str, value: bytes) -> bool: ...
    def clear(self) -> int: ...
    def stats(self) -> CacheStats: ...
    def footprint(self) -> CacheFootprint: ...


class ResultCache:
    """The cache of one (deployment, node) over ``redis.asyncio``."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        prefix: str,
        *,
        budget_bytes: int,
        policy: Policy = "lfu",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        memory_ceiling_bytes: int = 0,
    ) -> None:
        _check_args(redis_client, budget_bytes, policy, timeout_s)
        self.redis = redis_client
        self.prefix = prefix
        self.budget_bytes = budget_bytes
        self.policy: Policy = policy
        self.timeout_s = timeout_s
        self._ops = _CacheOps(prefix, budget_bytes, policy, memory_ceiling_bytes)
        self._breaker = _Breaker(prefix, retry_after_s)

    async def _bounded(self, ops: _Ops[T], default: T) -> T:
        if not self._breaker.allow():
            ops.close()
            return default
        try:
            async with asyncio.timeout(self.timeout_s):
                return await _run_async(self.redis, ops)
        except (RedisError, OSError) as exc:  # the timeout raises TimeoutError, an OSError
            self._breaker.fail(exc)
            return default

    async def get(self, digest: str) -> bytes | None:
        """The cached value, or None on a miss, a timeout or a Redis failure."""
        return await self._bounded(self._ops.get(digest, _now_ms()), None)

    async def put(self, digest: str, value: bytes) -> bool:
        """True if the value is in the cache afterwards; False if refused, timed out or failed."""
        return await self._bounded(self._ops.put(digest, value, _now_ms()), False)

    async def clear(self) -> int:
        return await _run_async(self.redis, self._ops.clear())

    async def stats(self) -> CacheStats:
        return self._breaker.local(await _run_async(self.redis, self._ops.stats()))

    async def footprint(self) -> CacheFootprint:
        return await _run_async(self.redis, self._ops.footprint())


class SyncResultCache:
    """The cache of one (deployment, node) over a sync ``redis.Redis``; its calls are bounded by
    the client's socket timeouts (see ``sync_cache_client``)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str,
        *,
        budget_bytes: int,
        policy: Policy = "lfu",
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        memory_ceiling_bytes: int = 0,
    ) -> None:
        _check_args(redis_client, budget_bytes, policy, DEFAULT_TIMEOUT_S)
        self.redis = redis_client
        self.prefix = prefix
        self.budget_bytes = budget_bytes
        self.policy: Policy = policy
        self._ops = _CacheOps(prefix, budget_bytes, policy, memory_ceiling_bytes)
        self._breaker = _Breaker(prefix, retry_after_s)

    def _bounded(self, ops: _Ops[T], default: T) -> T:
        if not self._breaker.allow():
            ops.close()
            return default
        try:
            return _run_sync(self.redis, ops)
        except (RedisError, OSError) as exc:
            self._breaker.fail(exc)
            return default

    def get(self, digest: str) -> bytes | None:
        return self._bounded(self._ops.get(digest, _now_ms()), None)

    def put(self, digest: str, value: bytes) -> bool:
        return self._bounded(self._ops.put(digest, value, _now_ms()), False)

    def clear(self) -> int:
        return _run_sync(self.redis, self._ops.clear())

    def stats(self) -> CacheStats:
        return self._breaker.local(_run_sync(self.redis, self._ops.stats()))

    def footprint(self) -> CacheFootprint:
        return _run_sync(self.redis, self._ops.footprint())


class NullCache:
    """The cache when ``cache_size`` is 0: stores nothing, every get misses."""

    budget_bytes = 0

    async def get(self, digest: str) -> bytes | None:
        return None

    async def put(self, digest: str, value: bytes) -> bool:
        return False

    async def clear(self) -> int:
        return 0

    async def stats(self) -> CacheStats:
        return CacheStats()

    async def footprint(self) -> CacheFootprint:
        return CacheFootprint()


class SyncNullCache:
    """``NullCache`` for sync callers."""

    budget_bytes = 0

    def get(self, digest: str) -> bytes | None:
        return None

    def put(self, digest: str, value: bytes) -> bool:
        return False

    def clear(self) -> int:
        return 0

    def stats(self) -> CacheStats:
        return CacheStats()

    def footprint(self) -> CacheFootprint:
        return CacheFootprint()


def make_cache(
    redis_client: redis.asyncio.Redis,
    prefix: str,
    *,
    budget_bytes: int,
    policy: Policy = "lfu",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    memory_ceiling_bytes: int = 0,
) -> Cache:
    """``NullCache`` for a budget of 0, else a ``ResultCache``."""
    if budget_bytes == 0:
        return NullCache()
    return ResultCache(
        redis_client,
        prefix,
        budget_bytes=budget_bytes,
        policy=policy,
        timeout_s=timeout_s,
        retry_after_s=retry_after_s,
        memory_ceiling_bytes=memory_ceiling_bytes,
    )


def make_sync_cache(
    redis_client: redis.Redis,
    prefix: str,
    *,
    budget_bytes: int,
    policy: Policy = "lfu",
    retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    memory_ceiling_bytes: int = 0,
) -> SyncCache:
    """``SyncNullCache`` for a budget of 0, else a ``SyncResultCache``."""
    if budget_bytes == 0:
        return SyncNullCache()
    return SyncResultCache(
        redis_client,
        prefix,
        budget_bytes=budget_bytes,
        policy=policy,
        retry_after_s=retry_after_s,
        memory_ceiling_bytes=memory_ceiling_bytes,
    )
