"""``shared/lua/stats.lua`` against a real redis-server, read back through ``gateway.stats``."""

from __future__ import annotations

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.stats import (
    INCR_SCRIPT,
    RECORD_SCRIPT,
    MinuteTotals,
    NodeCounters,
    last_minute,
    parse_counters,
)
from shared import keys
from shared.lua import compose

START_MS = 1_700_000_000_000
MINUTE_MS = 60_000
KEY = keys.stats("dep-1", "node-1")


def record(
    client: redis.Redis,
    now_ms: int,
    results: int,
    cache_hits: int = 0,
    time_ms_sum: float = 0.0,
    nohit_time_ms_sum: float = 0.0,
    errors: int = 0,
) -> None:
    args = (START_MS, now_ms, results, cache_hits, time_ms_sum, nohit_time_ms_sum, errors)
    client.eval(RECORD_SCRIPT, 1, KEY, *args)


def counters(client: redis.Redis) -> NodeCounters:
    return parse_counters(client.hgetall(KEY))


def test_totals_and_first_bucket(redis_client: redis.Redis) -> None:
    record(redis_client, START_MS + 1_000, 3, cache_hits=1, time_ms_sum=30.5, nohit_time_ms_sum=30.0)
    record(redis_client, START_MS + 2_000, 2, time_ms_sum=20.0, nohit_time_ms_sum=20.0, errors=1)
    record(redis_client, START_MS + 3_000, 0, errors=2)
    c = counters(redis_client)
    assert c.inference_count == 5
    assert c.inference_time_ms_sum == 50.5
    assert c.nohit_count == 4
    assert c.nohit_time_ms_sum == 50.0
    assert c.cache_hit_count == 1
    assert c.error_count == 3
    assert c.last_access_ms == START_MS + 2_000  # errors alone do not touch last access
    assert (c.bucket_index, c.bucket) == (0, MinuteTotals(5, 50.5, 1))
    assert (c.prev_bucket_index, c.prev_bucket) == (-1, MinuteTotals())
    assert c.peak_throughput_per_minute == 5


def test_errors_only_create_no_buckets(redis_client: redis.Redis) -> None:
    record(redis_client, START_MS, 0, errors=1)
    assert redis_client.hgetall(KEY) == {b"error_count": b"1"}


def test_buckets_roll_and_peak(redis_client: redis.Redis) -> None:
    record(redis_client, START_MS + 5_000, 4, time_ms_sum=40.0, nohit_time_ms_sum=40.0)  # bucket 0
    record(redis_client, START_MS + 59_999, 1, cache_hits=1, time_ms_sum=1.0)  # bucket 0
    c = counters(redis_client)
    assert (c.bucket_index, c.bucket, c.peak_throughput_per_minute) == (0, MinuteTotals(5, 41.0, 1), 5)

    # next bucket: the live one becomes prev
    record(redis_client, START_MS + 60_000, 2, time_ms_sum=10.0, nohit_time_ms_sum=10.0)  # bucket 1
    c = counters(redis_client)
    assert (c.bucket_index, c.bucket) == (1, MinuteTotals(2, 10.0, 0))
    assert (c.prev_bucket_index, c.prev_bucket) == (0, MinuteTotals(5, 41.0, 1))
    assert c.peak_throughput_per_minute == 5
    assert last_minute(c, start_ms=START_MS, now_ms=START_MS + 61_000) == MinuteTotals(5, 41.0, 1)
    assert last_minute(c, start_ms=START_MS, now_ms=START_MS + 121_000) == MinuteTotals(2, 10.0, 0)
    assert last_minute(c, start_ms=START_MS, now_ms=START_MS + 180_000) == MinuteTotals()

    # a gap of more than one bucket: prev is zeroed at index new-1
    for _ in range(6):  # bucket 4
        record(redis_client, START_MS + 4 * MINUTE_MS + 1, 1, time_ms_sum=2.0, nohit_time_ms_sum=2.0)
    c = counters(redis_client)
    assert (c.bucket_index, c.bucket) == (4, MinuteTotals(6, 12.0, 0))
    assert (c.prev_bucket_index, c.prev_bucket) == (3, MinuteTotals())
    assert c.peak_throughput_per_minute == 6
    assert last_minute(c, start_ms=START_MS, now_ms=START_MS + 4 * MINUTE_MS + 2) == MinuteTotals()
    assert last_minute(c, start_ms=START_MS, now_ms=START_MS + 5 * MINUTE_MS) == MinuteTotals(6, 12.0, 0)

    # a late result stamped in the previous bucket lands there; an older one only in totals
    record(redis_client, START_MS + 3 * MINUTE_MS + 5, 1, time_ms_sum=1.5, nohit_time_ms_sum=1.5)
    record(redis_client, START_MS + 1 * MINUTE_MS, 1, time_ms_sum=1.0, nohit_time_ms_sum=1.0)
    c = counters(redis_client)
    assert (c.prev_bucket_index, c.prev_bucket) == (3, MinuteTotals(1, 1.5, 0))
    assert (c.bucket_index, c.bucket) == (4, MinuteTotals(6, 12.0, 0))
    assert c.inference_count == 5 + 2 + 6 + 2


