"""The worker node process: register, heartbeat, reconcile to the plan, serve, drain.

One process per node. It declares its processors and memory, has its liveness kept by a
heartbeat child process (``workers.heartbeat``: inference holding the GIL cannot starve it,
and it registers the node again whenever Redis forgot it), and every ``reconcile_interval_s`` (or at once on an ``inferq:events``
message) makes its deployments match the documents the planner wrote: load a model once,
run ``targets[node]`` allocations on it, report the route, and drain or stop what is no
longer assigned. SIGTERM stops taking work, finishes in-flight batches, then exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import redis

from shared import keys, node_registry, queue
from shared.deployment_store import RouteStatus, SyncDeploymentStore
from shared.pubsub import SyncSubscription
from shared.redis_budget import CacheLimits
from shared.redis_config import warn_redis_config
from shared.redis_conn import sync_client, text
from shared.settings import WorkerSettings
from workers.allocation import Allocation, AllocationContext, BatchLimits
from workers.confinement import confine_writes
from workers.heartbeat import Heartbeat, HeartbeatConfig
from workers.runtime import LoadedModel, load_model

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0  # SIGTERM: how long in-flight batches get to finish


def now_ms() -> int:
    return int(time.time() * 1000)


class DeploymentRunner:
    """One deployment on this node: its loaded model and its allocation threads."""

    def __init__(self, node: Node, doc: dict[str, Any]) -> None:
        self.node = node
        self.doc = doc
        self.deployment_id = str(doc["deployment_id"])
        self.uid = str(doc["uid"])
        self.threads = int(doc["task_parameters"]["threads_per_allocation"])
        self.cache_limits = CacheLimits.of_doc(doc)  # replaced when the planner moves the budget
        self.model: LoadedModel | None = None
        self.allocations: list[Allocation] = []
        self.lock = threading.Lock()
        self.state = "starting"
        self.reason = ""
        self.started_ms = now_ms()
        self.target = 0
        self.reported: RouteStatus | None = None
        self.closing = False  # draining or stopping: no new allocations
        self.next_index = 0
        self.loader = threading.Thread(target=self._load, name=f"load-{self.deployment_id}", daemon=True)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, target: int) -> None:
        self.target = target
        self.report()
        self.loader.start()

    def _load(self) -> None:
        try:
            self.model = load_model(self.node.client, self.doc, self.node.settings.model_dir)
        except Exception as exc:
            log.exception("loading %s failed", self.deployment_id)
            self.state, self.reason = "failed", f"{type(exc).__name__}: {exc}"
            self.report()
            return
        with self.lock:
            if self.closing:
                return
            self.state = "started"
            self._scale_locked()
        self.report()

    def scale(self, target: int) -> None:
        with self.lock:
            self.target = target
            if self.model is not None and not self.closing:
                self._scale_locked()
        self.report()

    def _scale_locked(self) -> None:
        assert self.model is not None
        active = [a for a in self.allocations if not a.stop_requested.is_set()]
        while len(active) < self.target:
            allocation = Allocation(self.next_index, self._context(), self.model, self.node.connect_blocking, self._exited)
            self.next_index += 1
            self.allocations.append(allocation)
            active.append(allocation)
            allocation.start()
        for allocation in active[self.target :]:
            allocation.stop_requested.set()  # finishes its batch; nothing queued is lost

    def _context(self) -> AllocationContext:
        settings = self.node.settings
        return AllocationContext(
            deployment_id=self.deployment_id,
            node_id=self.node.node_id,
            threads=self.threads,
            cache_limits=lambda: self.cache_limits,
            cache_policy=str(self.doc.get("cache_policy", "lfu")),
            start_ms=self.started_ms,
            limits=BatchLimits.from_settings(settings),
            peers=lambda: max(1, self.target),
            max_redeliveries=settings.max_redeliveries,
            first_allocation=self._first_allocation,
        )

    def _first_allocation(self) -> int:
        """The index of this deployment's first running allocation (the search lane's reserve)."""
        return min((a.index for a in self.allocations if not a.stop_requested.is_set()), default=-1)

    def drain(self) -> None:
        """Serve what is queued, then go (the gateway stopped routing here)."""
        with self.lock:
            if self.closing:
                return
            self.closing = True
            self.state = "stopping"
            for allocation in self.allocations:
                allocation.drain_requested.set()
            if self.model is None or not self.allocations:
                # nothing can serve the queue here: drain it with one allocation if we can
                if self.model is not None:
                    self.target = 1
                    self.closing = False
                    self._scale_locked()
                    self.closing = True
                    for allocation in self.allocations:
                        allocation.drain_requested.set()
        self.report()

    def stop(self) -> None:
        """Finish in-flight batches, take nothing more."""
        with self.lock:
            self.closing = True
            self.state = "stopping"
            for allocation in self.allocations:
                allocation.stop_requested.set()
        self.report()

    def _exited(self, allocation: Allocation) -> None:
        with self.lock:
            if allocation in self.allocations:
                self.allocations.remove(allocation)
        self.node.wake()

    @property
    def finished(self) -> bool:
        with self.lock:
            return self.closing and not self.allocations and not self.loader.is_alive()

    def busy_s(self, now_s: float) -> float:
        """How long every allocation has been on its current batch (0 when one is free): a
        queue nobody takes from for seconds is not draining."""
        with self.lock:
            active = [a for a in self.allocations if not a.stop_requested.is_set()]
        since = [a.busy_since_s for a in active]
        if not active or any(s is None for s in since):
            return 0.0
        return now_s - max(s for s in since if s is not None)

    def live_allocations(self) -> int:
        with self.lock:
            return sum(1 for a in self.allocations if not a.stop_requested.is_set() and not a.drain_requested.is_set())

    def report(self) -> None:
        status = RouteStatus(
            routing_state=self.state,
            current_allocations=self.live_allocations() if self.state == "started" else 0,
            reason=self.reason,
            started_ms=self.started_ms,
            threads_per_allocation=self.threads,
        )
        if status == self.reported:
            return  # a report publishes an event that wakes every reconcile loop: only on change
        try:
            self.node.store.set_route(self.deployment_id, self.node.node_id, status)
            self.reported = status
        except redis.RedisError as exc:
            log.warning("could not report route of %s: %s", self.deployment_id, exc)


class Node:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.client = sync_client(settings.redis_url)
        self.store = SyncDeploymentStore(self.client)
        self.runners: dict[str, DeploymentRunner] = {}
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self.heartbeat = Heartbeat(
            HeartbeatConfig(
                settings.redis_url, self.node_id, settings.processors, settings.memory_bytes,
                settings.heartbeat_ttl_s, settings.hung_after_s, os.getpid(),
            ),
            busy_s=self.busy_s,
        )  # fmt: skip

    def connect_blocking(self) -> redis.Redis:
        return sync_client(self.settings.redis_url, blocking=True)

    def wake(self) -> None:
        self._wake.set()

    # ---- main loop ---------------------------------------------------------------------------

    def run(self) -> None:
        node_registry.register(
            self.client, self.node_id, self.settings.processors, self.settings.memory_bytes, self.settings.heartbeat_ttl_s
        )
        warn_redis_config(self.client, f"node {self.node_id}")
        self.requeue_leftovers()
        self.heartbeat.start()
        threading.Thread(target=self._event_loop, name="events", daemon=True).start()
        log.info("node %s up: %d processors", self.node_id, self.settings.processors)
        while not self.stopping.is_set():
            try:
                self.reconcile()
            except redis.RedisError as exc:
                log.warning("reconcile failed: %s", exc)
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()
        self.shutdown()

    def requeue_leftovers(self) -> None:
        """Put back what this node's allocations held when the process last died (each request
        counts one more delivery)."""
        for raw_deployment in self.client.smembers(keys.node_deployments(self.node_id)):
            deployment_id = text(raw_deployment)
            moved = queue.run(self.client, queue.recover(deployment_id, self.node_id))
            if moved:
                log.info("requeued %s items of %s", moved, deployment_id)

    def reconcile(self) -> None:
        docs = {d["deployment_id"]: d for d in self.store.all()}
        self._restore_routes()
        for deployment_id, doc in docs.items():
            runner = self.runners.get(deployment_id)
            if runner is not None and runner.uid != doc["uid"]:
                runner.stop()  # a new deployment under the same id
                runner = None
            target = int(doc.get("targets", {}).get(self.node_id, 0))
            if doc.get("assignment_state") == "stopping":
                if runner is not None:
                    runner.drain() if doc.get("finish_pending_work") else runner.stop()
                continue
            if target > 0:
                if runner is None:
                    runner = DeploymentRunner(self, doc)
                    self.runners[deployment_id] = runner
                    runner.start(target)
                elif not runner.closing:
                    runner.cache_limits = CacheLimits.of_doc(doc)
                    runner.scale(target)
            elif runner is not None:
                runner.drain()
        for deployment_id, runner in list(self.runners.items()):
            if deployment_id not in docs or docs[deployment_id]["uid"] != runner.uid:
                runner.stop()
            if runner.finished:
                del self.runners[deployment_id]
                self.store.drop_route(deployment_id, self.node_id)
                self.hand_over_queue(deployment_id, docs.get(deployment_id))

    def hand_over_queue(self, deployment_id: str, doc: dict[str, Any] | None) -> None:
        """Requests a stale producer pushed after this node drained go to a node that serves them."""
        if doc is None or doc.get("assignment_state") == "stopping":
            return
        heirs = sorted(n for n, a in doc.get("targets", {}).items() if a > 0 and n != self.node_id)
        if not heirs:
            return
        queue.run(self.client, queue.hand_over(deployment_id, self.node_id, heirs[0]))

    def busy_s(self) -> float:
        """The longest a deployment's queue here has gone untaken (every allocation busy)."""
        now_s = time.monotonic()
        return max((runner.busy_s(now_s) for runner in list(self.runners.values())), default=0.0)

    def _restore_routes(self) -> None:
        """Report again a route Redis no longer has (the node was reaped after a lapse, or Redis
        restarted or failed over), so the gateways route here again without a restart."""
        runners = sorted(self.runners)
        if not runners:
            return
        for deployment_id, stored in self.store.own_routes(runners, self.node_id).items():
            runner = self.runners[deployment_id]
            if stored != runner.reported:
                runner.reported = None
                runner.report()

    def _event_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                client = self.connect_blocking()
                try:
                    with SyncSubscription(client, keys.EVENTS) as events:
                        while not self.stopping.is_set():
                            if events.get(timeout_s=1.0) is not None:
                                self._wake.set()
                finally:
                    client.close()
            except redis.RedisError as exc:
                log.warning("event subscription failed: %s", exc)
                self.stopping.wait(0.5)

    def request_stop(self, *_: object) -> None:
        self.stopping.set()
        self._wake.set()

    def shutdown(self) -> None:
        """Two phases: stop taking work and finish in-flight batches (for at most
        ``STOP_GRACE_S``: what is still running then is requeued by the next node that starts
        or takes over), then deregister."""
        for runner in self.runners.values():
            runner.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and not all(r.finished or not r.allocations for r in self.runners.values()):
            time.sleep(0.05)
        for deployment_id in list(self.runners):
            try:
                self.store.drop_route(deployment_id, self.node_id)
            except redis.RedisError:
                pass
        try:
            node_registry.deregister(self.client, self.node_id)
        except redis.RedisError as exc:  # Redis went first: the heartbeat key expires by itself
            log.warning("could not deregister: %s", exc)
        self.heartbeat.stop()
        log.info("node %s stopped", self.node_id)


