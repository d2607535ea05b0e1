"""``inferq cluster`` run as a user runs it (``make run``): a subprocess on a database of the test
Redis, read until its one "inferq ready" line, stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from tests.redis_server import free_port


@dataclass
class ClusterCommand:
    proc: subprocess.Popen[str]
    url: str
    ready_line: str
    ready_s: float


@contextmanager
def cluster_command(
    redis_url: str, database: int, *args: str, env: Mapping[str, str] | None = None, ready_within_s: float = 300
) -> Iterator[ClusterCommand]:
    """``inferq cluster --nodes 2 --demo-model *args`` on an emptied ``database``; on exit it is
    stopped with SIGINT and waited for (the caller checks ``proc.returncode``)."""
    db_url = f"{redis_url.rsplit('/', 1)[0]}/{database}"
    client = redis.Redis.from_url(db_url)
    client.flushdb()
    client.close()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferq.cli", "cluster", "--nodes", "2", "--port", str(port), "--demo-model", *args],
        env={**os.environ, "INFERQ_REDIS_URL": db_url, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        began, line = time.monotonic(), ""
        while "inferq ready" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "cluster exited before it was ready"
            assert time.monotonic() - began < ready_within_s
        yield ClusterCommand(proc, f"http://127.0.0.1:{port}", line, time.monotonic() - began)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
