"""``TAKE`` with a padded-token budget, run by a real Redis: how many queued messages one
allocation takes depends on their estimated tokens, not on a fixed count."""

from __future__ import annotations

import redis

from shared import keys, queue
from shared.queue import TakeArgs
from workers.batch_plan import TokenEstimate

DEP, NODE = "t", "n"
QUEUE, PROCESSING, BULK = keys.queue(DEP, NODE), keys.processing(DEP, NODE, "a0"), keys.bulk_queue(DEP, NODE)
ESTIMATE = TokenEstimate(overhead_bytes=100, bytes_per_token=4.0, max_row_tokens=512)


def message(text_bytes: int, tag: int) -> bytes:
    """A message of ``ESTIMATE.overhead_bytes`` envelope plus ``text_bytes`` of text."""
    head = f"{tag:06d}".encode()
    return head + b"e" * (ESTIMATE.overhead_bytes - len(head)) + b"t" * text_bytes


def take(client: redis.Redis, n: int, budget: int, peers: int = 1) -> list[bytes]:
    """The interactive lane's items (no bulk lane here: bulk_n 0)."""
    args = TakeArgs(n, peers, 0, False, budget, ESTIMATE.overhead_bytes, ESTIMATE.bytes_per_token, ESTIMATE.max_row_tokens)
    taken = queue.run(client, queue.take(DEP, NODE, "a0", args))
    assert taken.bulk == []
    return taken.interactive


def fill(client: redis.Redis, text_bytes: list[int]) -> list[bytes]:
    """Queue messages oldest first (producers LPUSH, allocations take from the right)."""
    items = [message(size, i) for i, size in enumerate(text_bytes)]
    for item in items:
        client.lpush(QUEUE, item)
    return items


def test_short_messages_are_taken_wide_and_long_ones_narrow(redis_client: redis.Redis) -> None:
    short = fill(redis_client, [40] * 300)  # 12 tokens each
    assert take(redis_client, 1000, budget=2048) == short[:170]  # 170 x 12 = 2040
    redis_client.delete(QUEUE, PROCESSING)
    long = fill(redis_client, [1200] * 50)  # 302 tokens each
    assert take(redis_client, 1000, budget=2048) == long[:6]  # 6 x 302 = 1812


def test_the_longest_so_far_prices_every_row_and_the_held_item_counts(redis_client: redis.Redis) -> None:
    redis_client.lpush(PROCESSING, message(400, 99))  # popped already: 102 tokens
    items = fill(redis_client, [8, 8, 2000, 8])  # 4, 4, 502, 4 tokens
    # held + 2 short ones: 3 x 102 = 306; the long one would make 4 x 502 = 2008 > 1024
    assert take(redis_client, 10, budget=1024) == items[:2]
    # with room for it, the long one prices all five rows: 5 x 502 = 2510
    assert take(redis_client, 10, budget=2600) == items[2:]


def test_at_least_one_when_nothing_is_held_and_the_count_and_share_still_bound(redis_client: redis.Redis) -> None:
    items = fill(redis_client, [100_000, 8])  # truncated: max_row_tokens
    assert take(redis_client, 10, budget=16) == items[:1]
    redis_client.delete(QUEUE, PROCESSING)
    items = fill(redis_client, [8] * 10)
    assert take(redis_client, 3, budget=4096) == items[:3]
    assert take(redis_client, 10, budget=4096, peers=2) == items[3:7]  # ceil(7 / 2) = 4


def test_the_lua_estimate_is_the_python_one(redis_client: redis.Redis) -> None:
    """Ten messages whose estimates add up to the budget exactly are taken; one byte more is one fewer."""
    for size in (0, 1, 3, 4, 5, 37, 2047, 5000):
        tokens = ESTIMATE.tokens(ESTIMATE.overhead_bytes + size)
        redis_client.delete(QUEUE, PROCESSING)
        fill(redis_client, [size] * 12)
        assert len(take(redis_client, 100, budget=10 * tokens)) == 10
        redis_client.delete(QUEUE, PROCESSING)
        fill(redis_client, [size] * 12)
        assert len(take(redis_client, 100, budget=10 * tokens - 1)) == 9
