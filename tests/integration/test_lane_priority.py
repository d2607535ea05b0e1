"""The search lane inside a running allocation (a real allocation thread against a real Redis,
with a model stub that records where each document ran): bulk forward passes run on a bulk thread
at ``INFERQ_BULK_NICE`` more niceness, search passes on the allocation's own thread; the only
allocation of a node serves bulk in its bulk lane (a processing list of its own, ``a0b``), so bulk
runs while a search pass does, and what the bulk lane holds is recovered like any allocation's;
and bulk work still progresses while the interactive lane never runs dry."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from shared import keys, queue
from shared.redis_budget import CacheLimits
from shared.wire import InferRequest
from workers.allocation import BULK_EVERY, Allocation, AllocationContext, BatchLimits
from workers.tasks import Prepared

DEP, NODE = "lane-priority", "n1"


@dataclass(frozen=True)
class Served:
    text: str
    thread: str
    niceness: int


@dataclass
class RecordingTask:
    """The model seam: every document is one 3-token row; ``run`` records the thread it ran on."""

    served: list[Served] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)  # documents per forward pass
    tokenizer: None = None

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared:
        return Prepared(text, config, SimpleNamespace(windows=[[1, 2, 3]]))  # type: ignore[arg-type]

    def run(self, module: Any, batch: Sequence[Prepared]) -> list[dict[str, Any]]:
        niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.served += [Served(doc.text, threading.current_thread().name, niceness) for doc in batch]
        self.passes.append(len(batch))
        return [{"predicted_value": [0.0]} for _ in batch]


def push(client: redis.Redis, queue_key: str, texts: Sequence[str]) -> None:
    now = int(time.time() * 1000)
    for text in texts:  # TAKE serves the oldest first: the right end of the list
        request = InferRequest(text, f"reply:{text}", DEP, text, {}, now + 600_000, now)
        client.lpush(queue_key, request.pack())


def start_allocation(redis_url: str, limits: BatchLimits, task: RecordingTask, peers: int = 1, first: int = 0) -> Allocation:
    """Allocation 0 of ``peers`` on the node, the reserve when ``first`` is 0 and peers 2+."""
    context = AllocationContext(
        DEP, NODE, 1, lambda: CacheLimits(0), "lfu", 0, limits, peers=lambda: peers, first_allocation=lambda: first
    )
    model = SimpleNamespace(task=task, module=None)
    allocation = Allocation(0, context, model, lambda: redis.Redis.from_url(redis_url), lambda _: None)  # type: ignore[arg-type]
    allocation.start()
    return allocation


def serve_until_drained(
    redis_url: str, limits: BatchLimits, peers: int = 1, first: int = 0, task: RecordingTask | None = None
) -> RecordingTask:
    task = task or RecordingTask()
    allocation = start_allocation(redis_url, limits, task, peers, first)
    allocation.drain_requested.set()  # exit once both lanes are empty
    allocation.join(timeout=60)
    assert not allocation.is_alive()
    return task


@pytest.mark.parametrize(("bulk_nice", "peers"), [(5, 2), (0, 2), (5, 1), (0, 1)])
def test_bulk_passes_run_on_a_nicer_thread(redis_client: redis.Redis, redis_url: str, bulk_nice: int, peers: int) -> None:
    """With 2+ allocations of the deployment on the node, on the allocation's bulk thread; the
    only one serves bulk in its bulk lane, whose passes run on the bulk lane's bulk thread."""
    push(redis_client, keys.queue(DEP, NODE), ["search-1", "search-2"])
    push(redis_client, keys.bulk_queue(DEP, NODE), ["bulk-1", "bulk-2"])
    task = serve_until_drained(redis_url, BatchLimits(bulk_nice=bulk_nice), peers, first=1)  # not the reserve
    by_text = {s.text: s for s in task.served}
    assert sorted(by_text) == ["bulk-1", "bulk-2", "search-1", "search-2"]
    search, bulk = by_text["search-1"], by_text["bulk-1"]
    assert search.thread == "alloc-lane-priority-0"  # search passes: the allocation's own thread
    if bulk_nice:
        assert bulk.thread.startswith("alloc-lane-priority-0-bulk" if peers > 1 else "alloc-lane-priority-0b-bulk")
        assert bulk.niceness == min(19, search.niceness + bulk_nice)
    else:
        assert (bulk.thread, bulk.niceness) == (search.thread, search.niceness)
    assert redis_client.llen("reply:bulk-2") == 1  # answered


