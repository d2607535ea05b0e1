"""One allocation: a thread that serves one batch at a time with its own torch threads.

Loop: ``BLMOVE`` the oldest request into this allocation's processing list and ``TAKE`` up to
``max_take - 1`` more (dynamic batching: whatever queued up while the previous batch ran, at
most this allocation's share of the queue, so a burst spreads over the node's allocations;
without a batch wait both go in one pipelined round trip). Requests whose deadline has passed
are skipped; the rest are sorted by length and run in forward passes of similar lengths
(``workers.batch_plan``: on a CPU a padded token costs as much as a real one). Each pass's
replies go out as soon as it ends; the last pass's go in one pipelined round trip with
``COMPLETE`` (cache the results, record stats, drop the processing list). A crash between the
pop and ``COMPLETE`` leaves the items in the processing list, from where they are requeued
(at-least-once; producers ignore duplicate replies) with their delivery count raised; a request
redelivered more than ``max_redeliveries`` times is answered with an error instead of being run
again (a request that kills its worker cannot knock over node after node).

Knobs (``WorkerSettings``, docs/benchmarks.md): ``INFERQ_MAX_BATCH_SIZE`` (documents per
forward pass; 1 turns batching off), ``INFERQ_MAX_TAKE`` (documents taken off the queue at
once, at most), ``INFERQ_MAX_TAKE_TOKENS`` (padded-token budget of one take: ``TAKE`` stops
when documents × the longest estimated row would pass it, so short queries are taken by the
hundred and long texts a few at a time; 0: count only), ``INFERQ_MAX_BATCH_TOKENS`` (padded
tokens per forward pass), ``INFERQ_MAX_PADDING``
(share of a pass's tokens that may be padding), ``INFERQ_BATCH_WAIT_MS`` (sleep after the
first pop so more requests can join; 0 by default: under load the queue fills while the
previous batch runs, and when idle a wait is pure latency).

The search lane (``_take``): interactive work first, bulk in small takes while interactive
requests are about, a bulk take after ``BULK_EVERY`` interactive ones that left bulk waiting
(bulk is never starved). A forward pass cannot be stopped halfway, so bulk forward passes run
on a thread of their own whose niceness is ``INFERQ_BULK_NICE`` higher than the allocation's:
while a bulk pass runs, a search pass on the same machine gets the cores first (the kernel's
scheduler preempts the bulk thread), and bulk still gets every cycle nobody else wants. Where a
deployment has 2+ allocations on a node, each runs its own bulk passes there (waiting for them;
the reserve keeps one free for searches). The only allocation of a node has a bulk lane instead
(``_start_bulk_lane``): a second ``Allocation`` thread, ``a<index>b``, with a processing list of
its own, indexed in ``dn_allocations`` like any allocation's (so the requeue after a Redis error,
a dead node's recovery and the in-flight counts cover it), that takes bulk work only and
acknowledges its own list, while the allocation takes and serves searches during its bulk pass.
The bulk lane is never starved: it waits for no search, and niceness only orders the cores.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
import torch

from shared import histograms, queue
from shared.errors import InferenceFailed, InferqError
from shared.queue import Completion, TakeArgs, Taken
from shared.redis_budget import CacheLimits
from shared.settings import WorkerSettings
from shared.wire import InferReply, InferRequest, WireError
from workers.batch_plan import ChunkLimits, Shape, TokenEstimate, plan_chunks, take_count
from workers.runtime import LoadedModel
from workers.tasks import Prepared

log = logging.getLogger(__name__)

POP_TIMEOUT_S = 0.5  # how long a pop blocks before the loop looks at stop/drain again (redis-py types it int)
BULK_POLL_S = 0.01  # the wait while the bulk lane had work lately (its pushes wake no one)
BULK_RECENT_S = 2.0  # how long after a bulk item the short wait lasts
INTERACTIVE_RECENT_S = 1.0  # how long after an interactive item bulk takes stay small
BULK_EVERY = 4  # bulk's bounded share: a bulk take after this many interactive ones that left bulk waiting


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 2048
    batch_wait_ms: float = 0.0
    max_take: int = 256
    max_padding: float = 0.25
    bulk_take: int = 1  # bulk documents per take while interactive requests are about
    max_take_tokens: int = 4096  # padded-token budget of one take (0: count only)
    interactive_reserve: bool = True  # the first of 2+ allocations takes no bulk while interactive requests are about
    bulk_nice: int = 9  # bulk forward passes run on their own thread this much nicer; the only allocation of a node gets a bulk lane (0: off)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> BatchLimits:
        return cls(settings.max_batch_size, settings.max_batch_tokens, settings.batch_wait_ms,
                   settings.max_take, settings.max_padding, settings.bulk_take, settings.max_take_tokens,
                   settings.interactive_reserve, settings.bulk_nice)  # fmt: skip

    @property
    def take(self) -> int:
        return take_count(self.max_take, self.max_batch_size)

    @property
    def chunks(self) -> ChunkLimits:
        return ChunkLimits(self.max_batch_size, self.max_batch_tokens, self.max_padding)


@dataclass(frozen=True)
class AllocationContext:
    deployment_id: str
    node_id: str
    threads: int
    cache_limits: Callable[[], CacheLimits]  # the budget and Redis's ceiling now (the planner may move them)
    cache_policy: str
    start_ms: int
    limits: BatchLimits
    peers: Callable[[], int] = lambda: 1  # allocations serving this queue now (this one included)
    first_allocation: Callable[[], int] = lambda: -1  # index of the first running allocation of the deployment
    max_redeliveries: int = 1  # runs of a request after the first, when its worker died holding it


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _LaneState:
    """What an allocation remembers between takes for the search lane."""

    more: bool = False  # the last take left work queued: take again without waiting
    streak: int = 0  # interactive takes in a row that left bulk work waiting
    interactive_until: float = 0.0  # monotonic: interactive requests were about until then
    bulk_until: float = 0.0  # monotonic: the bulk lane had work until then

    def observe(self, interactive: int, bulk: int, interactive_left: int, bulk_left: int, now: float) -> None:
        self.more = interactive_left > 0 or bulk_left > 0
        if interactive or interactive_left:
            self.interactive_until = now + INTERACTIVE_RECENT_S
        if bulk or bulk_left:
            self.bulk_until = now + BULK_RECENT_S
        if bulk:
            self.streak = 0
        elif interactive and bulk_left > 0:
            self.streak += 1


class Allocation(threading.Thread):
    def __init__(
        self,
        index: int,
        context: AllocationContext,
        model: LoadedModel,
        connect: Callable[[], redis.Redis],
        on_exit: Callable[[Allocation], None],
        bulk_lane: bool = False,
    ) -> None:
        suffix = "b" if bulk_lane else ""
        super().__init__(name=f"alloc-{context.deployment_id}-{index}{suffix}", daemon=True)
        self.index = index
        self.bulk_lane = bulk_lane  # the bulk lane of allocation ``index``: takes bulk work only (_take_bulk)
        self.context = context
        self.model = model
        self.connect = connect
        self.on_exit = on_exit
        self.stop_requested = threading.Event()  # finish the current batch, then exit
        self.busy_since_s: float | None = None  # time.monotonic() when the batch being served was taken
        self.drain_requested = threading.Event()  # exit once the queue is empty
        # names its processing list (shared.keys.processing); the bulk lane's, "a<index>b", is
        # indexed like any allocation's, so every requeue and recovery path covers it
        self.allocation = f"a{index}{suffix}"
        tokenizer = getattr(model.task, "tokenizer", None)
        max_row = int(tokenizer.settings.max_sequence_length) if tokenizer is not None else 512
        self.estimate = TokenEstimate(max_row_tokens=max_row)  # refined from every batch served
        self._bulk_thread: ThreadPoolExecutor | None = None  # started with the first bulk pass it runs (_forward)
        self._bulk_lane: Allocation | None = None  # the only allocation of its node: its bulk lane (_start_bulk_lane)

    def take_args(self, n: int, peers: int, bulk_n: int, bulk_first: bool) -> TakeArgs:
        """``TAKE``'s arguments, with the token budget when it is on."""
        budget = self.context.limits.max_take_tokens
        if budget <= 0:
            return TakeArgs(n, peers, bulk_n, bulk_first)
        estimate = self.estimate
        return TakeArgs(n, peers, bulk_n, bulk_first, budget, estimate.overhead_bytes, estimate.bytes_per_token,
                        estimate.max_row_tokens)  # fmt: skip

    def run(self) -> None:
        torch.set_num_threads(self.context.threads)
        client = self.connect()
        deployment_id, node_id = self.context.deployment_id, self.context.node_id
        if not queue.is_cluster(client):  # loaded now, so the first batch needs no NOSCRIPT retry
            for script in (queue.TAKE, queue.COMPLETE):
                try:
                    client.script_load(script.source)
                except redis.RedisError as exc:
                    log.warning("allocation %s: could not load a script: %s", self.name, exc)
        lanes = _LaneState()
        recovering = True  # first pass: put back whatever a previous failure left in our list
        try:
            while not self.stop_requested.is_set():
                try:
                    if recovering:
                        queue.run(client, queue.index_allocation(deployment_id, node_id, self.allocation))
                        queue.run(client, queue.requeue(deployment_id, node_id, self.allocation))
                        recovering = False
                    taken = self._take_bulk(client, lanes) if self.bulk_lane else self._take(client, lanes)
                    if not taken.items:
                        if self.drain_requested.is_set():
                            break
                        continue
                    self.busy_since_s = time.monotonic()
                    try:
                        self.serve(client, taken.items, bulk=bool(taken.bulk))
                    finally:
                        self.busy_since_s = None
                except redis.RedisError as exc:
                    # Redis is away: what we took stays in our processing list and is
                    # requeued on restart; keep the allocation alive and retry.
                    log.warning("allocation %s: redis error: %s", self.name, exc)
                    recovering = True
                    self.stop_requested.wait(0.5)
        except Exception:
            log.exception("allocation %s stopped on an error", self.name)
        finally:
            if self._bulk_lane is not None:  # it drains or stops as we do, and finishes its batch
                if self.stop_requested.is_set() or not self.drain_requested.is_set():
                    self._bulk_lane.stop_requested.set()
                self._bulk_lane.drain_requested.set()
                self._bulk_lane.join()
            if self._bulk_thread is not None:
                self._bulk_thread.shutdown(wait=False)
            client.close()
            self.on_exit(self)

    def _start_bulk_lane(self) -> None:
        """The only allocation of a deployment on its node (``INFERQ_BULK_NICE`` > 0) gets a bulk
        lane: a second thread, with a processing list of its own, that takes bulk work only and
        runs its forward passes on its nicer bulk thread. This allocation then takes interactive
        work only, so a search never waits for a bulk pass to end: the two passes run at once and
        the kernel gives the search pass the cores first. With 2+ allocations the bulk lane idles
        and the allocations take bulk themselves (the reserve keeps one free for searches)."""
        if self.bulk_lane or self.context.limits.bulk_nice <= 0 or self.context.peers() > 1:
            return
        self._bulk_lane = Allocation(self.index, self.context, self.model, self.connect, lambda _: None, bulk_lane=True)
        self._bulk_lane.start()

    def _bulk_lane_serves(self) -> bool:
        return self._bulk_lane is not None and self._bulk_lane.is_alive() and self.context.peers() <= 1

    def _forward(self, docs: list[Prepared], bulk: bool) -> list[dict[str, Any]]:
        """One forward pass; a bulk one on the bulk thread (``INFERQ_BULK_NICE``), waited for, in
        a bulk lane or where the deployment has 2+ allocations on the node (the reserve takes the
        searches, so none waits for this pass; an allocation serving both lanes alone would make
        its searches wait for a slower pass). Only the pass goes there: it runs without the GIL,
        so the nicer thread can be preempted at any time without holding up the allocation
        threads' Python code."""
        nice = self.context.limits.bulk_nice
        if not bulk or nice <= 0 or (self.context.peers() <= 1 and not self.bulk_lane):
            return self.model.task.run(self.model.module, docs)
        if self._bulk_thread is None:
            self._bulk_thread = ThreadPoolExecutor(
                1, f"{self.name}-bulk", initializer=start_bulk_thread, initargs=(self.context.threads, nice)
            )
        return self._bulk_thread.submit(self.model.task.run, self.model.module, docs).result()

    def _take(self, client: redis.Redis, lanes: _LaneState) -> Taken:
        """``TAKE`` the next batch: at once when the last take left work queued, else after
        waiting (up to a pop timeout) for a request on the interactive queue (``shared.queue.take``
        watches it in the same round trip). Bulk pushes do not wake that wait, so while the bulk
        lane was busy lately the wait is short (``BULK_POLL_S``)."""
        limits = self.context.limits
        if self._bulk_lane is None:  # the only allocation now (from the start, or once its peers stopped)
            self._start_bulk_lane()
        now = time.monotonic()
        interactive_about = now < lanes.interactive_until
        # INFERQ_INTERACTIVE_RESERVE: the first of 2+ allocations takes no bulk while interactive
        # requests are about, so one of them is free when the next one comes, and small bulk
        # takes otherwise, so the first search after a quiet spell waits for one bulk pass at most
        reserved = limits.interactive_reserve and self.context.peers() > 1 and self.context.first_allocation() == self.index
        bulk_n = min(limits.take, limits.bulk_take) if interactive_about or reserved else limits.take
        if (reserved and interactive_about) or self._bulk_lane_serves():
            bulk_n = 0
        args = self.take_args(limits.take, self.context.peers(), bulk_n, lanes.streak >= BULK_EVERY)
        deployment_id, node_id = self.context.deployment_id, self.context.node_id
        wait_s = 0.0
        if not lanes.more:
            wait_s = BULK_POLL_S if now < lanes.bulk_until else POP_TIMEOUT_S
            if limits.batch_wait_ms > 0:
                if queue.run(client, queue.watch(deployment_id, node_id, wait_s)):
                    time.sleep(limits.batch_wait_ms / 1000)
                wait_s = 0.0
        taken = queue.run(client, queue.take(deployment_id, node_id, self.allocation, args, wait_s=wait_s))
        bulk_left = 0 if bulk_n == 0 else taken.bulk_left
        lanes.observe(len(taken.interactive), len(taken.bulk), taken.interactive_left, bulk_left, time.monotonic())
        return taken

    def _take_bulk(self, client: redis.Redis, lanes: _LaneState) -> Taken:
        """The bulk lane's take: bulk work only (``TAKE`` of no interactive item), a full take,
        after waiting (up to a pop timeout) for an item on the bulk queue. Idle while the
        deployment has 2+ allocations on the node (they take bulk themselves) unless draining."""
        if self.context.peers() > 1 and not self.drain_requested.is_set():
            self.stop_requested.wait(POP_TIMEOUT_S)
            return Taken([], [], 0, 0)
        limits = self.context.limits
        args = self.take_args(0, 1, limits.take, True)
        wait_s = 0.0 if lanes.more else POP_TIMEOUT_S
        deployment_id, node_id = self.context.deployment_id, self.context.node_id
        taken = queue.run(client, queue.take(deployment_id, node_id, self.allocation, args, wait_s=wait_s, wait_lane=queue.BULK))
        lanes.more = taken.bulk_left > 0
        return taken

    def serve(self, client: redis.Redis, items: Sequence[bytes], bulk: bool = False) -> None:
        now = now_ms()
        requests: list[InferRequest] = []
        sizes: dict[str, int] = {}
        for raw in items:
            try:
                request = InferRequest.unpack(raw)
            except WireError as exc:
                log.warning("dropping malformed request: %s", exc)
                continue
            requests.append(request)
            sizes[request.id] = len(raw)
        live = [r for r in requests if r.deadline_ms > now]  # nobody waits for the others any more
        reply_to = {r.id: r.reply_to for r in live}
        outcome = _BatchOutcome()
        poisoned = [r for r in live if r.deliveries > self.context.max_redeliveries]
        if poisoned:
            live = [r for r in live if r.deliveries <= self.context.max_redeliveries]
            for request in poisoned:
                log.warning("request %s: its worker died %d times holding it; not run again", request.id, request.deliveries)
                outcome.fail([request], self.context.node_id, redelivery_exhausted(request.deliveries, self.context.max_redeliveries))
        task = self.model.task
        prepared: list[tuple[InferRequest, Prepared]] = []
        shapes: list[Shape] = []
        for request in live:
            try:
                doc = task.prepare(request.text, request.config)
            except InferqError as error:
                outcome.fail([request], self.context.node_id, error)
                continue
            prepared.append((request, doc))
            shapes.append(Shape.of([len(row) for row in doc.rows]))
        self.estimate = self.estimate.observe(
            [(sizes[r.id], len(r.text.encode()), s.tokens) for (r, _), s in zip(prepared, shapes, strict=True) if s.rows == 1]
        )
        chunks = plan_chunks(shapes, self.context.limits.chunks)
        for n, chunk in enumerate(chunks):
            chunk_ms = now_ms()  # a later pass skips whoever stopped waiting while earlier ones ran
            batch = [prepared[i] for i in chunk if prepared[i][0].deadline_ms > chunk_ms]
            if batch:
                self._run_chunk(batch, now, outcome, bulk)
            if n < len(chunks) - 1 and outcome.replies:
                # answer this pass now; the processing list stays until COMPLETE
                for failed in queue.run(client, queue.reply(_addressed(outcome.take_replies(), reply_to))):
                    log.warning("replying to a forward pass: %s", failed)
        self._complete(client, outcome, reply_to)

    def _run_chunk(
        self, batch: Sequence[tuple[InferRequest, Prepared]], taken_ms: int, outcome: _BatchOutcome, bulk: bool
    ) -> None:
        node_id = self.context.node_id
        requests = [request for request, _ in batch]
        started = time.perf_counter()
        try:
            results = self._forward([doc for _, doc in batch], bulk)
        except InferqError as error:
            outcome.fail(requests, node_id, error)
            return
        except Exception as exc:  # the model failed: a 500 for these requests, the node goes on
            log.exception("inference failed")
            outcome.fail(requests, node_id, InferenceFailed(f"Error in inference process: [{exc}]"))
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        outcome.observe_pass(len(batch), elapsed_ms / 1000)
        timings_base = {"batch_size": float(len(batch))}
        for request, result in zip(requests, results, strict=True):
            body = json.dumps(result, separators=(",", ":")).encode()
            timings = {"queue_ms": float(taken_ms - request.enqueued_ms), **timings_base}
            outcome.replies.append(InferReply(request.id, node_id, result_json=body, time_ms=elapsed_ms, timings=timings))
            if request.digest:
                outcome.cache_pairs += [request.digest, body]
            outcome.time_sum_ms += elapsed_ms
            outcome.ok += 1

    def _complete(self, client: redis.Redis, outcome: _BatchOutcome, reply_to: dict[str, str]) -> None:
        """The last replies, then ``COMPLETE`` (``shared.queue.finish``: replies first)."""
        cache = self.context.cache_limits()
        completion = Completion(
            budget_bytes=cache.budget_bytes,
            policy=self.context.cache_policy,
            now_ms=now_ms(),
            start_ms=self.context.start_ms,
            results=outcome.ok,
            time_ms_sum=outcome.time_sum_ms,
            errors=outcome.errors,
            memory_ceiling_bytes=cache.memory_ceiling_bytes,
            stats=outcome.observations,
            cache_pairs=outcome.cache_pairs,
        )
        replies = _addressed(outcome.take_replies(), reply_to)
        errors = queue.run(client, queue.finish(self.context.deployment_id, self.context.node_id, self.allocation, replies, completion))
        for error in errors:  # a failing cache write or stats update must not fail the requests
            log.warning("completing a batch: %s", error)


