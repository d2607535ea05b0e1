"""A real local cluster for end-to-end tests: gateway and worker nodes as child processes
against the session's redis-server (each cluster on its own Redis database), or against a
Redis Cluster (a ``redis+cluster://`` URL: its masters are emptied first, it has database 0 only)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shared import keys
from shared.redis_conn import is_cluster_url, sync_client
from tests.redis_server import free_port

_DATABASES = itertools.cycle(range(1, 16))


@dataclass
class LocalCluster:
    redis_url: str
    gateway_port: int
    env: dict[str, str]
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateways: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def _spawn(self, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, **(extra_env or {})}
        return subprocess.Popen([sys.executable, "-m", "inferq.cli", *argv], env=env)

    def start_gateway(self, port: int | None = None) -> int:
        return self.start_gateway_with({}, port)

    def start_gateway_with(self, extra_env: dict[str, str], port: int | None = None) -> int:
        port = port or free_port()
        self.gateways.append(self._spawn(["gateway", "--port", str(port)], extra_env))
        wait_http(f"http://127.0.0.1:{port}/", 90)
        return port

    def add_node(self, node_id: str, processors: int = 1, memory: str = "8gb", extra_env: dict[str, str] | None = None) -> None:
        self.nodes[node_id] = self._spawn(
            ["worker", "--node-id", node_id, "--processors", str(processors), "--memory", memory], extra_env
        )
        client = sync_client(self.redis_url)
        deadline = time.monotonic() + 90  # importing torch on a loaded 2-core machine can take a while
        while not client.exists(keys.node_heartbeat(node_id)):
            if time.monotonic() > deadline or self.nodes[node_id].poll() is not None:
                raise RuntimeError(f"worker {node_id} did not register")
            time.sleep(0.05)
        client.close()

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.nodes.pop(node_id)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        procs = [*self.nodes.values(), *self.gateways]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def call(self, method: str, path: str, body: Any = None, timeout_s: float = 120) -> tuple[int, Any]:
        return http(method, self.url + path, body, timeout_s)

    def deployment_stats(self, deployment_id: str) -> dict[str, Any]:
        """The ``deployment_stats`` object of one deployment, from ``GET _stats``."""
        status, body = self.call("GET", f"/_ml/trained_models/{deployment_id}/_stats")
        assert status == 200, body
        for entry in body["trained_model_stats"]:
            stats = entry.get("deployment_stats")
            if stats and stats["deployment_id"] == deployment_id:
                return stats  # type: ignore[no-any-return]
        raise AssertionError(f"no deployment {deployment_id} in {body}")


def pause_process(pid: int, timeout_s: float = 10) -> None:
    """SIGSTOP, then wait until every thread of the process is stopped: the signal reaches the
    threads of a busy process on a loaded machine some milliseconds later, and a request sent
    meanwhile can still be served."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while True:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as handle:
                    states.append(handle.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue  # the thread ended
        if all(state in ("T", "t") for state in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop: {states}")
        time.sleep(0.005)


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def http(method: str, url: str, body: Any = None, timeout_s: float = 120) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


@contextmanager
def local_cluster(
    base_redis_url: str,
    nodes: Sequence[tuple[str, int]] = (("node-1", 1), ("node-2", 1)),
    env: dict[str, str] | None = None,
) -> Iterator[LocalCluster]:
    """Start a gateway and worker nodes on a fresh Redis database; stop everything after."""
    redis_url = base_redis_url if is_cluster_url(base_redis_url) else base_redis_url.rsplit("/", 1)[0] + f"/{next(_DATABASES)}"
    client = sync_client(redis_url)
    client.flushdb()  # on a Redis Cluster: every master's
    client.close()
    cluster = LocalCluster(
        redis_url=redis_url,
        gateway_port=0,
        env={
            "INFERQ_REDIS_URL": redis_url,
            "INFERQ_HEARTBEAT_TTL_S": "3",
            "INFERQ_PLANNER_INTERVAL_S": "0.5",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore",
            **(env or {}),
        },
    )
    try:
        cluster.gateway_port = cluster.start_gateway()
        for node_id, processors in nodes:
            cluster.add_node(node_id, processors)
        yield cluster
    finally:
        cluster.stop()


def upload(cluster: LocalCluster, model_id: str, traced: Any) -> None:
    from inferq.importer import RestClient
    from inferq.importer import upload as upload_model

    upload_model(RestClient(cluster.url), model_id, traced.config, traced.torchscript, traced.vocabulary, progress=False)


def start(cluster: LocalCluster, model_id: str, query: str = "", timeout_s: float = 120) -> dict[str, Any]:
    if "timeout=" not in query:  # a loaded 2-core CI machine can take a while to load a model
        query = f"{query}&timeout=90s" if query else "timeout=90s"
    status, body = cluster.call("POST", f"/_ml/trained_models/{model_id}/deployment/_start?{query}", timeout_s=timeout_s)
    assert status == 200, body
    assignment: dict[str, Any] = body["assignment"]
    return assignment


def infer(cluster: LocalCluster, model_id: str, texts: Sequence[str], **extra: Any) -> tuple[int, Any]:
    body = {"docs": [{"text_field": t} for t in texts], **extra}
    return cluster.call("POST", f"/_ml/trained_models/{model_id}/_infer", body)
