"""The result cache against a real redis-server: byte bound under concurrent writers, accounting
against MEMORY USAGE, policies, clearing. The cache is reached through the real scripts
(``DISPATCH`` reads, ``COMPLETE`` writes: ``tests/cache_driver.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from shared import keys, queue
from shared.cache import POLICIES, Policy, cache_digest
from shared.lua import compose
from tests.cache_driver import AsyncCache, CacheFootprint, SyncCache

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONCURRENT_SETTINGS = settings(SETTINGS, max_examples=25)
FOOTPRINT_BODY = "return cache_entry_footprint(tonumber(ARGV[2]), #ARGV[1])"


def fresh() -> tuple[str, str]:
    """A (deployment, node) of its own."""
    return f"dep-{uuid.uuid4().hex[:8]}", "node-1"


def value_for(key: int, size: int) -> bytes:
    """A value that says which key it belongs to, so a hit can be checked."""
    tag = f"k{key}|".encode()
    return (tag * (size // len(tag) + 1))[:size]


def footprint_bytes(client: redis.Redis, digest: str, value_bytes: int) -> int:
    return int(client.eval(compose("cache", body=FOOTPRINT_BODY), 0, digest, value_bytes))


def audit(client: redis.Redis, dn: tuple[str, str]) -> tuple[int, int, int, int]:
    """(meta.bytes, sum of recorded footprints, meta.entries, ZCARD index)."""
    return queue.run(client, queue.audit(*dn))


def assert_consistent(client: redis.Redis, cache: SyncCache) -> CacheFootprint:
    """The accounting equals the recorded footprints, within budget, and every entry is indexed."""
    footprint = cache.footprint()
    assert footprint.accounted_bytes == footprint.recorded_bytes <= cache.budget_bytes
    assert footprint.entries == footprint.indexed_entries == footprint.stored_entries
    indexed = {m[26:] for m in client.zrange(keys.cache_index(cache.deployment_id, cache.node_id), 0, -1)}
    stored = set(client.hkeys(keys.cache_entries(cache.deployment_id, cache.node_id)))
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
    dn = fresh()
    barrier = threading.Barrier(len(writers))

    def run(ops: list[tuple[str, int, int]]) -> int:
        """Returns the number of puts too large for the budget."""
        client = redis.Redis.from_url(redis_url)
        too_large = 0
        try:
            cache = SyncCache(client, *dn, budget_bytes=budget, policy=policy)
            barrier.wait()
            for kind, key, size in ops:
                digest = cache_digest(str(key))
                if kind == "put":
                    cache.put(digest, value_for(key, size))
                    too_large += footprint_bytes(client, digest, size) > budget
                else:
                    got = cache.get(digest)
                    assert got is None or got == value_for(key, len(got))
                accounted, recorded, entries, indexed = audit(client, dn)
                assert accounted == recorded <= budget
                assert entries == indexed
            return too_large
        finally:
            client.close()

    with ThreadPoolExecutor(len(writers)) as pool:
        too_large = sum(pool.map(run, writers))
    client = redis.Redis.from_url(redis_url)
    try:
        cache = SyncCache(client, *dn, budget_bytes=budget, policy=policy)
        # every value that fits went in (no ceiling: nothing else refuses one); only the others were refused
        assert cache.stats().rejected_too_large == too_large
        assert_consistent(client, cache)
        cache.clear()
    finally:
        client.close()


async def test_concurrent_asyncio_tasks_never_exceed_the_budget(redis_url: str) -> None:
    dn = fresh()
    budget = 20_000
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(6)]

    async def writer(n: int, client: redis.asyncio.Redis) -> None:
        cache = AsyncCache(client, *dn, budget_bytes=budget)
        for i in range(60):
            await cache.put(cache_digest(f"{n}:{i}"), b"v" * (100 + 37 * i))
            assert int(await client.hget(keys.cache_meta(*dn), "bytes") or 0) <= budget

    try:
        await asyncio.gather(*(writer(n, c) for n, c in enumerate(clients)))
        footprint = await AsyncCache(clients[0], *dn, budget_bytes=budget).footprint()
        assert footprint.accounted_bytes == footprint.recorded_bytes <= budget
        await queue.arun(clients[0], queue.clear(*dn))
    finally:
        for client in clients:
            await client.aclose()


def test_clear_while_writers_run_leaves_no_unaccounted_keys(redis_url: str, sync_client: redis.Redis) -> None:
    dn = fresh()
    stop = threading.Event()

    def run(n: int) -> None:
        client = redis.Redis.from_url(redis_url)
        cache = SyncCache(client, *dn, budget_bytes=40_000)
        i = 0
        while not stop.is_set():
            cache.put(cache_digest(f"{n}:{i % 50}"), b"v" * (200 + i % 700))
            cache.get(cache_digest(f"{n}:{(i * 7) % 50}"))
            i += 1
        client.close()

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(run, n) for n in range(3)]
        for _ in range(20):
            SyncCache(sync_client, *dn, budget_bytes=40_000).clear()
            time.sleep(0.005)
        stop.set()
        for future in futures:
            future.result()
    assert_consistent(sync_client, SyncCache(sync_client, *dn, budget_bytes=40_000))


# ---- accounting against MEMORY USAGE ----------------------------------------------------------


@SETTINGS
@given(sizes=st.lists(st.integers(0, 6_000), min_size=130, max_size=300), policy=st.sampled_from(POLICIES))
def test_accounting_agrees_with_memory_usage(redis_url: str, sizes: list[int], policy: Policy) -> None:
    """Over 128 entries (the index a skiplist) and one value over 38 bytes (the entries hash a
    hashtable: a listpack holds only values of 64 bytes with their 26-byte header), the
    accounting is within 10% of Redis' own count."""
    assume(max(sizes) > 38)
    client = redis.Redis.from_url(redis_url)
    cache = SyncCache(client, *fresh(), budget_bytes=10**9, policy=policy)
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
    typical_sizes=st.lists(st.integers(800, 2_000), min_size=50, max_size=128),
    policy=st.sampled_from(POLICIES),
)
def test_small_cache_is_accounted_conservatively(
    redis_url: str, sizes: list[int], typical_sizes: list[int], policy: Policy
) -> None:
    """Up to 128 members Redis packs the index into a listpack, about 77 bytes a member cheaper
    than the skiplist the accounting assumes (and the entries hash too while every value is
    short): the count is then never under Redis' own, over it by at most 160 bytes an entry, and
    within 10% for results of 800 bytes or more."""
    client = redis.Redis.from_url(redis_url)
    try:
        for values, typical in ((sizes, False), (typical_sizes, True)):
            cache = SyncCache(client, *fresh(), budget_bytes=10**9, policy=policy)
            for i, size in enumerate(values):
                assert cache.put(cache_digest(str(i)), value_for(i, size))
            footprint = assert_consistent(client, cache)
            over_bytes = footprint.accounted_bytes - footprint.redis_bytes
            assert 0 <= over_bytes <= 160 * len(values)
            if typical:
                assert_agrees_with_redis(footprint)
            cache.clear()
    finally:
        client.close()


