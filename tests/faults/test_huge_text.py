"""Huge texts and stalled nodes while small requests probe the deployment: a truncated 5 MB text
costs what a short one does; a text in span windows keeps its node busy for seconds, and a node
whose process is stopped (as if a call held its GIL) stays registered (its heartbeat process
beats on) while the probes are served by the other node."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import redis

from shared import keys
from tests.cluster import local_cluster, pause_process, start, upload
from tests.faults.harness import (
    Answer,
    Load,
    bad_answers,
    leaked_keys,
    redis_process,
    serving_nodes,
    wait_until,
)

pytestmark = pytest.mark.slow

NODES = {"node-1", "node-2"}
TTL_S = 3.0  # tests.cluster's heartbeat TTL
HUGE_TEXTS = {"INFERQ_MAX_TEXT_BYTES": "8000000"}  # the gateway refuses texts over 1 MiB by default
SENTENCE = "the quick brown fox jumps over the lazy dog while the cluster keeps serving requests . "


def huge_infer(url: str, size_bytes: int, config: dict[str, Any] | None = None) -> Answer:
    text = SENTENCE * (size_bytes // len(SENTENCE))
    body: dict[str, Any] = {"docs": [{"text_field": text}]}
    if config:
        body["inference_config"] = config
    request = urllib.request.Request(f"{url}/_ml/trained_models/tiny/_infer?timeout=120s", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})  # fmt: skip
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            return Answer(sent, time.monotonic(), response.status, json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return Answer(sent, time.monotonic(), exc.code, json.loads(exc.read() or b"null"))


class Watch:
    """Samples, every 50 ms, whether every node is registered and alive."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.lapses: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            known = {n.decode() for n in self.client.smembers(keys.NODES)}
            alive = {n for n in NODES if self.client.exists(keys.node_heartbeat(n))}
            if known != NODES or alive != NODES:
                self.lapses.append(f"known={sorted(known)} alive={sorted(alive)}")


def test_huge_texts_leave_probes_unharmed_and_nodes_registered(tiny_embedding_model: Any) -> None:
    with redis_process(aof=False) as server, local_cluster(server.url, env=HUGE_TEXTS) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        upload(cluster, "tiny", tiny_embedding_model)
        start(cluster, "tiny", "number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
        wait_until(lambda: serving_nodes(client, "tiny") == NODES, 30, "both nodes serve")
        with Watch(client) as watch, Load(cluster.url, "tiny", clients=2, timeout="60s", tag="probe") as probes:
            probes.wait_for_successes(10)
            truncated = huge_infer(cluster.url, 5_000_000)  # truncate "first" (the default)
            assert truncated.ok and truncated.done_s - truncated.sent_s < 10, truncated.done_s - truncated.sent_s
            spanned = huge_infer(cluster.url, 500_000, {"text_embedding": {"tokenization": {"bert": {
                "truncate": "none", "span": 0}}}})  # about 250 windows: seconds of work  # fmt: skip
            assert spanned.ok
            probes.wait_for_successes(len([a for a in probes.answers if a.ok]) + 5)
            for process in cluster.nodes.values():  # each node in turn makes no progress for 2 TTLs
                pause_process(process.pid)
                try:
                    probes.wait_for_successes(len([a for a in probes.answers if a.ok]) + 5)
                    time.sleep(2 * TTL_S)
                finally:
                    process.send_signal(signal.SIGCONT)
                probes.wait_for_successes(len([a for a in probes.answers if a.ok]) + 5)
        failed = [(a.status, a.body, a.done_s - a.sent_s) for a in probes.answers if not a.ok]
        assert not bad_answers(probes.answers) and not failed, failed[:3]  # no probe error
        assert not watch.lapses, watch.lapses[:3]  # no node ever declared dead or forgotten
        assert serving_nodes(client, "tiny") == NODES
        wait_until(lambda: not leaked_keys(client, NODES), 10, f"no leaked key: {leaked_keys(client, NODES)}")
        client.close()
