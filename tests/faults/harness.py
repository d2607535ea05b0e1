"""What the fault-injection tests and ``benchmarks/faults.py`` share: a redis-server that can be
killed and started again on the same port and data directory (with or without AOF), a closed
loop of HTTP ``_infer`` clients that records every answer, and the checks on what is left."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import keys
from tests.redis_server import free_port


class RedisProcess:
    """A redis-server of our own; ``aof``: ``appendonly yes``, ``appendfsync everysec``."""

    def __init__(self, *, aof: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (make test installs it)")
        self.binary = binary
        self.aof = aof
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="inferq-faults-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", self.workdir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping() and client.info("persistence").get("loading", 0) == 0:
                    break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
            time.sleep(0.02)
        client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis flushes its AOF and exits (a clean restart); SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def redis_process(*, aof: bool) -> Iterator[RedisProcess]:
    server = RedisProcess(aof=aof)
    server.start()
    try:
        yield server
    finally:
        server.close()


def es_shaped(status: int, body: Any) -> bool:
    """An Elasticsearch error body: ``{"error": {"root_cause", "type", "reason"}, "status"}``."""
    if not isinstance(body, dict) or body.get("status") != status or not isinstance(body.get("error"), dict):
        return False
    error = body["error"]
    return isinstance(error.get("type"), str) and isinstance(error.get("reason"), str) and "root_cause" in error


@dataclass(frozen=True)
class Answer:
    sent_s: float  # time.monotonic()
    done_s: float
    status: int  # 0: no HTTP answer at all (connection refused or reset, client timeout)
    body: Any

    @property
    def ok(self) -> bool:
        return self.status == 200


def infer_once(url: str, model_id: str, text: str, timeout: str = "10s", client_timeout_s: float = 60) -> Answer:
    body = json.dumps({"docs": [{"text_field": text}]}).encode()
    request = urllib.request.Request(
        f"{url}/_ml/trained_models/{model_id}/_infer?timeout={timeout}", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=client_timeout_s) as response:
            return Answer(sent, time.monotonic(), response.status, json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return Answer(sent, time.monotonic(), exc.code, parsed)
    except (urllib.error.URLError, OSError) as exc:
        return Answer(sent, time.monotonic(), 0, repr(exc))


@dataclass
class Load:
    """``clients`` threads, each sending one ``_infer`` at a time (distinct texts: no cache hit)."""

    url: str
    model_id: str
    clients: int = 4
    timeout: str = "10s"
    tag: str = "load"
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _counter: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for n in range(self.clients):
            thread = threading.Thread(target=self._run, name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                n = next(self._counter)
            answer = infer_once(self.url, self.model_id, f"{self.tag} request {n} about a quick brown fox", self.timeout)
            with self._lock:
                self.answers.append(answer)

    def wait_for_successes(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(a.ok for a in list(self.answers)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} successes: {self.answers[-3:]}"
            time.sleep(0.05)


def longest_gap_s(answers: list[Answer], start_s: float, end_s: float) -> float:
    """The longest time in [start_s, end_s] with no successful answer completing."""
    marks = sorted([start_s, end_s] + [a.done_s for a in answers if a.ok and start_s <= a.done_s <= end_s])
    return max(b - a for a, b in itertools.pairwise(marks))


def bad_answers(answers: list[Answer]) -> list[Answer]:
    """Answers that are neither a 200 with one result nor an Elasticsearch-shaped error."""
    return [
        a for a in answers
        if not (a.ok and len(a.body.get("inference_results", [])) == 1) and not es_shaped(a.status, a.body)
    ]  # fmt: skip


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Poll ``predicate`` until it is true; returns the seconds it took."""
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(interval_s)
    return time.monotonic() - began


def serving_nodes(client: redis.Redis, deployment_id: str) -> set[str]:
    """Nodes alive, routed 'started' with allocations, and targeted by the planner."""
    raw_doc = client.get(keys.deployment(deployment_id))
    if raw_doc is None:
        return set()
    targets = json.loads(raw_doc).get("targets", {})
    routes = {k.decode(): json.loads(v) for k, v in client.hgetall(keys.routes(deployment_id)).items()}
    return {
        node for node, route in routes.items()
        if route["routing_state"] == "started" and route["current_allocations"] > 0 and targets.get(node, 0) > 0
        and client.exists(keys.node_heartbeat(node))
    }  # fmt: skip


def leaked_keys(client: redis.Redis, live_nodes: set[str]) -> list[str]:
    """What a healed cluster should not hold: in-flight lists or queued requests nobody serves,
    routes or registrations of nodes that are gone (test code: SCAN is fine here)."""
    leaks: list[str] = []
    for key in client.scan_iter(match=f"{keys.PREFIX}:dn:*"):
        name = key.decode()
        if ":processing:" in name and client.llen(name):
            leaks.append(name)
        if name.endswith(":queue") and client.llen(name):
            leaks.append(name)
    for key in client.scan_iter(match=keys.routes("*")):
        leaks += [f"{key.decode()}#{n.decode()}" for n in client.hkeys(key) if n.decode() not in live_nodes]
    leaks += [f"{keys.NODES}#{n.decode()}" for n in client.smembers(keys.NODES) if n.decode() not in live_nodes]
    return leaks
