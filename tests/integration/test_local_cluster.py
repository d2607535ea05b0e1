"""``inferq cluster --demo-model`` (what ``make run`` runs): ready line, a working curl,
and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis

from tests.cluster import http
from tests.redis_server import free_port

pytestmark = pytest.mark.slow


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cluster_command_serves_the_demo_model_and_stops_cleanly(redis_url: str) -> None:
    port = free_port()
    db_url = redis_url.rsplit("/", 1)[0] + "/14"
    client = redis.Redis.from_url(db_url)
    client.flushdb()
    client.close()
    env = {**os.environ, "INFERQ_REDIS_URL": db_url, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferq.cli", "cluster", "--nodes", "2", "--port", str(port), "--demo-model"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        began = time.monotonic()
        line = ""
        while "inferq ready" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "cluster exited before it was ready"
            assert time.monotonic() - began < 240
        ready_s = time.monotonic() - began
        command = re.search(r"curl .*", line)
        assert command is not None
        body = re.search(r"-d '(.*)'", line)
        assert body is not None
        status, result = http(
            "POST", f"http://127.0.0.1:{port}/_ml/trained_models/all-minilm-l6-v2/_infer", body.group(1).encode()
        )
        assert status == 200 and len(result["inference_results"][0]["predicted_value"]) == 384
        children = children_of(proc.pid)
        assert len(children) >= 3  # gateway + 2 nodes (+ bulk worker)
        print(f"inferq cluster ready after {ready_s:.1f}s")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]
