"""Delivery counts: REQUEUE_COUNTED raises the count of every request it puts back, byte-exact
otherwise; the wire decodes it; a worker answers a request past its redeliveries with an error."""

from __future__ import annotations

import msgpack
import redis

from shared import keys, queue
from shared.wire import InferRequest, RequestTemplate


def request(request_id: str, text: str = "hello") -> InferRequest:
    return InferRequest(request_id, keys.gateway_replies("p"), "dep", text, {"text_embedding": {"x": 1.5}}, 10**13, 1, "d")


def test_each_counted_requeue_raises_the_delivery_count_and_keeps_the_rest(redis_client: redis.Redis) -> None:
    src, dst = keys.processing("dep", "n1", "a0"), keys.queue("dep", "n1")
    redis_client.sadd(keys.dn_allocations("dep", "n1"), "a0")
    template = RequestTemplate(keys.gateway_replies("p"), "dep", {"text_embedding": {"x": 1.5}})
    items = [
        request("a").pack(),
        template.pack("b", "é" * 70_000, 10**13, 1, "d"),  # str8/16/32 texts, as the producer packs them
        msgpack.packb({f"k{i}": i for i in range(20)} | {"v": 1}),  # a map16 of another producer
        b"not msgpack",
    ]
    redis_client.rpush(src, *reversed(items))  # allocations LMOVE to the left: oldest at the right
    for expected in (1, 2, 3):
        assert queue.run(redis_client, queue.recover("dep", "n1")) == 4  # a dead worker's: counted
        assert queue.call_sync(redis_client, queue.REQUEUE.call((dst, src), ())) == 4  # back, unchanged
        got = [bytes(x) for x in redis_client.lrange(src, 0, -1)][::-1]
        assert InferRequest.unpack(got[0]) == InferRequest(**{**request("a").__dict__, "deliveries": expected})
        second = InferRequest.unpack(got[1])
        assert second.deliveries == expected and second.text == "é" * 70_000 and second.id == "b"
        assert msgpack.unpackb(got[2])["deliveries"] == expected
        assert got[3] == b"not msgpack"
        assert got[0] == InferRequest(**{**request("a").__dict__, "deliveries": expected}).pack()
    assert redis_client.llen(dst) == 0
