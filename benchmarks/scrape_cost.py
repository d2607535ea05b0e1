"""What a ``GET /metrics`` scrape costs with D deployments on N nodes.

Writes the Redis state of such a cluster with the real scripts (nodes registered, deployment
documents and routes, every (deployment, node) with cached entries, hits and misses through
``DISPATCH``, queued requests, stats and forward-pass histograms through ``COMPLETE``, the
gateways' request counters and the planner's), starts one gateway in this process, and
times scrapes over HTTP, and the Redis read and the rendering on their own.

    .venv/bin/python -m benchmarks.scrape_cost [--deployments 20] [--nodes 4] [--scrapes 200]

Uses a private redis-server (or ``REDIS_URL``; its database is flushed). Prints a table and
writes ``benchmarks/results/scrape_cost.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.cluster_snapshot import read_snapshot
from gateway.metrics import render
from gateway.request_metrics import latency_field, request_field
from shared import histograms, keys, node_registry, queue
from shared.cache import cache_digest
from shared.deployment_store import RouteStatus
from shared.settings import GatewaySettings
from tests.redis_server import free_port, private_redis

RESULTS = Path(__file__).resolve().parent / "results"
INFER_ROUTE = "/_ml/trained_models/{model_id}/_infer"


def deployment_doc(deployment_id: str, node_ids: list[str], now_ms: int) -> dict[str, Any]:
    """A started deployment as the control plane writes it (the fields the readers use)."""
    return {
        "deployment_id": deployment_id,
        "model_id": deployment_id,
        "task_parameters": {
            "model_id": deployment_id,
            "deployment_id": deployment_id,
            "model_bytes": 4 << 20,
            "threads_per_allocation": 1,
            "number_of_allocations": len(node_ids),
            "queue_capacity": 1024,
            "cache_size": "4mb",
            "priority": "normal",
        },
        "cache_size_bytes": 4 << 20,
        "cache_policy": "lfu",
        "memory_bytes": 64 << 20,
        "targets": {node: 1 for node in node_ids},
        "assignment_state": "started",
        "start_time_ms": now_ms,
        "uid": deployment_id,
    }


def seed(
    client: redis.Redis,
    *,
    deployments: int,
    nodes: int,
    cache_entries: int = 50,
    hits: int = 20,
    queued: int = 8,
    batches: int = 40,
    rng_seed: int = 0,
) -> list[str]:
    """Write a busy cluster's state; returns the deployment ids."""
    rng = random.Random(rng_seed)
    now = int(time.time() * 1000)
    node_ids = [f"node-{i}" for i in range(1, nodes + 1)]
    for node_id in node_ids:
        node_registry.register(client, node_id, 8, 32 << 30, ttl_s=3600)
    deployment_ids = [f"model-{d:02d}" for d in range(deployments)]
    for deployment_id in deployment_ids:
        doc = deployment_doc(deployment_id, node_ids, now)
        client.set(keys.deployment(deployment_id), json.dumps(doc))
        client.sadd(keys.DEPLOYMENTS, deployment_id)
        for node_id in node_ids:
            client.hset(keys.routes(deployment_id), node_id, RouteStatus("started", 1, "", now, 1).to_json())
            observations: dict[str, float] = {}
            for _ in range(batches):
                size = rng.randint(1, 16)
                histograms.BATCH_SIZE.observe(observations, size)
                histograms.FORWARD_SECONDS.observe(observations, 0.004 * size * rng.uniform(0.5, 2))
            digests = [cache_digest(deployment_id, node_id, str(i)) for i in range(cache_entries)]
            pairs = [x for d in digests for x in (d, b"x" * rng.randint(200, 2000))]
            completion = queue.Completion(
                doc["cache_size_bytes"], "lfu", now, now, cache_entries, 12.5 * cache_entries, 1, 0, observations, pairs
            )
            queue.run(client, queue.complete(deployment_id, node_id, "a0", completion))
            for i in range(hits + queued):
                digest = digests[i % cache_entries] if i < hits else cache_digest("miss", str(i))
                queue.run(client, queue.dispatch(
                    deployment_id, node_id, digest=digest, payload=b"request", capacity=1024, now_ms=now, start_ms=now
                ))  # fmt: skip
        for code, n in (("2xx", 1000), ("4xx", 3), ("429", 5), ("5xx", 1)):
            client.hincrby(keys.METRICS_GATEWAY, request_field(INFER_ROUTE, deployment_id, code), n)
        for bucket in range(len(histograms.REQUEST_SECONDS.bounds) + 1):
            client.hincrby(keys.METRICS_GATEWAY, latency_field(deployment_id, bucket), rng.randint(0, 100))
        client.hincrbyfloat(keys.METRICS_GATEWAY, latency_field(deployment_id, "sum"), 123.4)
    for action, n in (("pass", 500), ("retarget", 20), ("reap_node", 1), ("requeue", 2)):
        client.hincrby(keys.METRICS_PLANNER, action, n)
    return deployment_ids


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def measure(redis_url: str, scrapes: int) -> dict[str, Any]:
    sync = redis.Redis.from_url(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    settings = GatewaySettings(redis_url=redis_url, port=free_port(), planner_interval_s=3600)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(5):  # warm up
                async with session.get(url + "/metrics") as response:
                    body = await response.read()
            http_s: list[float] = []
            before = _commands(sync)
            for _ in range(scrapes):
                started = time.perf_counter()
                async with session.get(url + "/metrics") as response:
                    body = await response.read()
                http_s.append(time.perf_counter() - started)
            commands = (_commands(sync) - before) / scrapes - 1  # the INFO call itself
            status_s: list[float] = []
            for _ in range(scrapes):
                started = time.perf_counter()
                async with session.get(url + "/_status/data") as response:
                    await response.read()
                status_s.append(time.perf_counter() - started)
        read_s: list[float] = []
        render_s: list[float] = []
        read_cpu_s = render_cpu_s = 0.0
        redis_before = _redis_cpu_s(sync)
        for _ in range(scrapes):
            started, cpu = time.perf_counter(), time.process_time()
            snapshot = await read_snapshot(client)
            read_s.append(time.perf_counter() - started)
            read_cpu_s += time.process_time() - cpu
        redis_cpu_s = (_redis_cpu_s(sync) - redis_before) / scrapes
        for _ in range(scrapes):
            started, cpu = time.perf_counter(), time.process_time()
            render(snapshot)
            render_s.append(time.perf_counter() - started)
            render_cpu_s += time.process_time() - cpu
    finally:
        await runner.cleanup()
        await client.aclose()
        sync.close()
    families = list(text_string_to_metric_families(body.decode()))
    return {
        "http_scrape": _ms(http_s),
        "redis_read": _ms(read_s),
        "render": _ms(render_s),
        "status_data_http": _ms(status_s),
        "body_bytes": len(body),
        "families": len(families),
        "samples": sum(len(f.samples) for f in families),
        "redis_commands_per_scrape": round(commands, 1),
        "read_cpu_ms_per_scrape": round(read_cpu_s / scrapes * 1000, 2),  # gateway process
        "render_cpu_ms_per_scrape": round(render_cpu_s / scrapes * 1000, 2),
        "redis_cpu_ms_per_scrape": round(redis_cpu_s * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    with private_redis() as redis_url:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        seed(client, deployments=args.deployments, nodes=args.nodes)
        client.close()
        result = {"deployments": args.deployments, "nodes": args.nodes, "scrapes": args.scrapes}
        result |= asyncio.run(measure(redis_url, args.scrapes))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scrape_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.deployments} deployments x {args.nodes} nodes, {args.scrapes} scrapes")
    for name in ("http_scrape", "redis_read", "render", "status_data_http"):
        r = result[name]
        print(f"  {name:<18} p50 {r['p50_ms']:8.2f} ms   p95 {r['p95_ms']:8.2f} ms")
    print(f"  body {result['body_bytes']} bytes, {result['families']} families, {result['samples']} samples, "
          f"{result['redis_commands_per_scrape']} Redis commands per scrape")  # fmt: skip
    print(f"  CPU per scrape: gateway {result['read_cpu_ms_per_scrape']} ms reading + "
          f"{result['render_cpu_ms_per_scrape']} ms rendering, redis-server {result['redis_cpu_ms_per_scrape']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
