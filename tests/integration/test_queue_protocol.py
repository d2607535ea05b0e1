"""``shared.queue``'s typed calls against a real redis-server: the hand-over across slots is
crash-safe (a crash between copy and removal duplicates, never loses), replies go before the
acknowledgement with the one reply TTL, cancel answers every queued request, drop leaves no key."""

from __future__ import annotations

import msgpack
import redis

from shared import keys, queue
from shared.wire import InferReply, InferRequest

DEP = "proto"


def request(request_id: str, reply_to: str = keys.gateway_replies("g1")) -> bytes:
    return InferRequest(request_id, reply_to, DEP, "text", {}, 10**13, 1).pack()


def queue_ids(client: redis.Redis, key: str) -> list[str]:
    """Ids in serving order (workers take from the right)."""
    return [InferRequest.unpack(raw).id for raw in reversed(client.lrange(key, 0, -1))]


def test_hand_over_keeps_the_order_and_serves_the_moved_requests_next(redis_client: redis.Redis) -> None:
    source, target = keys.queue(DEP, "dead"), keys.queue(DEP, "heir")
    for i in range(600):  # more than one batch; the oldest pushed first
        redis_client.lpush(source, request(f"old{i:03d}"))
    redis_client.lpush(target, request("heir-own"))
    redis_client.lpush(keys.bulk_queue(DEP, "dead"), request("bulk"))
    moved = queue.run(redis_client, queue.hand_over(DEP, "dead", "heir"))
    assert moved == 601
    assert queue_ids(redis_client, target) == [f"old{i:03d}" for i in range(600)] + ["heir-own"]
    assert queue_ids(redis_client, keys.bulk_queue(DEP, "heir")) == ["bulk"]
    assert not redis_client.exists(source, keys.bulk_queue(DEP, "dead"))


def test_a_hand_over_cut_between_copy_and_removal_duplicates_and_loses_nothing(redis_client: redis.Redis) -> None:
    source, target = keys.queue(DEP, "dead"), keys.queue(DEP, "heir")
    for i in range(5):
        redis_client.lpush(source, request(f"r{i}"))
    ops = queue.hand_over(DEP, "dead", "heir", lanes=(queue.INTERACTIVE,))
    read = queue.call_sync(redis_client, ops.send(None))  # LRANGE
    queue.call_sync(redis_client, ops.send(read))  # RPUSH onto the heir: the process dies here
    ops.close()
    assert sorted(queue_ids(redis_client, source)) == sorted(queue_ids(redis_client, target))
    # the next planner pass hands the rest over again: every request at least once, none lost
    queue.run(redis_client, queue.hand_over(DEP, "dead", "heir"))
    served = queue_ids(redis_client, target)
    assert sorted(set(served)) == [f"r{i}" for i in range(5)] and len(served) == 10
    # a duplicate is an ordinary request: its delivery count is untouched (only a dead worker's
    # processing list raises it), and the producer keeps the first reply of an id
    assert all(InferRequest.unpack(raw).deliveries == 0 for raw in redis_client.lrange(target, 0, -1))
    assert not redis_client.exists(source)


def test_finish_replies_first_with_the_reply_ttl_then_acknowledges(redis_client: redis.Redis) -> None:
    processing = keys.processing(DEP, "n1", "a0")
    redis_client.rpush(processing, request("a"), request("b", keys.gateway_replies("g2")))
    replies = [
        (keys.gateway_replies("g1"), InferReply("a", "n1", result_json=b"{}").pack()),
        (keys.gateway_replies("g2"), InferReply("b", "n1", result_json=b"{}").pack()),
    ]
    completion = queue.Completion(10_000, "lfu", 1, 0, 2, 3.0, 0, cache_pairs=("d" * 32, b"{}"))
    errors = queue.run(redis_client, queue.finish(DEP, "n1", "a0", replies, completion))
    assert errors == []
    for gateway, request_id in (("g1", "a"), ("g2", "b")):
        key = keys.gateway_replies(gateway)
        assert InferReply.unpack(redis_client.lindex(key, 0)).id == request_id
        assert 0 < redis_client.ttl(key) <= queue.REPLY_TTL_S
    assert not redis_client.exists(processing)
    assert int(redis_client.hget(keys.stats(DEP, "n1"), "inference_count")) == 2
    assert redis_client.hexists(keys.cache_entries(DEP, "n1"), "d" * 32)


def test_cancel_answers_both_lanes_and_drop_leaves_no_key(redis_client: redis.Redis) -> None:
    redis_client.lpush(keys.queue(DEP, "n1"), request("q"))
    redis_client.lpush(keys.bulk_queue(DEP, "n1"), request("b"), b"not msgpack")
    queue.run(redis_client, queue.index_allocation(DEP, "n1", "a0"))
    redis_client.rpush(keys.processing(DEP, "n1", "a0"), request("p"))
    completion = queue.Completion(10_000, "lfu", 1, 0, 0, 0, 0, cache_pairs=("d" * 32, b"{}"))
    queue.run(redis_client, queue.complete(DEP, "n1", "a9", completion))
    error = {"status": 409, "type": "status_exception", "reason": "stopping"}
    assert queue.run(redis_client, queue.cancel(DEP, "n1", error)) == 2  # the malformed one is dropped
    answers = [msgpack.unpackb(raw) for raw in redis_client.lrange(keys.gateway_replies("g1"), 0, -1)]
    assert sorted(a["id"] for a in answers) == ["b", "q"] and all(a["error"] == error for a in answers)
    queue.run(redis_client, queue.drop(DEP, "n1"))
    left = [k for k in redis_client.keys("*") if b"{proto|n1}" in k]
    assert left == []
    assert DEP.encode() not in redis_client.smembers(keys.node_deployments("n1"))


def test_recover_counts_a_delivery_and_requeue_does_not(redis_client: redis.Redis) -> None:
    queue.run(redis_client, queue.index_allocation(DEP, "n2", "a0"))
    redis_client.rpush(keys.processing(DEP, "n2", "a0"), request("x"))
    assert queue.run(redis_client, queue.recover(DEP, "n2")) == 1
    taken = queue.run(redis_client, queue.take(DEP, "n2", "a0", queue.TakeArgs(8)))
    assert [InferRequest.unpack(i).deliveries for i in taken.interactive] == [1]
    assert queue.run(redis_client, queue.requeue(DEP, "n2", "a0")) == 1
    assert InferRequest.unpack(redis_client.lindex(keys.queue(DEP, "n2"), 0)).deliveries == 1


def test_readers_count_queued_and_in_flight_requests(redis_client: redis.Redis) -> None:
    for node, allocation, held in (("n1", "a0", 2), ("n1", "a1", 1), ("n2", "a0", 0)):
        queue.run(redis_client, queue.index_allocation(DEP, node, allocation))
        for i in range(held):
            redis_client.rpush(keys.processing(DEP, node, allocation), request(f"{node}{allocation}{i}"))
    redis_client.lpush(keys.queue(DEP, "n1"), request("q1"))
    redis_client.lpush(keys.bulk_queue(DEP, "n1"), request("b1"), request("b2"))
    assert queue.run(redis_client, queue.in_flight(DEP, ["n1", "n2", "n3"])) == {"n1": 3, "n2": 0, "n3": 0}
    assert queue.run(redis_client, queue.queued(DEP, "n1")) == 3
    samples = queue.run(redis_client, queue.samples(DEP, ["n1", "n2"]))
    assert (samples["n1"].queued, samples["n2"].queued) == (3, 0)