def confine(settings: WorkerSettings) -> None:
    """Before any thread starts: writes only under the model directory (docs/security.md)."""
    if not settings.confine:
        log.warning("file-system confinement is off (INFERQ_WORKER_CONFINE=off)")
        return
    writable = ["/dev"]
    if settings.model_dir:
        os.makedirs(settings.model_dir, mode=0o700, exist_ok=True)
        writable.append(settings.model_dir)
    result = confine_writes(writable)
    (log.info if result.confined else log.warning)("file-system confinement: %s", result.detail)


def run(settings: WorkerSettings) -> None:
    confine(settings)
    lower_priority(settings.nice)
    node = Node(settings)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    node.run()
    # Everything is handed back; exit without running torch's C++ destructors against
    # daemon threads that may still be inside an op.
    logging.shutdown()
    os._exit(0)


def lower_priority(increment: int) -> None:
    """Run this worker at a lower CPU priority (a higher niceness) than the gateways on the same
    machine, so an HTTP answer that needs no model (a 429, a cache hit) never waits behind a
    forward pass for a core. Inference still gets every core nobody else wants."""
    if increment <= 0:
        return
    try:
        niceness = os.nice(increment)
    except OSError as exc:
        log.warning("could not lower the worker's priority: %s", exc)
        return
    log.info("worker niceness %d", niceness)