def start_bulk_thread(threads: int, nice: int) -> None:
    """The bulk thread's start: its own torch threads, and ``nice`` added to its niceness (on
    Linux niceness is per thread, and torch's worker threads inherit it from the thread that
    starts them; raising it needs no privilege, lowering it back would, hence a thread of its own)."""
    torch.set_num_threads(threads)
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("could not lower the bulk thread's priority: %s", exc)


def _addressed(replies: Sequence[InferReply], reply_to: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(reply_to[r.id], r.pack()) for r in replies]


def redelivery_exhausted(deliveries: int, max_redeliveries: int) -> InferenceFailed:
    return InferenceFailed(
        f"inference request abandoned: the worker node running it died [{deliveries}] times while "
        f"inferring it and it may be what crashes the inference process; it is not retried more than "
        f"[{max_redeliveries}] times (INFERQ_MAX_REDELIVERIES)"
    )


@dataclass
class _BatchOutcome:
    """What a batch has produced so far: replies not yet sent, results to cache, counters,
    and the stats histogram increments of its forward passes (``shared.histograms``)."""

    replies: list[InferReply] = field(default_factory=list)
    cache_pairs: list[bytes | str] = field(default_factory=list)
    time_sum_ms: float = 0.0
    ok: int = 0
    errors: int = 0
    observations: dict[str, float] = field(default_factory=dict)

    def observe_pass(self, documents: int, seconds: float) -> None:
        histograms.BATCH_SIZE.observe(self.observations, documents)
        histograms.FORWARD_SECONDS.observe(self.observations, seconds)

    def fail(self, requests: Sequence[InferRequest], node_id: str, error: InferqError) -> None:
        wire = error.to_wire()
        self.replies += [InferReply(r.id, node_id, error=wire) for r in requests]
        self.errors += len(requests)

    def take_replies(self) -> list[InferReply]:
        replies, self.replies = self.replies, []
        return replies
