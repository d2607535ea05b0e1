"""Bulk inference jobs through real RQ bulk workers (``inferq bulk-worker`` processes) and a real
cluster: order and completeness, progress, back-pressure, fairness to interactive requests,
retry after a killed worker, job timeouts."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry

from inferq.bulk import BULK_QUEUE, BulkOptions, MsgpackSerializer, enqueue_bulk
from shared import keys
from tests.cluster import LocalCluster, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow

# fast failure detection for the tests: an abandoned job is found within ~3 s + 1 s
WORKER_ENV = {
    "INFERQ_BULK_HEARTBEAT_TTL_S": "3",
    "INFERQ_BULK_IDLE_POLL_S": "1",
    "INFERQ_BULK_MAINTENANCE_INTERVAL_S": "1",
}
FINAL = ("finished", "failed", "stopped", "canceled")


@pytest.fixture(scope="module")
def cluster(redis_url: str, tiny_embedding_model: Any) -> Iterator[LocalCluster]:
    # one node, one allocation per deployment: bulk and interactive traffic share one queue
    with local_cluster(redis_url, nodes=[("node-1", 2)]) as running:
        upload(running, "tiny", tiny_embedding_model)
        start(running, "tiny", "deployment_id=tiny-bulk&cache_size=0b&wait_for=started")
        start(running, "tiny", "deployment_id=tiny-tight&cache_size=0b&queue_capacity=8&wait_for=started")
        yield running


@contextmanager
def bulk_worker(cluster: LocalCluster, queue: str = BULK_QUEUE) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **cluster.env, **WORKER_ENV, "INFERQ_BULK_QUEUES": queue}
    process = subprocess.Popen(
        [sys.executable, "-m", "inferq.cli", "bulk-worker", "--redis-url", cluster.redis_url], env=env
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def worker(cluster: LocalCluster) -> Iterator[subprocess.Popen[bytes]]:
    with bulk_worker(cluster) as process:
        yield process


@pytest.fixture
def conn(cluster: LocalCluster) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(cluster.redis_url)
    yield client
    client.close()


def texts(tag: str, n: int) -> list[str]:
    return [f"{tag} document {i} about the quick brown fox and queue number {i * 7}" for i in range(n)]


def docs(values: list[str]) -> list[dict[str, str]]:
    return [{"text_field": t} for t in values]


def write_jsonl(path: Path, values: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text_field": t}) + "\n" for t in values))
    return path


def wait_done(job: Job, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := str(job.get_status(refresh=True).value)) not in FINAL:
        assert time.monotonic() < deadline, f"job {job.id} still {status} after {timeout_s}s: {job.get_meta()}"
        time.sleep(0.02)
    return status


def summary_of(job: Job) -> dict[str, Any]:
    value = job.return_value(refresh=True)
    assert isinstance(value, dict), job.latest_result()
    return value


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def interactive_ms(cluster: LocalCluster, i: int) -> float:
    began = time.perf_counter()
    status, body = infer(cluster, "tiny-bulk", [f"interactive request {i} at {time.time()}"])
    assert status == 200, body
    return (time.perf_counter() - began) * 1000


def test_2000_documents_come_back_once_each_in_order_with_progress(
    cluster: LocalCluster, worker: subprocess.Popen[bytes], conn: redis.Redis
) -> None:
    values = texts("inline", 2000)
    began = time.perf_counter()
    job = enqueue_bulk(
        conn, "tiny-bulk", docs(values), options=BulkOptions(progress_interval_s=0.05),
        result_ttl_s=600, failure_ttl_s=900,
    )
    progress: list[int] = []
    while str(job.get_status(refresh=True).value) not in FINAL:
        progress.append(int(job.get_meta(refresh=True).get("done") or 0))
        time.sleep(0.01)
    bulk_s = time.perf_counter() - began
    assert job.get_status() == "finished", job.latest_result()
    summary = summary_of(job)
    results = summary["results"]
    assert [r["index"] for r in results] == list(range(2000))
    assert all(set(r) == {"index", "result"} for r in results)
    assert summary["done"] == summary["total"] == 2000 and summary["errors"] == 0
    assert job.get_meta(refresh=True)["done"] == job.get_meta()["total"] == 2000
    assert progress == sorted(progress) and any(0 < done < 2000 for done in progress), progress
    # each result is its own document's: compare a few with the HTTP path
    sample = [0, 1, 1000, 1999]
    status, body = infer(cluster, "tiny-bulk", [values[i] for i in sample])
    assert status == 200
    for i, expected in zip(sample, body["inference_results"], strict=True):
        assert np.allclose(results[i]["result"]["predicted_value"], expected["predicted_value"], atol=1e-6)
    assert not np.allclose(results[0]["result"]["predicted_value"], results[1]["result"]["predicted_value"])
    # RQ bookkeeping: explicit TTLs, msgpack on the wire
    assert 0 < conn.ttl(job.key) <= 600 and job.failure_ttl == 900
    assert MsgpackSerializer.loads(zlib.decompress(cast(bytes, conn.hget(job.key, "data"))))[0] == "inferq.bulk.run_bulk_job"

    # the same documents through HTTP, as many in flight as the bulk window (2 clients x 8 docs)
    assert summary["window_docs"] == 16
    chunks = [values[i : i + 8] for i in range(0, len(values), 8)]
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        assert all(status == 200 for status, _ in pool.map(lambda c: infer(cluster, "tiny-bulk", c), chunks))
    http_s = time.perf_counter() - began
    print(
        f"\n[bulk] 2000 docs, tiny model, 1 allocation: bulk job {2000 / bulk_s:.0f} docs/s end to end "
        f"(enqueue to finished; {summary['docs_per_s']} docs/s inside the job), "
        f"HTTP _infer 2 clients x 8 docs {2000 / http_s:.0f} docs/s"
    )


def test_full_queues_are_waited_out_and_nothing_is_dropped(
    worker: subprocess.Popen[bytes], conn: redis.Redis
) -> None:
    # queue_capacity 8 -> a bulk job may hold 4 of it; a 16-document window keeps hitting that bound
    values = texts("tight", 300)
    job = enqueue_bulk(conn, "tiny-tight", docs(values), options=BulkOptions(backoff_max_ms=20))
    assert wait_done(job, 120) == "finished", job.latest_result()
    summary = summary_of(job)
    assert [r["index"] for r in summary["results"]] == list(range(300))
    assert all("result" in r for r in summary["results"])
    assert summary["backoffs"] > 0  # it was refused, waited, and retried
    stats = conn.hgetall(keys.stats("tiny-tight", "node-1"))
    assert int(stats.get(b"rejected_execution_count", 0)) == 0  # back-pressure is not a rejection
    # a refused chunk may have queued some of its documents first: computed, their replies dropped
    wasted = int(stats[b"inference_count"]) - 300
    assert wasted >= 0
    print(f"\n[bulk back-pressure] {summary['backoffs']} refusals waited out; {wasted} documents computed twice")


def test_bad_documents_become_error_entries(worker: subprocess.Popen[bytes], conn: redis.Redis) -> None:
    batch: list[dict[str, Any]] = [{"text_field": "fine 0"}, {"other": "no text"}, {"text_field": 5}, {"text_field": "fine 3"}]
    job = enqueue_bulk(conn, "tiny-bulk", batch)
    assert wait_done(job, 60) == "finished", job.latest_result()
    summary = summary_of(job)
    results = summary["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3] and summary["errors"] == 2
    assert "result" in results[0] and "result" in results[3]
    assert results[1]["error"]["status"] == 400
    assert "Input field [text_field] does not exist" in results[1]["error"]["reason"]
    assert results[2]["error"]["status"] == 400


def test_interactive_latency_stays_close_to_idle_while_a_job_runs(
    cluster: LocalCluster, worker: subprocess.Popen[bytes], conn: redis.Redis, tmp_path: Path
) -> None:
    """Idle and busy phases alternate (the bulk worker is paused with SIGSTOP and its in-flight
    documents drain), so noise from other processes on the machine falls on both alike."""
    options = BulkOptions()
    source = write_jsonl(tmp_path / "fairness.jsonl", texts("fairness", 5000))
    for i in range(20):
        interactive_ms(cluster, i)  # warm up
    queue, bulk_queue = keys.queue("tiny-bulk", "node-1"), keys.bulk_queue("tiny-bulk", "node-1")
    job = enqueue_bulk(conn, "tiny-bulk", source, output_path=tmp_path / "fairness.out.jsonl", options=options)
    busy: list[float] = []
    idle: list[float] = []
    longest_queue = 0
    deadline = time.monotonic() + 90
    while str(job.get_status(refresh=True).value) not in FINAL:
        assert time.monotonic() < deadline
        if str(job.get_status().value) != "started" or not job.get_meta(refresh=True).get("done"):
            time.sleep(0.01)
            continue
        phase_end = time.perf_counter() + 0.3
        while time.perf_counter() < phase_end:
            busy.append(interactive_ms(cluster, len(busy)))
            longest_queue = max(longest_queue, int(conn.llen(queue)) + int(conn.llen(bulk_queue)))
        worker.send_signal(signal.SIGSTOP)
        try:
            while conn.llen(queue) or conn.llen(bulk_queue):
                time.sleep(0.002)
            phase_end = time.perf_counter() + 0.3
            while time.perf_counter() < phase_end:
                idle.append(interactive_ms(cluster, len(idle)))
        finally:
            worker.send_signal(signal.SIGCONT)
    assert job.get_status() == "finished", job.latest_result()
    window = summary_of(job)["window_docs"]
    assert window == options.window_docs_per_allocation  # one started allocation
    assert len(busy) >= 50 and len(idle) >= 50
    idle_p50, idle_p99 = percentile(idle, 50), percentile(idle, 99)
    busy_p50, busy_p99 = percentile(busy, 50), percentile(busy, 99)
    print(
        f"\n[bulk fairness] window {window} docs, chunks of {options.chunk_docs}: interactive _infer "
        f"idle p50 {idle_p50:.1f} ms p99 {idle_p99:.1f} ms (n={len(idle)}); with the bulk job "
        f"p50 {busy_p50:.1f} ms p99 {busy_p99:.1f} ms (n={len(busy)}); p99 ratio {busy_p99 / idle_p99:.2f}; "
        f"longest node queue seen {longest_queue}"
    )
    # the bound that holds by construction: an interactive request never waits behind more than
    # the job's window (an unbounded job would fill the queue to queue_share x capacity, 512)
    assert longest_queue <= window + 1  # + the one interactive request of this test
    # the target is p99 within 2x of idle; asserted loosely, as CPU contention on a small shared
    # machine (the bulk worker and the node compete with the gateway) dominates these numbers
    assert busy_p50 <= 3 * idle_p50 + 5
    assert busy_p99 <= 4 * idle_p99 + 20


def test_a_killed_worker_s_job_is_retried_and_resumes_without_duplicates(
    cluster: LocalCluster, conn: redis.Redis, tmp_path: Path
) -> None:
    queue_name = "inferq-bulk-kill"
    values = texts("resume", 4000)
    source = write_jsonl(tmp_path / "resume.jsonl", values)
    output = tmp_path / "resume.out.jsonl"
    job = enqueue_bulk(
        conn, "tiny-bulk", source, output_path=output, queue_name=queue_name,
        options=BulkOptions(progress_interval_s=0.05), retries=2,
    )
    with bulk_worker(cluster, queue_name) as first:
        deadline = time.monotonic() + 60
        while int(job.get_meta(refresh=True).get("done") or 0) < 400:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = time.monotonic()
    done_at_kill = int(job.get_meta(refresh=True)["done"])
    assert done_at_kill < 4000 and job.get_status(refresh=True) == "started"
    part = Path(f"{output}.{job.id}.part")
    assert part.exists() and not output.exists()

    with bulk_worker(cluster, queue_name):
        assert wait_done(job, 90) == "finished", job.latest_result()
        recovered_s = time.monotonic() - killed_at
    summary = summary_of(job)
    job.refresh()  # type: ignore[no-untyped-call]
    assert job.retries_left == 1  # RQ re-enqueued the abandoned job once
    assert summary["resumed_from"] >= done_at_kill > 0  # it went on from the part file
    assert summary["output_path"] == str(output) and not part.exists()
    lines = output.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(4000))  # each exactly once
    assert all('"result":' in line for line in lines)
    sample = [0, done_at_kill - 1, done_at_kill, 3999]
    status, body = infer(cluster, "tiny-bulk", [values[i] for i in sample])
    assert status == 200
    for i, expected in zip(sample, body["inference_results"], strict=True):
        got = json.loads(lines[i])["result"]["predicted_value"]
        assert np.allclose(got, expected["predicted_value"], atol=1e-6)
    print(f"\n[bulk retry] killed at {done_at_kill}/4000 documents; finished {recovered_s:.1f}s after the kill")


def test_a_job_over_its_timeout_fails_and_is_kept_for_failure_ttl(
    worker: subprocess.Popen[bytes], conn: redis.Redis, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "long.jsonl", texts("long", 30_000))
    output = tmp_path / "long.out.jsonl"
    job = enqueue_bulk(
        conn, "tiny-bulk", source, output_path=output, job_timeout_s=2, retries=0, failure_ttl_s=600
    )
    assert wait_done(job, 60) == "failed"
    failure = job.latest_result()
    assert failure is not None and "JobTimeoutException" in (failure.exc_string or "")
    assert job.id in FailedJobRegistry(BULK_QUEUE, connection=conn, serializer=MsgpackSerializer).get_job_ids()
    assert 0 < conn.ttl(job.key) <= 600
    assert not output.exists()
    # the worker goes on with the next job
    after = enqueue_bulk(conn, "tiny-bulk", docs(texts("after", 3)))
    assert wait_done(after, 60) == "finished"
