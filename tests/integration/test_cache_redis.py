"""The result cache against a real redis-server: byte bound under concurrent writers, accounting
against MEMORY USAGE, policies, clearing, and a Redis that is down or slow."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from shared import keys
from shared.cache import (
    POLICIES,
    CacheFootprint,
    NullCache,
    Policy,
    ResultCache,
    SyncResultCache,
    cache_digest,
    cache_scripts,
    clear_cache,
    make_cache,
    scan_pattern,
    sync_cache_client,
)
from shared.lua import compose
from tests.redis_server import free_port

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONCURRENT_SETTINGS = settings(SETTINGS, max_examples=25)
FOOTPRINT_BODY = "return cache_entry_footprint(#(ARGV[1] .. ':e:' .. ARGV[2]), tonumber(ARGV[3]), #ARGV[2])"


def fresh_prefix() -> str:
    return keys.cache_prefix(f"dep-{uuid.uuid4().hex[:8]}", "node-1")


def value_for(key: int, size: int) -> bytes:
    """A value that says which key it belongs to, so a hit can be checked."""
    tag = f"k{key}|".encode()
    return (tag * (size // len(tag) + 1))[:size]


def footprint_bytes(client: redis.Redis, prefix: str, digest: str, value_bytes: int) -> int:
    return int(client.eval(compose("cache", body=FOOTPRINT_BODY), 0, prefix, digest, value_bytes))


def audit(client: redis.Redis, prefix: str) -> tuple[int, int, int, int]:
    """(meta.bytes, sum of recorded footprints, meta.entries, ZCARD index)."""
    script = cache_scripts().audit
    accounted, recorded, entries, indexed = client.eval(script.source, 0, prefix)
    return int(accounted), int(recorded), int(entries), int(indexed)


def assert_consistent(client: redis.Redis, cache: SyncResultCache) -> CacheFootprint:
    """The accounting equals the recorded footprints, within budget, and every entry key is indexed."""
    footprint = cache.footprint()
    assert footprint.accounted_bytes == footprint.recorded_bytes <= cache.budget_bytes
    assert footprint.entries == footprint.indexed_entries
    indexed = {m[26:] for m in client.zrange(f"{cache.prefix}:idx", 0, -1)}
    stored = {
        k[len(cache.prefix) + 3 :]
        for k in client.scan_iter(match=scan_pattern(cache.prefix))
        if k.startswith(f"{cache.prefix}:e:".encode())
    }
    assert stored == indexed
    return footprint


def assert_agrees_with_redis(footprint: CacheFootprint, tolerance: float = 0.10) -> None:
    error = abs(footprint.accounted_bytes - footprint.redis_bytes) / footprint.redis_bytes
    assert error <= tolerance, footprint


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def async_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# ---- byte bound under concurrent writers ------------------------------------------------------


@st.composite
def concurrent_workloads(draw: st.DrawFn) -> tuple[int, Policy, list[list[tuple[str, int, int]]]]:
    budget = draw(st.integers(1_000, 30_000))
    fitting = st.integers(0, 2_500)
    too_large = st.integers(budget // 2, budget * 2)
    put = st.tuples(st.just("put"), st.integers(0, 30), st.one_of(fitting, fitting, fitting, too_large))
    get = st.tuples(st.just("get"), st.integers(0, 30), st.just(0))
    ops = st.lists(st.one_of(put, put, get), min_size=1, max_size=30)
    writers = draw(st.lists(ops, min_size=2, max_size=4))
    return budget, draw(st.sampled_from(POLICIES)), writers


@CONCURRENT_SETTINGS
@given(workload=concurrent_workloads())
def test_concurrent_writers_never_exceed_the_budget(
    redis_url: str, workload: tuple[int, Policy, list[list[tuple[str, int, int]]]]
) -> None:
    budget, policy, writers = workload
    prefix = fresh_prefix()
    barrier = threading.Barrier(len(writers))

    def run(ops: list[tuple[str, int, int]]) -> int:
        client = redis.Redis.from_url(redis_url)
        try:
            cache = SyncResultCache(client, prefix, budget_bytes=budget, policy=policy)
            barrier.wait()
            for kind, key, size in ops:
                digest = cache_digest(str(key))
                if kind == "put":
                    stored = cache.put(digest, value_for(key, size))
                    # a value that fits is in the cache afterwards (stored now, or already there);
                    # one that does not fit is refused unless another writer stored the key
                    assert stored or footprint_bytes(client, prefix, digest, size) > budget
                else:
                    got = cache.get(digest)
                    assert got is None or got == value_for(key, len(got))
                accounted, recorded, entries, indexed = audit(client, prefix)
                assert accounted == recorded <= budget
                assert entries == indexed
            return cache.stats().errors
        finally:
            client.close()

    with ThreadPoolExecutor(len(writers)) as pool:
        errors = list(pool.map(run, writers))
    assert errors == [0] * len(writers)
    client = redis.Redis.from_url(redis_url)
    try:
        cache = SyncResultCache(client, prefix, budget_bytes=budget, policy=policy)
        assert_consistent(client, cache)
        cache.clear()
    finally:
        client.close()


async def test_concurrent_asyncio_tasks_never_exceed_the_budget(redis_url: str) -> None:
    prefix = fresh_prefix()
    budget = 20_000
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(6)]

    async def writer(n: int, client: redis.asyncio.Redis) -> None:
        cache = ResultCache(client, prefix, budget_bytes=budget, timeout_s=5)
        for i in range(60):
            await cache.put(cache_digest(f"{n}:{i}"), b"v" * (100 + 37 * i))
            assert int(await client.hget(f"{prefix}:meta", "bytes") or 0) <= budget

    try:
        await asyncio.gather(*(writer(n, c) for n, c in enumerate(clients)))
        footprint = await ResultCache(clients[0], prefix, budget_bytes=budget).footprint()
        assert footprint.accounted_bytes == footprint.recorded_bytes <= budget
        await clear_cache(clients[0], prefix)
    finally:
        for client in clients:
            await client.aclose()


def test_clear_while_writers_run_leaves_no_unaccounted_keys(redis_url: str, sync_client: redis.Redis) -> None:
    prefix = fresh_prefix()
    stop = threading.Event()

    def run(n: int) -> None:
        client = redis.Redis.from_url(redis_url)
        cache = SyncResultCache(client, prefix, budget_bytes=40_000)
        i = 0
        while not stop.is_set():
            cache.put(cache_digest(f"{n}:{i % 50}"), b"v" * (200 + i % 700))
            cache.get(cache_digest(f"{n}:{(i * 7) % 50}"))
            i += 1
        client.close()

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(run, n) for n in range(3)]
        for _ in range(20):
            SyncResultCache(sync_client, prefix, budget_bytes=40_000).clear()
            time.sleep(0.005)
        stop.set()
        for future in futures:
            future.result()
    assert_consistent(sync_client, SyncResultCache(sync_client, prefix, budget_bytes=40_000))


# ---- accounting against MEMORY USAGE ----------------------------------------------------------


@SETTINGS
@given(sizes=st.lists(st.integers(0, 6_000), min_size=130, max_size=300), policy=st.sampled_from(POLICIES))
def test_accounting_agrees_with_memory_usage(redis_url: str, sizes: list[int], policy: Policy) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = SyncResultCache(client, fresh_prefix(), budget_bytes=10**9, policy=policy)
    try:
        for i, size in enumerate(sizes):
            assert cache.put(cache_digest(str(i)), value_for(i, size))
        for i in range(0, len(sizes), 3):
            assert cache.get(cache_digest(str(i))) is not None
        footprint = assert_consistent(client, cache)
        assert footprint.entries == len(sizes)
        assert_agrees_with_redis(footprint)
    finally:
        cache.clear()
        client.close()


@SETTINGS
@given(
    sizes=st.lists(st.integers(0, 2_000), min_size=50, max_size=128),
    typical_sizes=st.lists(st.integers(600, 2_000), min_size=50, max_size=128),
    policy=st.sampled_from(POLICIES),
)
def test_small_cache_is_accounted_conservatively(
    redis_url: str, sizes: list[int], typical_sizes: list[int], policy: Policy
) -> None:
    """Up to 128 members Redis packs the index into a listpack, about 77 bytes a member cheaper
    than the skiplist the accounting assumes: the count is then never under Redis' own, over it
    by at most 90 bytes an entry, and within 10% for results of 600 bytes or more."""
    client = redis.Redis.from_url(redis_url)
    try:
        for values, typical in ((sizes, False), (typical_sizes, True)):
            cache = SyncResultCache(client, fresh_prefix(), budget_bytes=10**9, policy=policy)
            for i, size in enumerate(values):
                assert cache.put(cache_digest(str(i)), value_for(i, size))
            footprint = assert_consistent(client, cache)
            over_bytes = footprint.accounted_bytes - footprint.redis_bytes
            assert 0 <= over_bytes <= 90 * len(values)
            if typical:
                assert_agrees_with_redis(footprint)
            cache.clear()
    finally:
        client.close()


@pytest.mark.parametrize("policy", POLICIES)
def test_accounting_agrees_after_heavy_eviction(sync_client: redis.Redis, policy: Policy) -> None:
    cache = SyncResultCache(sync_client, fresh_prefix(), budget_bytes=300_000, policy=policy)
    for i in range(1_500):
        cache.put(cache_digest(str(i)), value_for(i, 200 + (i * 7919) % 1_800))
        if i % 4 == 0:
            cache.get(cache_digest(str(i // 2)))
    stats = cache.stats()
    assert stats.evictions > 1_000 and stats.entries > 128
    assert_agrees_with_redis(assert_consistent(sync_client, cache))
    cache.clear()


# ---- behaviour ------------------------------------------------------------------------------


async def test_budget_zero_stores_nothing(async_client: redis.asyncio.Redis) -> None:
    prefix = fresh_prefix()
    cache = make_cache(async_client, prefix, budget_bytes=0)
    assert isinstance(cache, NullCache)
    assert not await cache.put("d", b"v")
    assert await cache.get("d") is None
    put = cache_scripts().put  # the script itself refuses a zero budget without writing
    assert await async_client.eval(put.source, 0, prefix, "d", b"v", 0, "lfu", 1) == 0
    assert [k async for k in async_client.scan_iter(match=scan_pattern(prefix))] == []


async def test_too_large_entry_is_refused(async_client: redis.asyncio.Redis) -> None:
    cache = ResultCache(async_client, fresh_prefix(), budget_bytes=5_000)
    assert await cache.put("small", b"s" * 1_000)
    assert not await cache.put("huge", b"h" * 5_000)
    assert await cache.get("huge") is None
    assert await cache.get("small") == b"s" * 1_000
    stats = await cache.stats()
    assert (stats.entries, stats.rejected_too_large, stats.evictions, stats.stored) == (1, 1, 0, 1)
    await cache.clear()


async def test_clear_empties_the_cache(async_client: redis.asyncio.Redis) -> None:
    prefix = fresh_prefix()
    cache = ResultCache(async_client, prefix, budget_bytes=100_000)
    for i in range(20):
        assert await cache.put(cache_digest(str(i)), b"v" * 500)
    assert await clear_cache(async_client, prefix) == 20
    assert [k async for k in async_client.scan_iter(match=scan_pattern(prefix))] == []
    stats = await cache.stats()
    assert (stats.entries, stats.used_bytes, stats.hits, stats.misses) == (0, 0, 0, 0)
    assert await cache.get(cache_digest("0")) is None


def test_every_key_of_a_cache_is_in_one_cluster_slot(sync_client: redis.Redis) -> None:
    prefix = fresh_prefix()
    cache = SyncResultCache(sync_client, prefix, budget_bytes=100_000)
    for i in range(10):
        cache.put(cache_digest(str(i)), b"v")
    found = list(sync_client.scan_iter(match=scan_pattern(prefix)))
    assert len(found) == 12
    assert len({key_slot(k) for k in found}) == 1
    cache.clear()


@pytest.mark.parametrize("policy", POLICIES)
def test_hot_items_under_a_scan(sync_client: redis.Redis, policy: Policy) -> None:
    """LFU keeps items hit often while one-time keys stream through; LRU lets the scan flush them."""
    digest = cache_digest
    budget = 40 * footprint_bytes(sync_client, fresh_prefix(), digest("x"), 500)
    cache = SyncResultCache(sync_client, fresh_prefix(), budget_bytes=budget, policy=policy)
    hot = [digest(f"hot{i}") for i in range(8)]
    for d in hot:
        assert cache.put(d, b"h" * 500)
    for _ in range(30):
        for d in hot:
            assert cache.get(d) is not None
    for i in range(400):
        if cache.get(digest(f"scan{i}")) is None:
            cache.put(digest(f"scan{i}"), b"s" * 500)
    kept = sum(cache.get(d) is not None for d in hot)
    assert kept == (len(hot) if policy == "lfu" else 0)
    cache.clear()


def test_lru_evicts_the_least_recent(sync_client: redis.Redis) -> None:
    prefix = fresh_prefix()
    budget = 3 * footprint_bytes(sync_client, prefix, "a", 1_000)
    cache = SyncResultCache(sync_client, prefix, budget_bytes=budget, policy="lru")
    for d in "abc":
        assert cache.put(d, d.encode() * 1_000)
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    assert cache.put("d", b"d" * 1_000)  # b is the least recently used
    assert [cache.get(d) is not None for d in "abcd"] == [True, False, True, True]
    cache.clear()


# ---- a Redis that is down or slow -------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


async def test_async_cache_with_redis_down_misses_quickly() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=free_port())
    cache = ResultCache(client, fresh_prefix(), budget_bytes=10_000, timeout_s=0.1)
    started = time.monotonic()
    assert await cache.get("d") is None
    assert await cache.put("d", b"v") is False
    assert await cache.get("d") is None
    assert time.monotonic() - started < 3.0  # never the client's default wait; slack for a loaded machine
    await client.aclose()


async def test_async_cache_with_redis_slow_misses_after_the_timeout(silent_server: int) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=silent_server)
    cache = ResultCache(client, fresh_prefix(), budget_bytes=10_000, timeout_s=0.1, retry_after_s=0)
    started = time.monotonic()
    assert await cache.get("d") is None
    assert await cache.put("d", b"v") is False
    assert 0.15 <= time.monotonic() - started < 3.0
    await client.aclose()


@pytest.mark.parametrize("server", ["down", "slow"])
def test_sync_cache_with_redis_down_or_slow_misses_quickly(silent_server: int, server: str) -> None:
    port = free_port() if server == "down" else silent_server
    client = sync_cache_client(f"redis://127.0.0.1:{port}/0", timeout_s=0.1)
    cache = SyncResultCache(client, fresh_prefix(), budget_bytes=10_000, retry_after_s=0)
    started = time.monotonic()
    assert cache.get("d") is None
    assert cache.put("d", b"v") is False
    assert time.monotonic() - started < 3.0  # never the client's default wait; slack for a loaded machine
    client.close()
