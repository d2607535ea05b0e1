"""How long Ctrl-C takes to stop ``inferq cluster --demo-model`` (what ``make run`` runs).

    .venv/bin/python -m benchmarks.shutdown [--runs 10] [--nodes 2] [--redis-url URL]

Each run starts the cluster in a new session, waits for its ready line, answers one
``_infer``, then sends SIGINT to the whole process group (what a terminal's Ctrl-C does) and
measures until the supervisor and every process it started are gone. Without ``--redis-url``
every run uses its own private redis-server (as ``make run`` does, so each run imports the demo
model again); with it the model is imported once and later runs only restart the deployment.
Prints one line per run and the min / median / max; exits 1 if any stop took over 5 s or
left a process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from tests.processes import session_members

LIMIT_S = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_run(nodes: int, redis_url: str | None) -> tuple[float, float, int, str]:
    """(seconds to ready, seconds from SIGINT until all gone, processes left behind, what the
    supervisor said while stopping: its own timing and any child it had to kill)."""
    port = _free_port()
    argv = [sys.executable, "-m", "inferq.cli", "cluster", "--nodes", str(nodes), "--port", str(port), "--demo-model"]
    if redis_url:
        argv += ["--redis-url", redis_url]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    began = time.monotonic()
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    assert proc.stdout is not None
    try:
        line = ""
        while "inferq ready" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"cluster exited with {proc.returncode} before it was ready")
        ready_s = time.monotonic() - began
        body = json.dumps({"docs": [{"text_field": "hello world"}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/_ml/trained_models/all-minilm-l6-v2/_infer",
            data=body, method="POST", headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
        sigint_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        deadline = sigint_at + 30
        while (proc.poll() is None or session_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop_s = time.monotonic() - sigint_at
        stderr.seek(0)
        said = [line.strip() for line in stderr.read().decode(errors="replace").splitlines()]
        stopping = "; ".join(line for line in said if line.startswith("inferq:") and "stop" in line)
        return ready_s, stop_s, len(session_members(proc.pid)), stopping
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        stderr.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args(argv)
    stops: list[float] = []
    bad = 0
    for run in range(1, args.runs + 1):
        ready_s, stop_s, left, said = one_run(args.nodes, args.redis_url)
        stops.append(stop_s)
        bad += stop_s > LIMIT_S or left > 0
        print(f"run {run:2d}: ready {ready_s:5.1f}s  Ctrl-C to all gone {stop_s:5.2f}s  left behind {left}  ({said})", flush=True)
    print(
        f"Ctrl-C over {len(stops)} runs: min {min(stops):.2f}s, median {statistics.median(stops):.2f}s, "
        f"max {max(stops):.2f}s (limit {LIMIT_S:.0f}s)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
