"""Small pieces of the result cache, over fakeredis (with Lua): the fragment's helpers, the
Space-Saving and tie-break rules, clearing; reached through the real scripts (``DISPATCH``
reads, ``COMPLETE`` writes: ``tests/cache_driver.py``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import fakeredis
import fakeredis.aioredis
import pytest

from shared import keys, queue
from shared.cache import CacheStats, cache_digest
from shared.lua import compose, fragment
from tests.cache_driver import AsyncCache, SyncCache

DEP, NODE = "dep", "node"
INDEX, META, ENTRIES = keys.cache_index(DEP, NODE), keys.cache_meta(DEP, NODE), keys.cache_entries(DEP, NODE)


@pytest.fixture
def fake() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


def lua(client: fakeredis.FakeRedis, body: str, *args: Any) -> Any:
    return client.eval(compose("cache", body=body), 0, *args)


def footprint_of(client: fakeredis.FakeRedis, digest: str, value_bytes: int) -> int:
    body = "return cache_entry_footprint(tonumber(ARGV[2]), #ARGV[1])"
    return int(lua(client, body, digest, value_bytes))


def score(client: fakeredis.FakeRedis, digest: str) -> float | None:
    members: list[tuple[bytes, float]] = client.zrange(INDEX, 0, -1, withscores=True)  # type: ignore[assignment]
    for member, value in members:
        if member.decode().endswith(digest):
            return float(value)
    return None


# ---- digest ----------------------------------------------------------------------------------


def test_digest_is_128_bit_hex_and_length_framed() -> None:
    digest = cache_digest(b"tokens", "settings")
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    assert digest == cache_digest("tokens", b"settings")
    assert cache_digest("ab", "c") != cache_digest("a", "bc")
    assert cache_digest("abc") != cache_digest("abc", "")
    assert cache_digest() != cache_digest("")


# ---- the fragment ----------------------------------------------------------------------------


def test_fragment_defines_local_functions_only(fake: fakeredis.FakeRedis) -> None:
    code = re.sub(r"--[^\n]*", "", fragment("cache"))
    top_level = [line for line in code.splitlines() if line.strip() and not line[0].isspace()]
    assert top_level, "fragment is empty"
    assert all(line.startswith("local function cache_") or line == "end" for line in top_level), top_level
    assert lua(fake, "return 7") == 7
    assert fake.keys("*") == []


@pytest.mark.parametrize(
    ("requested", "allocated"),
    [
        (1, 8),
        (8, 8),
        (9, 16),
        (100, 112),
        (128, 128),
        (129, 160),
        (257, 320),
        (1025, 1280),
        (2000, 2048),
        (5000, 5120),
        (14337, 16384),
        (70000, 81920),
    ],
)
def test_alloc_bytes_follows_jemalloc_size_classes(
    fake: fakeredis.FakeRedis, requested: int, allocated: int
) -> None:
    assert lua(fake, "return cache_alloc_bytes(tonumber(ARGV[1]))", requested) == allocated


def test_header_records_footprint_and_sorts_largest_first(fake: fakeredis.FakeRedis) -> None:
    body = """
    local h = cache_header(tonumber(ARGV[1]), tonumber(ARGV[2]))
    local m = h .. ARGV[3]
    return {#h, cache_member_footprint(m), cache_member_digest(m), h}
    """
    size, footprint, digest, big = lua(fake, body, 1234, 1_700_000_000_000_000, "d1")
    assert (size, footprint, digest) == (26, 1234, b"d1")
    small = lua(fake, body, 99, 1_700_000_000_000_000, "d1")[3]
    older_big = lua(fake, body, 1234, 1_600_000_000_000_000, "d1")[3]
    assert sorted([small, big, older_big]) == [older_big, big, small]


def test_footprint_grows_with_digest_and_value(fake: fakeredis.FakeRedis) -> None:
    base = footprint_of(fake, "a" * 32, 1000)
    assert footprint_of(fake, "a" * 32, 2000) > base
    assert footprint_of(fake, "a" * 40, 1000) > base
    assert base > 1000 + 2 * 32


def test_tick_is_strictly_increasing_when_the_clock_goes_back(fake: fakeredis.FakeRedis) -> None:
    body = "return cache_num(cache_tick(ARGV[1], tonumber(ARGV[2])))"
    ticks = [int(lua(fake, body, META, now_ms)) for now_ms in (5_000, 5_000, 4_000, 6_000)]
    assert ticks == [5_000_000, 5_000_001, 5_000_002, 6_000_000]


# ---- policies over fakeredis -----------------------------------------------------------------


def sync_cache(client: fakeredis.FakeRedis, budget_bytes: int, policy: str = "lfu") -> SyncCache:
    return SyncCache(client, DEP, NODE, budget_bytes=budget_bytes, policy=policy)


def test_put_accounts_the_entry_footprint(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 100_000)
    assert cache.put("d1", b"x" * 500)
    assert cache.put("d2", b"y" * 1500)
    expected = footprint_of(fake, "d1", 500) + footprint_of(fake, "d2", 1500)
    assert cache.stats().used_bytes == expected
    assert cache.get("d1") == b"x" * 500
    assert cache.put("d1", b"x" * 500)  # already there: not counted twice
    stats = cache.stats()
    assert (stats.entries, stats.used_bytes, stats.stored, stats.hits) == (2, expected, 2, 1)


def test_space_saving_newcomer_starts_above_the_last_evicted(fake: fakeredis.FakeRedis) -> None:
    budget = 2 * footprint_of(fake, "a", 100)
    cache = sync_cache(fake, budget)
    assert cache.put("a", b"a" * 100)
    assert cache.get("a") and cache.get("a")
    assert cache.put("b", b"b" * 100)
    assert (score(fake, "a"), score(fake, "b")) == (3, 1)
    assert cache.put("c", b"c" * 100)  # evicts b (count 1), so c starts at 2
    assert (score(fake, "b"), score(fake, "c")) == (None, 2)
    assert cache.put("d", b"d" * 100)  # evicts c (2 < 3), d starts at 3
    assert (score(fake, "a"), score(fake, "c"), score(fake, "d")) == (3, None, 3)
    assert cache.stats().evictions == 2


def test_lfu_ties_evict_the_largest_then_the_oldest(fake: fakeredis.FakeRedis) -> None:
    small, big = footprint_of(fake, "s1", 100), footprint_of(fake, "b1", 900)
    cache = sync_cache(fake, small * 2 + big)
    for digest, size in [("s1", 100), ("b1", 900), ("s2", 100)]:
        assert cache.put(digest, b"v" * size)
    assert cache.put("s3", b"v" * 100)  # all counts 1: the big one goes first
    assert score(fake, "b1") is None and score(fake, "s1") == 1
    assert cache.put("m4", b"v" * 900)  # s1, s2 at count 1, s3 at 2: the oldest, s1, goes
    assert [score(fake, d) for d in ("s1", "s2", "s3", "m4")] == [None, 1, 2, 2]


def test_lru_evicts_the_least_recently_used(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 3 * footprint_of(fake, "a", 100), policy="lru")
    for digest in "abc":
        assert cache.put(digest, digest.encode() * 100)
    assert cache.get("a") == b"a" * 100
    assert cache.put("d", b"d" * 100)
    assert [cache.get(d) is not None for d in "abcd"] == [True, False, True, True]


def test_entry_larger_than_the_budget_is_refused_without_evicting(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 3000)
    assert cache.put("small", b"s" * 100)
    assert not cache.put("huge", b"h" * 3000)
    assert cache.get("huge") is None and cache.get("small") == b"s" * 100
    stats = cache.stats()
    assert (stats.entries, stats.rejected_too_large, stats.evictions) == (1, 1, 0)


def test_an_unaccounted_entry_is_a_miss_and_is_dropped(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 100_000)
    assert cache.put("kept", b"k" * 10)
    fake.hset(ENTRIES, "orphan1", b"0" * 26 + b"value")
    assert cache.get("orphan1") is None
    assert not fake.hexists(ENTRIES, "orphan1")
    assert cache.get("kept") == b"k" * 10


def test_clear_removes_every_key_and_the_counters(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 100_000)
    for i in range(5):
        assert cache.put(f"d{i}", b"v" * 100)
    fake.set(keys.stats(DEP, NODE), b"x")
    fake.set("other:key", b"x")
    assert cache.clear() == 5
    assert sorted(fake.keys("*")) == sorted([keys.stats(DEP, NODE).encode(), b"other:key"])
    assert cache.stats() == CacheStats(budget_bytes=100_000)
    assert cache.clear() == 0


def test_a_lookup_misses_without_queueing(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 10_000)
    assert cache.get("absent") is None
    assert fake.llen(keys.queue(DEP, NODE)) == 0
    assert cache.stats().misses == 1


async def test_async_cache_over_fakeredis() -> None:
    client = fakeredis.aioredis.FakeRedis()
    cache = AsyncCache(client, DEP, NODE, budget_bytes=10_000, policy="lru")
    assert await cache.put("d", b"value")
    assert await cache.get("d") == b"value"
    assert (await cache.stats()).entries == 1
    assert await cache.clear() == 1
    await client.aclose()


def test_budget_zero_trims_instead_of_storing(fake: fakeredis.FakeRedis) -> None:
    assert sync_cache(fake, 100_000).put("d", b"v" * 100)
    zero = sync_cache(fake, 0)
    assert not zero.put("e", b"v" * 100)
    assert zero.stats().entries == 0 and not fake.exists(ENTRIES)


def test_script_missing_from_the_server_is_loaded_again(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 10_000)
    assert cache.put("d", b"v")
    fake.script_flush()
    assert cache.get("d") == b"v"


def test_digest_of_the_same_text_hits(fake: fakeredis.FakeRedis) -> None:
    cache = sync_cache(fake, 10_000)
    assert cache.put(cache_digest("m", "t"), b"r")
    assert cache.get(cache_digest("m", "t")) == b"r" and cache.get(cache_digest("m", "u")) is None
    assert queue.run(fake, queue.audit(DEP, NODE))[2] == 1