@pytest.mark.parametrize("policy", POLICIES)
def test_accounting_agrees_after_heavy_eviction(sync_client: redis.Redis, policy: Policy) -> None:
    cache = SyncCache(sync_client, *fresh(), budget_bytes=300_000, policy=policy)
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
    dn = fresh()
    cache = AsyncCache(async_client, *dn, budget_bytes=0)
    assert not await cache.put("d", b"v")
    assert await cache.get("d") is None
    assert not await async_client.exists(keys.cache_index(*dn), keys.cache_entries(*dn))


async def test_too_large_entry_is_refused(async_client: redis.asyncio.Redis) -> None:
    cache = AsyncCache(async_client, *fresh(), budget_bytes=5_000)
    assert await cache.put("small", b"s" * 1_000)
    assert not await cache.put("huge", b"h" * 5_000)
    assert await cache.get("huge") is None
    assert await cache.get("small") == b"s" * 1_000
    stats = await cache.stats()
    assert (stats.entries, stats.rejected_too_large, stats.evictions, stats.stored) == (1, 1, 0, 1)
    await cache.clear()


async def test_clear_empties_the_cache(async_client: redis.asyncio.Redis) -> None:
    dn = fresh()
    cache = AsyncCache(async_client, *dn, budget_bytes=100_000)
    for i in range(20):
        assert await cache.put(cache_digest(str(i)), b"v" * 500)
    assert await queue.arun(async_client, queue.clear(*dn)) == 20
    assert not await async_client.exists(*queue.cache_keys(*dn))
    stats = await cache.stats()
    assert (stats.entries, stats.used_bytes, stats.hits, stats.misses) == (0, 0, 0, 0)
    assert await cache.get(cache_digest("0")) is None


def test_every_key_of_a_cache_is_in_one_cluster_slot(sync_client: redis.Redis) -> None:
    dn = fresh()
    cache = SyncCache(sync_client, *dn, budget_bytes=100_000)
    for i in range(10):
        cache.put(cache_digest(str(i)), b"v")
    found = [k for k in queue.cache_keys(*dn) if sync_client.exists(k)]
    assert len(found) == 3
    assert len({key_slot(k.encode()) for k in (*found, *keys.dn_keys(*dn))}) == 1
    cache.clear()


@pytest.mark.parametrize("policy", POLICIES)
def test_hot_items_under_a_scan(sync_client: redis.Redis, policy: Policy) -> None:
    """LFU keeps items hit often while one-time keys stream through; LRU lets the scan flush them."""
    digest = cache_digest
    budget = 40 * footprint_bytes(sync_client, digest("x"), 500)
    cache = SyncCache(sync_client, *fresh(), budget_bytes=budget, policy=policy)
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
    budget = 3 * footprint_bytes(sync_client, "a", 1_000)
    cache = SyncCache(sync_client, *fresh(), budget_bytes=budget, policy="lru")
    for d in "abc":
        assert cache.put(d, d.encode() * 1_000)
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    assert cache.put("d", b"d" * 1_000)  # b is the least recently used
    assert [cache.get(d) is not None for d in "abcd"] == [True, False, True, True]
    cache.clear()
