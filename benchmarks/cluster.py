"""Cache hits on one Redis vs on a 3-master Redis Cluster: the Redis-bound path, two layouts.

Each layout: two gateways on one port (``INFERQ_REUSE_PORT``: the kernel spreads wrk's
connections over them), one worker node, the tiny test model with a cache that holds every
text. The texts are sent once first (misses, computed and cached), then wrk sends them again
and again (``repeat`` mode) for ``--duration`` seconds: every measured request is a cache hit,
answered by a gateway and Redis alone (``DISPATCH`` returns the cached result; no worker).

Per layout: hits per second, latency p50/p99, Redis commands per request (``INFO
commandstats`` deltas summed over every master, the cluster's background traffic measured
while idle and taken off), and CPU milliseconds per request of the gateways and of the Redis
servers (all of them summed). Both layouts run on this machine, one after the other, for
``--rounds`` rounds (alternating, so a busy minute of a shared machine hits both); the table
shows each layout's median round by hits per second, the JSON every round.

    .venv/bin/python -m benchmarks.cluster [--rounds 3] [--duration 20] [--connections 32] [--texts 200]

Writes ``benchmarks/results/cluster.json`` and prints a table (docs/protocol.md quotes one run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import CpuMeter, counter_delta, make_texts, redis_counters, run_wrk, write_texts
from tests.cluster import LocalCluster, local_cluster, start, upload
from tests.redis_cluster import redis_cluster
from tests.redis_server import redis_server_process

RESULTS = Path(__file__).resolve().parent / "results"
DEPLOYMENT = "hits"
IDLE_S = 5.0  # the background rate (heartbeats, planner, view reloads) is measured this long


@contextmanager
def one_redis() -> Iterator[tuple[str, list[redis.Redis], list[int]]]:
    with redis_server_process() as (url, pid):
        client = redis.Redis.from_url(url)
        try:
            yield url, [client], [pid]
        finally:
            client.close()


@contextmanager
def three_masters() -> Iterator[tuple[str, list[redis.Redis], list[int]]]:
    with redis_cluster(masters=3) as cluster:
        clients = [server.client() for server in cluster.masters()]
        try:
            yield cluster.url, clients, [server.proc.pid for server in cluster.servers]
        finally:
            for client in clients:
                client.close()


LAYOUTS: dict[str, Callable[[], Any]] = {"one Redis": one_redis, "Redis Cluster, 3 masters": three_masters}


def summed_counters(masters: Sequence[redis.Redis]) -> dict[str, int]:
    total: dict[str, int] = {}
    for client in masters:
        for name, value in redis_counters(client).items():
            total[name] = total.get(name, 0) + value
    return total


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (both gateways are up when there are two)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def post(url: str, text: str) -> int:
    body = json.dumps({"docs": [{"text_field": text}]}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return int(response.status)


def cache_entries(cluster: LocalCluster) -> int:
    return sum(int(node.get("cache_entry_count", 0)) for node in cluster.deployment_stats(DEPLOYMENT)["nodes"])


def hit_count(cluster: LocalCluster) -> int:
    return sum(int(node.get("inference_cache_hit_count", 0)) for node in cluster.deployment_stats(DEPLOYMENT)["nodes"])


def measure_layout(name: str, traced: Any, texts: list[str], texts_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    with LAYOUTS[name]() as (url, masters, redis_pids), tempfile.TemporaryDirectory(prefix="inferq-bench-models-") as models:
        env = {"INFERQ_REUSE_PORT": "on", "INFERQ_HEARTBEAT_TTL_S": "30", "INFERQ_MODEL_DIR": models}
        with local_cluster(url, nodes=[("node-1", 1)], env=env) as cluster:
            cluster.start_gateway(cluster.gateway_port)  # the second gateway, on the same port
            deadline = time.monotonic() + 60
            while listeners(cluster.gateway_port) < 2:
                assert time.monotonic() < deadline, "the second gateway did not start"
                time.sleep(0.1)
            upload(cluster, "tiny", traced)
            start(cluster, "tiny", f"deployment_id={DEPLOYMENT}&cache_size=64mb&wait_for=fully_allocated")
            infer_url = f"{cluster.url}/_ml/trained_models/{DEPLOYMENT}/_infer"
            for text in texts:  # the misses: every text computed once and cached
                assert post(infer_url, text) == 200
            while cache_entries(cluster) < len(texts):
                time.sleep(0.1)
            run_wrk(infer_url, texts_file, mode="repeat", tag=f"warm-{len(name)}", connections=args.connections,
                    duration_s=3, repeat_count=len(texts))  # fmt: skip
            time.sleep(1.0)

            idle_before = summed_counters(masters)
            time.sleep(IDLE_S)
            idle = counter_delta(idle_before, summed_counters(masters))
            pids = {f"gateway-{i}": proc.pid for i, proc in enumerate(cluster.gateways)}
            pids |= {f"redis-{i}": pid for i, pid in enumerate(redis_pids)}
            hits_before = hit_count(cluster)
            before = summed_counters(masters)
            meter = CpuMeter(pids)
            meter.start()
            result = run_wrk(infer_url, texts_file, mode="repeat", tag=f"hits-{len(name)}", connections=args.connections,
                             duration_s=args.duration, repeat_count=len(texts))  # fmt: skip
            cpu = meter.stop()
            delta = counter_delta(before, summed_counters(masters))
            hits = hit_count(cluster) - hits_before
    requests = max(1, result.requests)
    background = {k: v * cpu["wall_s"] / IDLE_S for k, v in idle.items()}
    commands = {k[4:]: v for k, v in delta.items() if k.startswith("cmd:")}
    net_commands = sum(commands.values()) - sum(v for k, v in background.items() if k.startswith("cmd:"))
    return {
        "layout": name,
        "requests": result.requests,
        "cache_hits": hits,
        "hits_per_s": round(result.ok_per_s, 1),
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
        "status": {"200": result.status_200, "429": result.status_429, "other": result.status_other},
        "redis_commands_per_request": round(net_commands / requests, 3),
        "redis_commands_per_request_with_background": round(sum(commands.values()) / requests, 3),
        "redis_round_trips_per_request": round((delta.get("reads_processed", 0) - background.get("reads_processed", 0)) / requests, 3),
        "commands_by_name_per_request": {k: round(v / requests, 3) for k, v in sorted(commands.items(), key=lambda kv: -kv[1])},
        "background_commands_per_s": round(sum(v for k, v in idle.items() if k.startswith("cmd:")) / IDLE_S, 1),
        "cpu_ms_per_request": {
            "gateways": round(sum(v for k, v in cpu.items() if k.startswith("gateway-")) * 1000 / requests, 4),
            "redis": round(sum(v for k, v in cpu.items() if k.startswith("redis-")) * 1000 / requests, 4),
        },
        "machine_busy_share": round(cpu["machine_busy_s"] / max(cpu["machine_total_s"], 1e-9), 3),
        "wrk": result.to_json(),
    }


def render(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| layout | cache hits/s | p50 ms | p99 ms | Redis commands/request | Redis round trips/request | gateway CPU ms/req | Redis CPU ms/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['layout']} | {row['hits_per_s']:.0f} | {row['latency_ms']['p50']:.2f} | {row['latency_ms']['p99']:.2f} "
            f"| {row['redis_commands_per_request']:.2f} | {row['redis_round_trips_per_request']:.2f} "
            f"| {row['cpu_ms_per_request']['gateways']:.3f} | {row['cpu_ms_per_request']['redis']:.3f} |"
        )
    for row in rows:
        lines.append(f"\n{row['layout']}: hits/s of every round {row.get('hits_per_s_of_every_round', [])}")
    for row in rows:
        top = ", ".join(f"{k} {v}" for k, v in list(row["commands_by_name_per_request"].items())[:6])
        lines.append(f"\n{row['layout']}: per request {top}; background {row['background_commands_per_s']} commands/s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load per layout")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--texts", type=int, default=200, help="distinct texts (all cached)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every layout (the median is shown)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), action="append", help="only these layouts")
    args = parser.parse_args(argv)

    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model

    traced = trace_hf_model(build_tiny_model("text_embedding", Path(tempfile.mkdtemp())), "text_embedding")
    texts = make_texts(args.texts, seed=11)
    RESULTS.mkdir(parents=True, exist_ok=True)
    texts_file = write_texts(RESULTS / "cluster-texts.txt", texts)
    names = args.layout or list(LAYOUTS)
    rounds = [[measure_layout(name, traced, texts, texts_file, args) for name in names] for _ in range(args.rounds)]
    rows = []
    for i, _ in enumerate(names):
        runs = sorted((r[i] for r in rounds), key=lambda row: row["hits_per_s"])
        rows.append({**runs[len(runs) // 2], "hits_per_s_of_every_round": [row["hits_per_s"] for row in runs]})
    report = {
        "command": " ".join(["python -m benchmarks.cluster", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_s": args.duration,
        "connections": args.connections,
        "texts": args.texts,
        "rounds": args.rounds,
        "layouts": rows,
        "every_round": rounds,
    }
    (RESULTS / "cluster.json").write_text(json.dumps(report, indent=2))
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
