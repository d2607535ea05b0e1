"""The search lane against a real Redis: ``TAKE`` serves the interactive queue first, never mixes
the lanes in one take, gives bulk its turn when asked (the allocation's bounded share) or when
the interactive lane is empty, and keeps each lane's 1/peers share; ``_LaneState`` asks for
bulk after ``BULK_EVERY`` interactive takes that left bulk waiting."""

from __future__ import annotations

import redis

from shared import keys, queue
from shared.queue import TakeArgs
from workers.allocation import BULK_EVERY, _LaneState

DEP, NODE = "lanes", "n1"
QUEUE, BULK, PROCESSING = keys.queue(DEP, NODE), keys.bulk_queue(DEP, NODE), keys.processing(DEP, NODE, "a0")


def take(client: redis.Redis, n: int, peers: int, bulk_n: int, bulk_first: bool) -> tuple[list[bytes], list[bytes], int, int]:
    taken = queue.run(client, queue.take(DEP, NODE, "a0", TakeArgs(n, peers, bulk_n, bulk_first)))
    return taken.interactive, taken.bulk, taken.interactive_left, taken.bulk_left


def test_interactive_first_lanes_never_mixed_bulk_on_its_turn(redis_client: redis.Redis) -> None:
    redis_client.lpush(BULK, *[f"b{i}".encode() for i in range(10)])  # b0 is the oldest
    redis_client.lpush(QUEUE, *[f"i{i}".encode() for i in range(3)])
    interactive, bulk, left_i, left_b = take(redis_client, 32, 1, 4, False)
    assert interactive == [b"i0", b"i1", b"i2"] and bulk == [] and (left_i, left_b) == (0, 10)
    redis_client.lpush(QUEUE, b"i3", b"i4")
    interactive, bulk, left_i, left_b = take(redis_client, 32, 1, 4, True)  # bulk's turn
    assert interactive == [] and bulk == [b"b0", b"b1", b"b2", b"b3"] and (left_i, left_b) == (2, 6)
    interactive, bulk, _, _ = take(redis_client, 32, 1, 4, False)
    assert interactive == [b"i3", b"i4"] and bulk == []
    interactive, bulk, left_i, left_b = take(redis_client, 32, 1, 32, False)  # interactive empty: bulk
    assert interactive == [] and bulk == [f"b{i}".encode() for i in range(4, 10)] and (left_i, left_b) == (0, 0)
    assert redis_client.llen(PROCESSING) == 15  # everything taken waits in the processing list


def test_each_lane_keeps_its_share_among_peers(redis_client: redis.Redis) -> None:
    redis_client.lpush(QUEUE, *[f"i{i}".encode() for i in range(8)])
    interactive, _, left_i, _ = take(redis_client, 32, 2, 8, False)
    assert len(interactive) == 4 and left_i == 4
    redis_client.delete(QUEUE)
    redis_client.lpush(BULK, *[f"b{i}".encode() for i in range(9)])
    _, bulk, _, left_b = take(redis_client, 32, 2, 8, False)
    assert len(bulk) == 5 and left_b == 4


def test_lane_state_gives_bulk_a_bounded_share() -> None:
    lanes = _LaneState()
    for _ in range(BULK_EVERY):
        assert lanes.streak < BULK_EVERY
        lanes.observe(interactive=3, bulk=0, interactive_left=5, bulk_left=10, now=1.0)
    assert lanes.streak == BULK_EVERY and lanes.more  # the next take asks for bulk first
    lanes.observe(interactive=0, bulk=8, interactive_left=5, bulk_left=2, now=1.0)
    assert lanes.streak == 0
    lanes.observe(interactive=2, bulk=0, interactive_left=0, bulk_left=0, now=1.0)
    assert lanes.streak == 0 and not lanes.more  # nothing waits: the next take may block
