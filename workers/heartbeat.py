"""The node's liveness, reported by a small child process that inference cannot block.

A tokenizer call or a forward pass can hold the parent's GIL for seconds, so no thread of the
node process keeps its alive key. The node starts ``python -m workers.heartbeat`` with a pipe on
its stdin and writes a line to it every ``PROGRESS_INTERVAL_S`` from a thread (that write needs
the GIL: it is the node's proof of progress); the line says for how many milliseconds every
allocation of one of its deployments has been busy on one batch (its queue is not draining).
The child, which shares no GIL with the node:

- writes the alive key every third of the TTL, with how long the node has been stalled: no
  line for that long, or the busy time it last reported (the gateways stop routing to a
  stalled node and the planner hands its queue over, ``shared.node_registry.suspect``);
- registers the node again whenever its alive key, its hash or its ``inferq:nodes`` entry is
  gone (reaped after a lapse, a Redis restarted without persistence or failed over);
- stops beating while the node has been stalled for ``hung_after_s`` (a truly hung node is
  then declared dead when the key expires; it registers again if it ever moves on);
- when the node dies (end of file on the pipe, whatever killed it), deletes the alive key and
  the node's routes at once and publishes the change, so gateways stop routing to it and the
  planner hands its queued and in-flight requests over in its next pass, not a TTL later.

Keys: ``inferq:node:<id>:alive``, ``inferq:node:<id>``, ``inferq:nodes`` (``shared.node_registry``),
``inferq:routes:<dep>`` of every deployment (this node's field, when the node dies).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from shared import node_registry
from shared.deployment_store import SyncDeploymentStore
from shared.redis_conn import sync_client

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # the node writes a byte this often while its interpreter runs


@dataclass(frozen=True)
class HeartbeatConfig:
    redis_url: str
    node_id: str
    processors: int
    memory_bytes: int
    ttl_s: float
    hung_after_s: float
    node_pid: int

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "workers.heartbeat", "--redis-url", self.redis_url, "--node-id", self.node_id,
            "--processors", str(self.processors), "--memory-bytes", str(self.memory_bytes),
            "--ttl-s", str(self.ttl_s), "--hung-after-s", str(self.hung_after_s), "--node-pid", str(self.node_pid),
        ]  # fmt: skip


class Heartbeat:
    """The node's side: starts the child, feeds it progress, starts it again if it dies."""

    def __init__(self, config: HeartbeatConfig, busy_s: Callable[[], float] = lambda: 0.0) -> None:
        self.config = config
        self.busy_s = busy_s
        self.child: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="heartbeat-progress", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.child = subprocess.Popen(self.config.argv(), stdin=subprocess.PIPE, close_fds=True)

    def _feed(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            child = self.child
            try:
                assert child is not None and child.stdin is not None
                if child.poll() is not None:
                    raise BrokenPipeError(f"heartbeat process exited with {child.returncode}")
                child.stdin.write(b"%d\n" % int(self.busy_s() * 1000))
                child.stdin.flush()
            except (OSError, ValueError, AssertionError) as exc:  # ValueError: the pipe closed by stop()
                if self._stop.is_set():
                    return
                log.warning("heartbeat process lost (%s): starting it again", exc)
                self._spawn()

    def stop(self) -> None:
        """Close the pipe: the child marks the node down and exits."""
        self._stop.set()
        child = self.child
        if child is not None and child.stdin is not None:
            try:
                child.stdin.close()
                child.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()


def watch(config: HeartbeatConfig, progress_fd: int) -> None:
    """The child's loop (see the module docstring). Returns when the node is gone."""
    client = sync_client(config.redis_url)
    interval_s = config.ttl_s / 3
    last_progress = time.monotonic()
    busy_ms = 0
    pending = b""
    next_beat = 0.0
    while True:
        now = time.monotonic()
        stalled_s = max(0.0, now - last_progress - PROGRESS_INTERVAL_S)
        if now >= next_beat:
            next_beat = now + interval_s
            if stalled_s < config.hung_after_s:
                _beat(client, config, max(int(stalled_s * 1000), busy_ms))
            else:
                log.warning("node %s made no progress for %.0f s: not beating", config.node_id, stalled_s)
        readable, _, _ = select.select([progress_fd], [], [], max(0.0, min(next_beat - now, PROGRESS_INTERVAL_S)))
        if readable:
            chunk = os.read(progress_fd, 4096)
            if not chunk:
                break  # the node's end of the pipe closed: it exited or was killed
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines:
                was_busy_ms, busy_ms = busy_ms, int(lines[-1] or 0)
                last_progress = time.monotonic()
                if stalled_s >= 1.0 or (was_busy_ms >= 1000) != (busy_ms >= 1000):
                    next_beat = 0.0  # a stall began or ended: say so at once
        if os.getppid() != config.node_pid:
            break  # re-parented: the node is gone even if something else holds the pipe
    mark_down(client, config.node_id)


def _beat(client: redis.Redis, config: HeartbeatConfig, stalled_ms: int) -> None:
    try:
        if not node_registry.heartbeat(client, config.node_id, config.ttl_s, stalled_ms):
            node_registry.register(
                client, config.node_id, config.processors, config.memory_bytes, config.ttl_s, config.node_pid
            )
            log.info("node %s registered again", config.node_id)
    except redis.RedisError as exc:
        log.warning("heartbeat failed: %s", exc)


def mark_down(client: redis.Redis, node_id: str) -> None:
    """The node is gone: no alive key, no routes; everyone is told at once."""
    for attempt in range(20):
        try:
            store = SyncDeploymentStore(client)
            for deployment_id in store.ids():
                store.drop_route(deployment_id, node_id)
            node_registry.deregister(client, node_id)
            return
        except redis.RedisError as exc:
            log.warning("marking node %s down failed (%s), attempt %d", node_id, exc, attempt + 1)
            time.sleep(0.25)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.heartbeat")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--processors", type=int, required=True)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--ttl-s", type=float, required=True)
    parser.add_argument("--hung-after-s", type=float, required=True)
    parser.add_argument("--node-pid", type=int, required=True)
    args = parser.parse_args(argv)
    config = HeartbeatConfig(
        args.redis_url, args.node_id, args.processors, args.memory_bytes, args.ttl_s, args.hung_after_s, args.node_pid
    )
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {config.node_id} heartbeat %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the node decides when to go
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch(config, sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