@pytest.mark.parametrize(("bulk_nice", "peers"), [(0, 1), (9, 2)])
def test_bulk_progresses_while_the_interactive_lane_never_runs_dry(
    redis_client: redis.Redis, redis_url: str, bulk_nice: int, peers: int
) -> None:
    """An allocation that takes bulk itself (2+ on the node, or no bulk lane: ``INFERQ_BULK_NICE``
    0) takes it in its bounded share; not the reserve."""
    searches = [f"search-{i}" for i in range(6 * (BULK_EVERY + 1))]
    push(redis_client, keys.queue(DEP, NODE), searches)
    push(redis_client, keys.bulk_queue(DEP, NODE), [f"bulk-{i}" for i in range(4)])
    limits = BatchLimits(max_batch_size=1, bulk_take=1, bulk_nice=bulk_nice)  # one document per take
    task = serve_until_drained(redis_url, limits, peers, first=1)
    order = [s.text for s in task.served]
    assert sorted(order) == sorted(searches + [f"bulk-{i}" for i in range(4)])
    for k in range(4):  # the k-th bulk document runs after at most BULK_EVERY more searches
        assert order.index(f"bulk-{k}") <= (k + 1) * (BULK_EVERY + 1) - 1, order
    assert order.index("bulk-3") < order.index(searches[-1])  # searches were still queued then


@pytest.mark.parametrize("peers", [1, 2])
def test_the_reserved_allocation_takes_bulk_in_small_takes(redis_client: redis.Redis, redis_url: str, peers: int) -> None:
    """With no search about, an allocation takes bulk in full takes, but the first of 2+ (the
    reserve) takes ``bulk_take`` documents at a time, so a search arriving then waits for one
    bulk pass at most."""
    push(redis_client, keys.bulk_queue(DEP, NODE), [f"bulk-{i}" for i in range(8)])
    task = serve_until_drained(redis_url, BatchLimits(bulk_take=1), peers)
    assert len(task.served) == 8
    if peers == 1:
        assert task.passes == [8]
    else:  # its 1/peers share, one document at a time
        assert set(task.passes) == {1}


@dataclass
class GatedTask(RecordingTask):
    """A search pass that waits (up to 30 s) until ``bulk`` bulk documents have been served, and
    records its documents when it ends; ``hold``: a bulk document whose pass waits for ``release``."""

    bulk: int = 0
    hold: str = ""
    bulk_done: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    waited: list[bool] = field(default_factory=list)

    def run(self, module: Any, batch: Sequence[Prepared]) -> list[dict[str, Any]]:
        if any(doc.text.startswith("search") for doc in batch):
            self.waited.append(self.bulk_done.wait(30))
            return super().run(module, batch)
        if any(doc.text == self.hold for doc in batch):
            self.holding.set()
            self.release.wait(30)
        results = super().run(module, batch)
        if sum(s.text.startswith("bulk") for s in self.served) >= self.bulk:
            self.bulk_done.set()
        return results


def test_the_only_allocation_serves_bulk_in_its_bulk_lane_while_a_search_pass_runs(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The search pass does not end before every bulk document is served: with no bulk lane the
    allocation would take bulk only after it, and the pass would wait the whole 30 s in vain."""
    bulk = [f"bulk-{i}" for i in range(4)]
    push(redis_client, keys.queue(DEP, NODE), ["search-1"])
    push(redis_client, keys.bulk_queue(DEP, NODE), bulk)
    task = serve_until_drained(redis_url, BatchLimits(max_batch_size=1, bulk_nice=5), task=GatedTask(bulk=len(bulk)))
    assert task.waited == [True]  # type: ignore[attr-defined]
    assert [s.text for s in task.served] == [*bulk, "search-1"]
    assert {s.thread for s in task.served if s.text in bulk} == {"alloc-lane-priority-0b-bulk_0"}
    assert queue.run(redis_client, queue.allocations(DEP, NODE)) == ["a0", "a0b"]  # both lists indexed
    assert not redis_client.llen(keys.processing(DEP, NODE, "a0b"))  # acknowledged
    assert all(redis_client.llen(f"reply:{text}") == 1 for text in [*bulk, "search-1"])


def test_what_the_bulk_lane_holds_when_its_node_dies_is_recovered(redis_client: redis.Redis, redis_url: str) -> None:
    """The bulk lane's processing list is indexed like an allocation's, so the recovery of a dead
    node's lists (``shared.queue.recover``: the control plane's and a restarted node's) puts its
    items back on the node's queue, one delivery more, with no code of its own."""
    push(redis_client, keys.bulk_queue(DEP, NODE), ["bulk-held"])
    task = GatedTask(hold="bulk-held")
    allocation = start_allocation(redis_url, BatchLimits(bulk_nice=5), task)
    try:
        assert task.holding.wait(30), "the bulk lane did not take the bulk document"
        (held,) = redis_client.lrange(keys.processing(DEP, NODE, "a0b"), 0, -1)
        assert InferRequest.unpack(held).text == "bulk-held"
        assert "a0b" in queue.run(redis_client, queue.allocations(DEP, NODE))
        allocation.stop_requested.set()  # the allocation takes nothing more (it would take the requeued item)
        lane = allocation._bulk_lane
        assert lane is not None
        assert lane.stop_requested.wait(30)  # set once the allocation's loop has ended
        assert queue.run(redis_client, queue.recover(DEP, NODE)) == 1  # as if the node had died now
        (requeued,) = redis_client.lrange(keys.queue(DEP, NODE), 0, -1)
        request = InferRequest.unpack(requeued)
        assert (request.text, request.deliveries) == ("bulk-held", 1)
    finally:
        allocation.stop_requested.set()
        task.release.set()
        allocation.join(timeout=30)
    assert not allocation.is_alive()
