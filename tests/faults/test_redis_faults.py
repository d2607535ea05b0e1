"""Redis killed and started again under load, with AOF and without (real processes, no process
of inferq restarted)."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import redis

from shared import keys
from tests.cluster import local_cluster, start, upload
from tests.faults.harness import (
    Load,
    bad_answers,
    infer_once,
    leaked_keys,
    redis_process,
    serving_nodes,
    wait_until,
)

pytestmark = pytest.mark.slow

TTL_S = 3.0  # tests.cluster's heartbeat TTL
NODES = {"node-1", "node-2"}


def registered(client: redis.Redis) -> set[str]:
    members = {n.decode() for n in client.smembers(keys.NODES)}
    return {n for n in members if client.exists(keys.node_heartbeat(n)) and client.exists(keys.node_info(n))}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_with_aof_a_redis_restart_loses_nothing_and_every_node_serves_again(
    tiny_embedding_model: Any, sig: signal.Signals
) -> None:
    with redis_process(aof=True) as server, local_cluster(server.url) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        upload(cluster, "tiny", tiny_embedding_model)
        start(cluster, "tiny", "number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        wait_until(lambda: serving_nodes(client, "tiny") == NODES, 30, "both nodes serve")
        time.sleep(1.5)  # everything acknowledged so far is in the AOF (fsync every second)
        with Load(cluster.url, "tiny", clients=4, timeout="30s") as load:
            load.wait_for_successes(20)
            server.restart(sig)
            restarted_s = time.monotonic()
            recovery_s = wait_until(lambda: serving_nodes(client, "tiny") == NODES, TTL_S + 3, "all nodes serve")
            wait_until(lambda: sum(a.ok and a.sent_s > restarted_s for a in load.answers) >= 10, 30, "served again")
        assert recovery_s <= TTL_S + 3
        assert not bad_answers(load.answers)
        # refused while Redis was away (503), never lost: a request that was queued is answered
        assert {a.status for a in load.answers} <= {200, 503}, {a.status for a in load.answers}
        if sig == signal.SIGTERM:  # a clean restart flushes the AOF: nothing that was accepted is lost
            failed = [a for a in load.answers if a.sent_s > restarted_s and not a.ok]
            assert not failed, failed[:3]
        assert registered(client) == NODES
        wait_until(lambda: not leaked_keys(client, NODES), 10, f"no leaked key: {leaked_keys(client, NODES)}")
        client.close()


def test_without_persistence_a_redis_restart_loses_the_deployments_but_the_nodes_come_back(
    tiny_embedding_model: Any,
) -> None:
    with redis_process(aof=False) as server, local_cluster(server.url) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        upload(cluster, "tiny", tiny_embedding_model)
        start(cluster, "tiny", "number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        wait_until(lambda: serving_nodes(client, "tiny") == NODES, 30, "both nodes serve")
        with Load(cluster.url, "tiny", clients=4, timeout="5s") as load:
            load.wait_for_successes(20)
            server.restart(signal.SIGKILL)
            # the nodes register again by themselves (their heartbeat process sees the key gone)
            wait_until(lambda: registered(client) == NODES, TTL_S + 3, "both nodes registered again")
            wait_until(lambda: any(a.status == 404 for a in load.answers), 30, "the model is gone")
        # every request answered: 200 before, then an Elasticsearch error (503 while Redis was
        # away, 408 for what was queued when it went, 404 once it is back empty)
        assert not bad_answers(load.answers)
        assert {a.status for a in load.answers} <= {200, 404, 408, 503}
        upload(cluster, "tiny", tiny_embedding_model)  # what is lost must be put back ...
        start(cluster, "tiny", "number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        wait_until(lambda: serving_nodes(client, "tiny") == NODES, 30, "both nodes serve again")
        assert infer_once(cluster.url, "tiny", "after the restart").ok  # ... and no process restarted
        wait_until(lambda: not leaked_keys(client, NODES), 10, f"no leaked key: {leaked_keys(client, NODES)}")
        client.close()
