"""A gateway SIGKILLed in the middle of ``_stop`` and ``_start``: another gateway's planner
finishes what it left, and traffic through the other gateway is not disturbed."""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import pytest
import redis

from shared import keys
from tests.cluster import http, local_cluster, pause_process, start, upload
from tests.faults.harness import Load, bad_answers, leaked_keys, redis_process, serving_nodes, wait_until

pytestmark = pytest.mark.slow

NODES = {"node-1", "node-2"}


def state(client: redis.Redis, deployment_id: str) -> str | None:
    raw = client.get(keys.deployment(deployment_id))
    return None if raw is None else str(json.loads(raw)["assignment_state"])


def call(method: str, url: str) -> None:
    """A control call whose gateway may die under it (no answer is expected then)."""
    try:
        http(method, url, timeout_s=90)
    except OSError:
        pass


def test_a_gateway_killed_mid_stop_and_mid_start_leaves_nothing_stuck(tiny_embedding_model: Any) -> None:
    nodes = [("node-1", 2), ("node-2", 2)]  # room for one allocation of each of three deployments
    with redis_process(aof=False) as server, local_cluster(server.url, nodes=nodes) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        upload(cluster, "tiny", tiny_embedding_model)
        start(cluster, "tiny", "deployment_id=steady&number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        start(cluster, "tiny", "deployment_id=doomed&wait_for=started")
        steady_nodes = serving_nodes(client, "steady")
        survivor_url = f"http://127.0.0.1:{cluster.start_gateway()}"
        starter_url = f"http://127.0.0.1:{cluster.start_gateway()}"
        stopper, starter = cluster.gateways[0], cluster.gateways[2]
        workers = [p.pid for p in cluster.nodes.values()]
        with Load(survivor_url, "steady", clients=2, timeout="60s") as load:
            load.wait_for_successes(10)
            for pid in workers:  # the nodes cannot let go of "doomed": the stop waits for them
                pause_process(pid)
            try:
                threading.Thread(
                    target=call, args=("POST", cluster.url + "/_ml/trained_models/doomed/deployment/_stop"), daemon=True
                ).start()
                wait_until(lambda: state(client, "doomed") == "stopping", 30, "the stop began")
                stopper.kill()  # half way: the document says stopping, nothing else is done
                threading.Thread(
                    target=call, args=("POST", f"{starter_url}/_ml/trained_models/tiny/deployment/_start"
                                       "?deployment_id=late&wait_for=fully_allocated&timeout=60s"), daemon=True,
                ).start()  # fmt: skip
                wait_until(lambda: state(client, "late") is not None, 30, "the start began")
                starter.kill()  # while it waits for the nodes to start "late"
                stopper.wait(timeout=30)
                starter.wait(timeout=30)
            finally:
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
            # the surviving gateway's planner finishes the stop the dead one began
            wait_until(lambda: state(client, "doomed") is None, 30, "the interrupted stop finished")
            wait_until(lambda: serving_nodes(client, "late") != set(), 60, "the start went on")
            load.wait_for_successes(len([a for a in load.answers if a.ok]) + 10)
        assert not bad_answers(load.answers) and all(a.ok for a in load.answers)
        assert not list(client.scan_iter(match=keys.dn_prefix("doomed", "*") + "*")) and not client.exists(keys.routes("doomed"))
        status, body = http("POST", f"{survivor_url}/_ml/trained_models/tiny/deployment/_start"
                                    "?deployment_id=doomed&wait_for=started&timeout=60s", timeout_s=90)
        assert status == 200, body  # the id is free again
        assert serving_nodes(client, "steady") == steady_nodes
        wait_until(lambda: not leaked_keys(client, NODES), 10, f"no leaked key: {leaked_keys(client, NODES)}")
        client.close()
