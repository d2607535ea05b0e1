"""``GET /metrics`` and ``/_status/data`` of two in-process gateways on one real redis-server.

The cluster's state is written with the real scripts (``benchmarks.scrape_cost.seed``: nodes,
deployments, COMPLETE with forward-pass histograms, DISPATCH hits, misses and queued
requests). Traffic that needs no worker — cache hits answered by DISPATCH, 429s from full
queues, 404s — goes through the gateways over HTTP, and the scrapes are parsed with
prometheus_client's parser.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.scrape_cost import deployment_doc, seed
from gateway.api_keys import encode_credentials
from gateway.app import create_app
from gateway.request_metrics import forget_deployment
from shared import keys, task_config
from shared.cache import DigestPrefix
from shared.deployment_store import DeploymentStore
from shared.producer import canonical_json
from shared.settings import GatewaySettings
from tests import browser
from tests.cache_driver import SyncCache

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
INFER = "/_ml/trained_models/{model_id}/_infer"
HIT_TEXT = "a cached sentence"
RESULT = b'{"predicted_value":[0.25,0.5]}'
TIME_DEPENDENT = {"inferq_node_heartbeat_age_seconds", "inferq_scrape_read_seconds"}


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def total(found: Samples, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= set(ls))


def prepare_cluster(client: redis.Redis) -> None:
    """Two seeded deployments on two nodes, plus ``hits`` (a cached answer for HIT_TEXT on
    every node) and ``full`` (every queue full: _infer is a 429 at once)."""
    seed(client, deployments=2, nodes=2, cache_entries=5, hits=3, queued=2, batches=7)
    # two requests taken by allocation a1 of model-00 on node-1 and not answered yet
    client.sadd(keys.dn_allocations("model-00", "node-1"), "a0", "a1")
    client.rpush(keys.processing("model-00", "node-1", "a1"), b"taken-1", b"taken-2")
    now = int(time.time() * 1000)
    nodes = ["node-1", "node-2"]
    config = task_config.normalize_inference_config({"text_embedding": {"tokenization": {"bert": {}}}})
    for deployment_id in ("hits", "full"):
        doc = deployment_doc(deployment_id, nodes, now)
        doc |= {"inference_config": config, "model_sha256": "ab" * 32, "field_names": ["text_field"]}
        if deployment_id == "full":
            doc["task_parameters"]["queue_capacity"] = 1
        client.set(keys.deployment(deployment_id), json.dumps(doc))
        client.sadd(keys.DEPLOYMENTS, deployment_id)
        effective = task_config.resolve_request_config(config, None, model_id=deployment_id)
        digest = DigestPrefix(doc["model_sha256"], doc["uid"], canonical_json(effective)).digest(HIT_TEXT)
        for node in nodes:
            client.hset(keys.routes(deployment_id), node, json.dumps(
                {"routing_state": "started", "current_allocations": 1, "started_ms": now, "threads_per_allocation": 1}
            ))  # fmt: skip
            if deployment_id == "hits":
                SyncCache(client, deployment_id, node, budget_bytes=4 << 20).put(digest, RESULT)
            else:
                client.lpush(keys.queue(deployment_id, node), b"waiting")


@pytest.fixture
def cluster_state(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    prepare_cluster(redis_client)
    yield redis_client


@pytest.fixture
async def gateways(redis_url: str, cluster_state: redis.Redis) -> AsyncIterator[list[str]]:
    servers = []
    for _ in range(2):
        app: web.Application = create_app(GatewaySettings(redis_url=redis_url, planner_interval_s=3600))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    yield [str(s.make_url("")) for s in servers]
    for server in servers:
        await server.close()


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return samples(await response.text())


async def infer(session: aiohttp.ClientSession, url: str, model: str, text: str) -> int:
    body = {"docs": [{"text_field": text}]}
    async with session.post(f"{url}/_ml/trained_models/{model}/_infer", json=body) as response:
        await response.read()
        return response.status


async def test_worker_figures_read_back_from_redis(gateways: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        found = await scrape(session, gateways[0])
    labels = {"deployment": "model-00", "node": "node-1"}
    # COMPLETE wrote 7 forward passes and 5 results; DISPATCH then hit 3 times and queued 2
    assert value(found, "inferq_batch_size_documents_count", **labels) == 7
    assert value(found, "inferq_forward_pass_duration_seconds_count", **labels) == 7
    assert value(found, "inferq_batch_size_documents_bucket", le="+Inf", **labels) == 7
    assert value(found, "inferq_inference_total", **labels) == 5 + 3
    assert value(found, "inferq_cache_hits_total", **labels) == 3
    assert value(found, "inferq_cache_misses_total", **labels) == 2
    assert value(found, "inferq_cache_entries", **labels) == 5
    assert 0 < value(found, "inferq_cache_used_bytes", **labels) <= value(found, "inferq_cache_budget_bytes", **labels)
    assert value(found, "inferq_queue_depth", **labels) == 2
    assert value(found, "inferq_queue_capacity", **labels) == 1024
    assert value(found, "inferq_in_flight", **labels) == 2
    assert value(found, "inferq_in_flight", deployment="model-00", node="node-2") == 0
    assert value(found, "inferq_inference_failures_total", reason="error", **labels) == 1
    assert value(found, "inferq_allocations", **labels) == 1
    assert value(found, "inferq_node_up", node="node-2") == 1
    assert value(found, "inferq_node_allocations", node="node-2") == 4  # one per deployment
    assert value(found, "inferq_node_processors", node="node-2") == 8
    assert 0 <= value(found, "inferq_node_heartbeat_age_seconds", node="node-2") < 60
    assert value(found, "inferq_deployment_state", deployment="hits", state="started") == 1
    assert value(found, "inferq_planner_actions_total", action="retarget") >= 20  # seeded, plus the gateways' own passes
    # cumulative buckets never decrease
    buckets = sorted(
        (float(dict(ls)["le"]), v) for (n, ls), v in found.items()
        if n == "inferq_forward_pass_duration_seconds_bucket" and set(labels.items()) <= set(ls)
    )  # fmt: skip
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)


async def test_counters_move_by_exactly_what_was_sent_and_gateways_agree(gateways: list[str]) -> None:
    a, b = gateways
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, a)
        statuses = [await infer(session, a, "hits", HIT_TEXT) for _ in range(5)]
        statuses += [await infer(session, b, "hits", HIT_TEXT) for _ in range(2)]
        statuses += [await infer(session, a, "full", "anything") for _ in range(3)]
        statuses += [await infer(session, b, "no-such-model", "x") for _ in range(4)]
        assert statuses == [200] * 7 + [429] * 3 + [404] * 4
        from_b = await scrape(session, b)  # flushes b's requests
        from_a = await scrape(session, a)  # flushes a's requests; b's are in Redis already
        again_b = await scrape(session, b)

    def delta(name: str, **labels: str) -> float:
        return total(from_a, name, **labels) - total(before, name, **labels)

    assert delta("inferq_http_requests_total", route=INFER, deployment="hits", code="2xx") == 7
    assert delta("inferq_http_requests_total", route=INFER, deployment="full", code="429") == 3
    assert delta("inferq_http_requests_total", route=INFER, deployment="", code="4xx") == 4
    assert delta("inferq_request_duration_seconds_count", deployment="hits") == 7
    assert delta("inferq_request_duration_seconds_count", deployment="full") == 3
    assert delta("inferq_cache_hits_total", deployment="hits") == 7
    assert delta("inferq_inference_total", deployment="hits") == 7
    assert delta("inferq_inference_failures_total", deployment="full", reason="rejected") == 3
    # a cache hit answered in Redis is a fast request: all 7 well under a second
    assert value(from_a, "inferq_request_duration_seconds_bucket", deployment="hits", le="1.0") == 7
    # two gateways describe the same cluster (the scrapes themselves aside)
    comparable = [k for k in from_a if k[0] not in TIME_DEPENDENT and ("route", "/metrics") not in k[1]]
    assert comparable
    assert {k: from_a[k] for k in comparable} == {k: again_b.get(k) for k in comparable}
    assert from_b != {}


async def test_status_data_and_page_files(gateways: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gateways[1] + "/_status/data") as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
        async with session.get(gateways[1] + "/_status") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "/_status/status.js" in await response.text()
        async with session.get(gateways[1] + "/_status/status.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        async with session.get(gateways[1] + "/_status/other.js") as response:
            assert response.status == 400  # no such route: nothing but the named files is served
    assert [n["node_id"] for n in data["nodes"]] == ["node-1", "node-2"]
    deployments = {d["deployment_id"]: d for d in data["deployments"]}
    assert set(deployments) == {"full", "hits", "model-00", "model-01"}
    model = deployments["model-00"]
    assert model["queue_depth"] == 4 and model["queue_capacity"] == 2048
    assert model["cache_hits"] == 6 and model["cache_misses"] == 4 and model["hit_ratio"] == 0.6
    assert model["allocations"] == 2 and model["state"] == "started"


BOOTSTRAP = "boot-id:boot-secret-0123456789"


@pytest.fixture
async def secured(redis_url: str, cluster_state: redis.Redis) -> AsyncIterator[str]:
    settings = GatewaySettings(redis_url=redis_url, planner_interval_s=3600, auth_required=True,
                               bootstrap_api_key=BOOTSTRAP)  # fmt: skip
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url(""))
    await server.close()


async def test_auth_guards_metrics_and_data_like_stats_but_not_the_page(secured: str) -> None:
    key = "ApiKey " + encode_credentials(*BOOTSTRAP.split(":"))
    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/_status/data", "/_ml/trained_models/_stats"):
            async with session.get(secured + path) as response:
                assert response.status == 401, path
                assert (await response.json())["error"]["type"] == "security_exception"
            async with session.get(secured + path, headers={"Authorization": key}) as response:
                assert response.status == 200, path
        for path in ("/_status", "/_status/status.js", "/_status/status.css"):
            async with session.get(secured + path) as response:
                assert response.status == 200, path
        # a key without monitor privileges may infer, not scrape
        body = {"name": "infer-only", "role_descriptors": {"r": {"cluster": ["monitor_inference"]}}}
        async with session.post(secured + "/_security/api_key", json=body, headers={"Authorization": key}) as response:
            infer_only = "ApiKey " + (await response.json())["encoded"]
        async with session.get(secured + "/metrics", headers={"Authorization": infer_only}) as response:
            assert response.status == 403


async def test_status_page_in_a_browser_asks_for_a_key_then_shows_the_cluster(secured: str) -> None:
    without_key = await browser.dump_dom(secured + "/_status?interval_ms=500", budget_ms=3000)
    assert '<form id="key-form">' in without_key  # shown: no longer hidden
    assert "data-deployment" not in without_key
    # the key in the fragment is stored by the page and sent as Authorization: ApiKey
    with_key = await browser.dump_dom(secured + f"/_status?interval_ms=500#key={BOOTSTRAP}", budget_ms=3000)
    assert '<form id="key-form" hidden="">' in with_key
    for deployment_id in ("hits", "full", "model-00", "model-01"):
        assert f'data-deployment="{deployment_id}"' in with_key
    for node_id in ("node-1", "node-2"):
        assert f'data-node="{node_id}"' in with_key
    assert "4 deployment(s), 2/2 node(s) live" in with_key



async def test_a_removed_deployment_leaves_no_series(gateways: list[str], redis_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert await infer(session, gateways[0], "hits", HIT_TEXT) == 200
        found = await scrape(session, gateways[0])
        assert total(found, "inferq_http_requests_total", deployment="hits") == 1
        assert total(found, "inferq_request_duration_seconds_count", deployment="hits") == 1
        client = aioredis.Redis.from_url(redis_url)
        try:  # what the control plane does when a deployment is stopped
            await DeploymentStore(client).remove("hits")
            assert await forget_deployment(client, "hits") == 3  # requests, one bucket, the sum
            assert await forget_deployment(client, "hits") == 0
            remaining = await client.hkeys(keys.METRICS_GATEWAY)
        finally:
            await client.aclose()
        found = await scrape(session, gateways[1])
    assert not [k for k in found if ("deployment", "hits") in k[1]]
    assert total(found, "inferq_http_requests_total", deployment="model-00") > 0  # the others stay
    assert not [f for f in remaining if b'"hits"' in f]
