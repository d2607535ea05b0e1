"""The search lane inside a running allocation (a real allocation thread against a real Redis,
with a model stub that records where each document ran): bulk forward passes run on the allocation's
bulk thread at ``INFERQ_BULK_NICE`` more niceness, search passes on the allocation's own thread;
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

from shared import keys
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


def serve_until_drained(redis_url: str, limits: BatchLimits, peers: int = 1, first: int = 0) -> RecordingTask:
    """Allocation 0 of ``peers`` on the node, the reserve when ``first`` is 0 and peers 2+."""
    task = RecordingTask()
    context = AllocationContext(
        DEP, NODE, 1, lambda: CacheLimits(0), "lfu", 0, limits, peers=lambda: peers, first_allocation=lambda: first
    )
    model = SimpleNamespace(task=task, module=None)
    allocation = Allocation(0, context, model, lambda: redis.Redis.from_url(redis_url), lambda _: None)  # type: ignore[arg-type]
    allocation.drain_requested.set()  # exit once both lanes are empty
    allocation.start()
    allocation.join(timeout=60)
    assert not allocation.is_alive()
    return task


@pytest.mark.parametrize(("bulk_nice", "peers"), [(5, 2), (0, 2), (5, 1)])
def test_bulk_passes_run_on_a_nicer_thread(redis_client: redis.Redis, redis_url: str, bulk_nice: int, peers: int) -> None:
    """With 2+ allocations of the deployment on the node; the only one runs its bulk passes itself
    (its searches would wait for them)."""
    push(redis_client, keys.queue(DEP, NODE), ["search-1", "search-2"])
    push(redis_client, keys.bulk_queue(DEP, NODE), ["bulk-1", "bulk-2"])
    task = serve_until_drained(redis_url, BatchLimits(bulk_nice=bulk_nice), peers, first=1)  # not the reserve
    by_text = {s.text: s for s in task.served}
    assert sorted(by_text) == ["bulk-1", "bulk-2", "search-1", "search-2"]
    search, bulk = by_text["search-1"], by_text["bulk-1"]
    assert search.thread == "alloc-lane-priority-0"  # search passes: the allocation's own thread
    if bulk_nice and peers > 1:
        assert bulk.thread.startswith("alloc-lane-priority-0-bulk")
        assert bulk.niceness == min(19, search.niceness + bulk_nice)
    else:
        assert (bulk.thread, bulk.niceness) == (search.thread, search.niceness)
    assert redis_client.llen("reply:bulk-2") == 1  # answered


def test_bulk_progresses_while_the_interactive_lane_never_runs_dry(redis_client: redis.Redis, redis_url: str) -> None:
    searches = [f"search-{i}" for i in range(6 * (BULK_EVERY + 1))]
    push(redis_client, keys.queue(DEP, NODE), searches)
    push(redis_client, keys.bulk_queue(DEP, NODE), [f"bulk-{i}" for i in range(4)])
    task = serve_until_drained(redis_url, BatchLimits(max_batch_size=1, bulk_take=1))  # one document per take
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
