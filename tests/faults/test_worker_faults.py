"""A worker SIGKILLed under load, and a request whose worker is killed twice (real processes)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from shared import keys
from shared.producer import InferResult, Producer
from shared.queue import BULK
from tests.cluster import local_cluster, start, upload
from tests.faults.harness import (
    Load,
    bad_answers,
    es_shaped,
    infer_once,
    leaked_keys,
    longest_gap_s,
    redis_process,
    serving_nodes,
    wait_until,
)
from tests.faults.test_huge_text import SENTENCE, huge_infer

pytestmark = pytest.mark.slow

DEFAULTS = {"INFERQ_HEARTBEAT_TTL_S": "6", "INFERQ_PLANNER_INTERVAL_S": "1"}  # the shipped defaults


def test_worker_sigkill_under_load_loses_nothing_and_the_node_rejoins(tiny_embedding_model: Any) -> None:
    nodes = {"node-1", "node-2"}
    with redis_process(aof=False) as server, local_cluster(server.url, env=DEFAULTS) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        upload(cluster, "tiny", tiny_embedding_model)
        start(cluster, "tiny", "number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        wait_until(lambda: serving_nodes(client, "tiny") == nodes, 30, "both nodes serve")
        with Load(cluster.url, "tiny", clients=4) as load:
            load.wait_for_successes(40)
            killed_s = time.monotonic()
            cluster.kill_node("node-2")
            wait_until(lambda: sum(a.done_s > killed_s + 3 for a in load.answers) >= 8, 60, "answers after the kill")
            end_s = time.monotonic()
        assert not bad_answers(load.answers)
        assert all(a.ok for a in load.answers), [a for a in load.answers if not a.ok][:3]  # nothing lost
        # the dead node's queued and in-flight requests were answered by node-1 well before the
        # 6 s heartbeat TTL (the heartbeat process marks the node down as it dies)
        assert longest_gap_s(load.answers, killed_s, end_s) < 3.5
        in_flight = [a for a in load.answers if a.sent_s < killed_s < a.done_s]
        assert in_flight and max(a.done_s - killed_s for a in in_flight) < 4.0

        cluster.add_node("node-2")  # no node left out: it rejoins and gets its allocation back
        wait_until(lambda: serving_nodes(client, "tiny") == nodes, 30, "node-2 serves again")
        assert infer_once(cluster.url, "tiny", "after the rejoin").ok
        wait_until(lambda: not leaked_keys(client, nodes), 10, f"no leaked key: {leaked_keys(client, nodes)}")
        client.close()


def _holder(client: redis.Redis, deployment_id: str, besides: list[str]) -> str:
    """The node (not one of ``besides``) whose allocation holds a request in its processing list."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for key in client.scan_iter(match=keys.processing(deployment_id, "*", "*")):
            node = key.decode().split("|", 1)[1].split("}", 1)[0]
            if node not in besides and client.llen(key):
                return node
        time.sleep(0.02)
    raise AssertionError("no worker took the request")


def test_a_request_whose_worker_is_killed_twice_is_answered_with_an_error(tiny_embedding_model: Any) -> None:
    nodes = [("node-1", 1), ("node-2", 1), ("node-3", 1)]
    with redis_process(aof=False) as server, local_cluster(server.url, nodes=nodes) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        upload(cluster, "tiny", tiny_embedding_model)
        start(cluster, "tiny", "number_of_allocations=3&cache_size=0b&wait_for=fully_allocated")
        wait_until(lambda: len(serving_nodes(client, "tiny")) == 3, 30, "three nodes serve")
        answers: list[Any] = []
        # a 300 KB text in span windows: its worker holds it for seconds, time to kill the node
        slow = {"text_embedding": {"tokenization": {"bert": {"truncate": "none", "span": 0}}}}
        sender = threading.Thread(target=lambda: answers.append(huge_infer(cluster.url, 300_000, slow)))
        sender.start()
        killed: list[str] = []
        for _ in range(2):  # kill whichever node holds it, twice
            killed.append(_holder(client, "tiny", killed))
            cluster.kill_node(killed[-1])
        sender.join(timeout=120)
        (answer,) = answers
        assert answer.status == 500 and es_shaped(500, answer.body), answer
        assert "died [2] times" in answer.body["error"]["reason"]
        survivor = ({"node-1", "node-2", "node-3"} - set(killed)).pop()
        assert infer_once(cluster.url, "tiny", "a healthy request").ok  # the survivor still serves
        wait_until(lambda: not leaked_keys(client, {survivor}), 15, f"no leaked key: {leaked_keys(client, {survivor})}")
        client.close()


def test_a_bulk_request_held_by_a_dead_nodes_bulk_lane_is_answered_by_another_node(tiny_embedding_model: Any) -> None:
    """One allocation per node: a bulk request is served in the node's bulk lane (its own
    processing list, ``a0b``); the node is killed while it runs, and the other node answers it."""
    nodes = [("node-1", 1), ("node-2", 1)]
    with redis_process(aof=False) as server, local_cluster(server.url, nodes=nodes) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        upload(cluster, "tiny", tiny_embedding_model)
        start(cluster, "tiny", "number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        wait_until(lambda: len(serving_nodes(client, "tiny")) == 2, 30, "both nodes serve")
        # a 300 KB text in span windows: its bulk lane holds it for seconds, time to kill the node
        slow = {"text_embedding": {"tokenization": {"bert": {"truncate": "none", "span": 0}}}}
        text = SENTENCE * (300_000 // len(SENTENCE))
        results: list[list[InferResult] | BaseException] = []

        async def bulk_infer() -> list[InferResult]:
            async with Producer.connect(cluster.redis_url) as producer:
                return await producer.infer("tiny", [{"text_field": text}], inference_config=slow, timeout_ms=120_000, lane=BULK)

        def send() -> None:
            try:
                results.append(asyncio.run(bulk_infer()))
            except BaseException as exc:  # the assertion below shows it
                results.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        deadline, holder = time.monotonic() + 30, ""
        while not holder and time.monotonic() < deadline:
            holder = next((n for n, _ in nodes if client.llen(keys.processing("tiny", n, "a0b"))), "")
            time.sleep(0.02)
        assert holder, "no bulk lane took the request"
        cluster.kill_node(holder)
        sender.join(timeout=120)
        ((answer,),) = results  # type: ignore[misc]
        survivor = ({"node-1", "node-2"} - {holder}).pop()
        assert answer.node == survivor and answer.result()["predicted_value"]
        wait_until(lambda: not leaked_keys(client, {survivor}), 15, f"no leaked key: {leaked_keys(client, {survivor})}")
        client.close()
