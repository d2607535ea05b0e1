"""docs/protocol.md followed with redis-py and msgpack only, against a real cluster.

``RawProducer`` and the tests' producing and consuming steps use nothing of inferq: keys,
messages, the node ranking and the cache digest are written from the document, and the
scripts are read from it (and from ``shared/lua/*.lua``, as it says). Setting up the cluster,
the HTTP comparisons and the drift checks at the end do use the project's code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np
import pytest
import redis

from tests.cluster import LocalCluster, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"
DEPLOYMENT = "tiny-raw"


def lua_block(tag: str) -> str:
    """The ```lua <tag> code block of docs/protocol.md."""
    match = re.search(rf"```lua {re.escape(tag)}\n(.*?)```", PROTOCOL.read_text(encoding="utf-8"), re.S)
    assert match, f"no `lua {tag}` block in {PROTOCOL}"
    return match.group(1)


def dispatch_script() -> str:
    fragments = [(ROOT / "shared" / "lua" / f"{name}.lua").read_text(encoding="utf-8") for name in ("cache", "stats", "queue")]
    return "\n".join([*fragments, lua_block("dispatch-body")])


def now_ms() -> int:
    return int(time.time() * 1000)


# ---- a producer written from docs/protocol.md alone ----------------------------------------------


def frame(part: str) -> bytes:
    data = part.encode("utf-8")
    return len(data).to_bytes(8, "little") + data


def raw_digest(model_sha256: str, uid: str, config: dict[str, Any], text: str) -> str:
    config_json = json.dumps(config, sort_keys=True, separators=(",", ":"))
    h = hashlib.blake2b(digest_size=16)
    for part in (model_sha256, uid, config_json, text):
        h.update(frame(part))
    return h.hexdigest()


def raw_rank(weights: dict[str, int], digest: str) -> list[str]:
    key = digest or os.urandom(8).hex()
    scored = []
    for node, weight in weights.items():
        if weight <= 0:
            continue
        h = hashlib.blake2b(f"{key}\x00{node}".encode(), digest_size=8).digest()
        u = (int.from_bytes(h, "big") + 1) / (2**64 + 1)
        scored.append((-weight / math.log(u), node))
    return [node for _, node in sorted(scored, reverse=True)]


class RawProducer:
    def __init__(self, client: redis.Redis, deployment_id: str) -> None:
        self.client = client
        self.deployment_id = deployment_id
        self.reply_key = f"inferq:replies:{secrets.token_hex(6)}"
        self.dispatch_sha = client.script_load(dispatch_script())
        self.bounded_push = lua_block("bounded-push")
        self.doc: dict[str, Any] = json.loads(cast(bytes, client.get(f"inferq:{{control}}:deployment:{deployment_id}")))
        raw_routes: dict[bytes, bytes] = client.hgetall(f"inferq:{{control}}:routes:{deployment_id}")  # type: ignore[assignment]
        routes = {n.decode(): json.loads(r) for n, r in raw_routes.items()}
        self.routes = routes
        targets = self.doc["targets"]
        self.weights = {
            node: route["current_allocations"]
            for node, route in routes.items()
            if route["routing_state"] == "started" and route["current_allocations"] > 0 and targets.get(node, 0) > 0
        }
        self.config: dict[str, Any] = self.doc["inference_config"]

    def queue(self, node: str) -> str:
        return f"inferq:dn:{{{self.deployment_id}|{node}}}:queue"

    def stats(self, node: str) -> str:
        return f"inferq:dn:{{{self.deployment_id}|{node}}}:stats"

    def cache_keys(self, node: str) -> list[str]:
        return [f"inferq:dn:{{{self.deployment_id}|{node}}}:cache:{name}" for name in ("idx", "meta", "entries")]

    def digest(self, text: str) -> str:
        if int(self.doc["cache_size_bytes"]) == 0:
            return ""
        return raw_digest(self.doc["model_sha256"], self.doc["uid"], self.config, text)

    def request(self, text: str, *, digest: str = "", timeout_ms: int = 10_000, version: int = 1) -> tuple[str, bytes]:
        request_id = secrets.token_hex(8)
        sent_ms = now_ms()
        message = {
            "v": version,
            "id": request_id,
            "reply_to": self.reply_key,
            "deployment_id": self.deployment_id,
            "text": text,
            "config": self.config,
            "deadline_ms": sent_ms + timeout_ms,
            "enqueued_ms": sent_ms,
            "digest": digest,
        }
        return request_id, msgpack.packb(message, use_bin_type=True)

    def dispatch(self, node: str, digest: str, payload: bytes, *, capacity: int | None = None, last: bool = True) -> list[Any]:
        start_ms = self.routes[node]["started_ms"] or self.doc["start_time_ms"]
        result: list[Any] = self.client.evalsha(
            self.dispatch_sha, 5, self.queue(node), self.stats(node), *self.cache_keys(node),
            digest, self.doc["cache_policy"], now_ms(), start_ms,
            self.doc["task_parameters"]["queue_capacity"] if capacity is None else capacity,
            payload, 1 if last else 0,
        )
        return result

    def push(self, node: str, payload: bytes, *, capacity: int | None = None) -> int:
        bound = self.doc["task_parameters"]["queue_capacity"] if capacity is None else capacity
        return int(self.client.eval(self.bounded_push, 1, self.queue(node), bound, payload))

    def replies(self, ids: set[str], timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while not ids <= got.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            item = self.client.blpop([self.reply_key], timeout=max(0.05, min(left, 1.0)))
            if item is None:
                continue
            message = msgpack.unpackb(item[1], raw=False)
            assert message["v"] == 1
            got.setdefault(message["id"], message)
        return got


# ---- the cluster -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(redis_url: str, tiny_embedding_model: Any) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("node-1", 1), ("node-2", 1)]) as running:
        upload(running, "tiny", tiny_embedding_model)
        start(running, "tiny", f"deployment_id={DEPLOYMENT}&number_of_allocations=2&wait_for=fully_allocated")
        time.sleep(1.5)  # past the gateway's view refresh (1 s): it routes over both nodes, as we do
        yield running


@pytest.fixture
def raw(cluster: LocalCluster) -> Iterator[RawProducer]:
    client = redis.Redis.from_url(cluster.redis_url)
    yield RawProducer(client, DEPLOYMENT)
    client.close()


def http_result(cluster: LocalCluster, text: str) -> dict[str, Any]:
    status, body = infer(cluster, DEPLOYMENT, [text])
    assert status == 200, body
    result: dict[str, Any] = body["inference_results"][0]
    return result


def counter(raw: RawProducer, node: str, name: str) -> int:
    return int(raw.client.hget(raw.stats(node), name) or 0)


# ---- the protocol at work --------------------------------------------------------------------------


def test_dispatch_finds_the_gateways_cache_entries_and_fills_the_cache_for_it(cluster: LocalCluster, raw: RawProducer) -> None:
    assert raw.doc["assignment_state"] not in ("stopping", "failed") and set(raw.weights) == {"node-1", "node-2"}

    # the gateway answered this text: our digest and ranking find its result on the same node
    text = "the gateway saw this document first"
    expected = http_result(cluster, text)
    digest = raw.digest(text)
    node = raw_rank(raw.weights, digest)[0]
    hits_before = counter(raw, node, "cache_hit_count")
    request_id, payload = raw.request(text, digest=digest)
    code, value = raw.dispatch(node, digest, payload)
    assert code == 1 and json.loads(value) == expected
    assert counter(raw, node, "cache_hit_count") == hits_before + 1
    assert raw.replies({request_id}, timeout_s=0.3) == {}  # a hit has no reply

    # a new text: queued, answered on our reply list, and cached under our digest for everyone
    text = "the raw producer saw this document first"
    digest = raw.digest(text)
    node = raw_rank(raw.weights, digest)[0]
    request_id, payload = raw.request(text, digest=digest)
    assert raw.dispatch(node, digest, payload) == [0]
    deadline = time.monotonic() + 10
    while not raw.client.llen(raw.reply_key) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert 0 < raw.client.ttl(raw.reply_key) <= 120  # the worker's TTL on the reply list
    reply = raw.replies({request_id})[request_id]
    assert reply["id"] == request_id and reply["node"] == node and reply["error"] is None
    assert reply["cache_hit"] is False and reply["time_ms"] > 0 and reply["timings"]["batch_size"] >= 1
    assert isinstance(reply["result"], bytes)
    hits_before = counter(raw, node, "cache_hit_count")
    assert http_result(cluster, text) == json.loads(reply["result"])  # the gateway hits our entry
    assert counter(raw, node, "cache_hit_count") == hits_before + 1


def test_bounded_push_script_and_the_plain_llen_lpush_pair(cluster: LocalCluster, raw: RawProducer) -> None:
    node = sorted(raw.weights)[0]
    queue = raw.queue(node)
    first, payload = raw.request("pushed by the bounded-push script")
    assert raw.push(node, payload) == 1
    # LLEN then LPUSH: not atomic (see the document), but a correct request all the same
    second, payload2 = raw.request("pushed with LLEN and LPUSH")
    if raw.client.llen(queue) < raw.doc["task_parameters"]["queue_capacity"]:
        raw.client.lpush(queue, payload2)
    got = raw.replies({first, second})
    assert got.keys() == {first, second}
    for request_id, text in ((first, "pushed by the bounded-push script"), (second, "pushed with LLEN and LPUSH")):
        assert np.allclose(json.loads(got[request_id]["result"])["predicted_value"],
                           http_result(cluster, text)["predicted_value"], atol=1e-6)

    # a full queue refuses without pushing; only a last-node refusal counts as a rejection
    length = raw.client.llen(queue)
    _, payload = raw.request("never queued")
    assert raw.push(node, payload, capacity=0) == 0
    rejected = counter(raw, node, "rejected_execution_count")
    assert raw.dispatch(node, "", payload, capacity=0, last=False) == [2]
    assert counter(raw, node, "rejected_execution_count") == rejected
    assert raw.dispatch(node, "", payload, capacity=0, last=True) == [2]
    assert counter(raw, node, "rejected_execution_count") == rejected + 1
    assert raw.client.llen(queue) == length


def test_expired_deadlines_and_unknown_versions_get_no_reply(raw: RawProducer) -> None:
    node = sorted(raw.weights)[0]
    expired, expired_payload = raw.request("nobody waits for this any more", timeout_ms=-1_000)
    future, future_payload = raw.request("a message from protocol version 2", version=2)
    valid, valid_payload = raw.request("a valid request behind them")
    with raw.client.pipeline(transaction=True) as pipe:  # queued together, served in order
        for payload in (expired_payload, future_payload, valid_payload):
            pipe.lpush(raw.queue(node), payload)
        pipe.execute()
    assert valid in raw.replies({valid})
    deadline = time.monotonic() + 10  # every allocation that took one of them has finished
    pattern = f"inferq:dn:{{{raw.deployment_id}|{node}}}:processing:*"
    while (raw.client.llen(raw.queue(node)) or list(raw.client.scan_iter(match=pattern))) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert raw.replies({expired, future}, timeout_s=0.5) == {}


# ---- the document matches the code (these checks use the project's code) -------------------------


def test_the_document_matches_the_code(cluster: LocalCluster, raw: RawProducer) -> None:
    from shared import keys
    from shared.cache import cache_digest
    from shared.queue import DISPATCH
    from shared.routing import rank_nodes
    from shared.task_config import resolve_request_config
    from shared.wire import VERSION, InferReply, InferRequest

    def lines(script: str) -> list[str]:
        return [line for line in script.splitlines() if line.strip()]

    assert lines(dispatch_script()) == lines(DISPATCH.source)  # the same script, blank lines aside
    assert VERSION == 1
    assert raw.queue("n") == keys.queue(DEPLOYMENT, "n")
    assert raw.stats("n") == keys.stats(DEPLOYMENT, "n")
    assert raw.cache_keys("n") == [keys.cache_index(DEPLOYMENT, "n"), keys.cache_meta(DEPLOYMENT, "n"),
                                   keys.cache_entries(DEPLOYMENT, "n")]
    assert f"inferq:{{control}}:deployment:{DEPLOYMENT}" == keys.deployment(DEPLOYMENT)
    assert f"inferq:{{control}}:routes:{DEPLOYMENT}" == keys.routes(DEPLOYMENT)
    assert raw.reply_key.rsplit(":", 1)[0] == keys.gateway_replies("x").rsplit(":", 1)[0]
    assert resolve_request_config(raw.doc["inference_config"], None) == raw.config

    _, payload = raw.request("é 東京 🚀", digest="ab")
    assert InferRequest.unpack(payload).text == "é 東京 🚀"
    assert set(msgpack.unpackb(payload, raw=False)) == set(msgpack.unpackb(
        InferRequest("i", "r", "d", "t", {}, 1, 1, "").pack(), raw=False))
    reply_fields = set(msgpack.unpackb(InferReply("i", "n", result_json=b"{}").pack(), raw=False))
    assert reply_fields == {"v", "id", "node", "result", "error", "cache_hit", "time_ms", "timings"}

    for i in range(50):
        text = f"drift check {i} é"
        digest = raw.digest(text)
        assert digest == cache_digest(raw.doc["model_sha256"], raw.doc["uid"],
                                      json.dumps(raw.config, sort_keys=True, separators=(",", ":")), text)
        weights = {"node-1": 1 + i % 3, "node-2": 2, "node-3": i % 2}
        assert raw_rank(weights, digest) == rank_nodes(weights, digest)