def test_incr(redis_client: redis.Redis) -> None:
    assert redis_client.eval(INCR_SCRIPT, 1, KEY, "rejected_execution_count", 1) == 1
    assert redis_client.eval(INCR_SCRIPT, 1, KEY, "rejected_execution_count", 2) == 3
    assert redis_client.eval(INCR_SCRIPT, 1, KEY, "timeout_count", 1) == 1
    c = counters(redis_client)
    assert (c.rejected_execution_count, c.timeout_count, c.inference_count) == (3, 1, 0)


def test_fragment_composes_with_numbers_from_the_body(redis_client: redis.Redis) -> None:
    # Callers in other scripts pass Lua numbers (already tonumber'd), not strings.
    script = compose(
        "stats",
        body=f"""
stats_record(KEYS[1], {START_MS}, {START_MS + 61_000}, 2, 1, 7.25, 5, 0)
stats_incr(KEYS[1], 'timeout_count', 1)
return 1
""",
    )
    assert redis_client.eval(script, 1, KEY) == 1
    c = counters(redis_client)
    assert (c.inference_count, c.cache_hit_count, c.nohit_count, c.timeout_count) == (2, 1, 1, 1)
    assert (c.inference_time_ms_sum, c.nohit_time_ms_sum) == (7.25, 5.0)
    assert (c.bucket_index, c.last_access_ms) == (1, START_MS + 61_000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 150_000), st.integers(1, 3), st.integers(0, 3)),
        min_size=1,
        max_size=25,
    ),
    st.integers(0, 200_000),
)
def test_matches_a_model_of_the_buckets(
    redis_client: redis.Redis, steps: list[tuple[int, int, int]], read_delay_ms: int
) -> None:
    """Results in time order: peak, totals and the last completed minute match a plain count."""
    redis_client.delete(KEY)
    now_ms = START_MS
    per_bucket: dict[int, list[int]] = {}
    for gap_ms, results, hits in steps:
        now_ms += gap_ms
        hits = min(hits, results)
        record(redis_client, now_ms, results, cache_hits=hits, time_ms_sum=float(results))
        bucket = per_bucket.setdefault((now_ms - START_MS) // MINUTE_MS, [0, 0])
        bucket[0] += results
        bucket[1] += hits

    c = counters(redis_client)
    assert c.inference_count == sum(r for _, r, _ in steps)
    assert c.peak_throughput_per_minute == max(count for count, _ in per_bucket.values())
    read_ms = now_ms + read_delay_ms
    completed = per_bucket.get((read_ms - START_MS) // MINUTE_MS - 1, [0, 0])
    assert last_minute(c, start_ms=START_MS, now_ms=read_ms) == MinuteTotals(
        completed[0], float(completed[0]), completed[1]
    )
