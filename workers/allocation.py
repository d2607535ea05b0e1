"""One allocation: a thread that serves one batch at a time with its own torch threads.

Loop: ``BLMOVE`` the oldest request into this allocation's processing list, ``TAKE`` up to
``max_batch_size - 1`` more (dynamic batching: whatever queued up while the previous batch ran;
without a batch wait both go in one pipelined round trip), skip the ones whose deadline has
passed, run one padded forward pass per token-bounded chunk, then in one pipelined round trip:
push the replies onto their producers' reply lists and run ``COMPLETE`` (cache the results,
record stats, drop the processing list). A crash between the pop and ``COMPLETE`` leaves the
items in the processing list, from where they are requeued (at-least-once; producers ignore
duplicate replies). Two round trips per batch, whatever its size.

Knobs (``WorkerSettings``, docs/benchmarks.md): ``INFERQ_MAX_BATCH_SIZE`` (documents per batch;
1 turns batching off), ``INFERQ_MAX_BATCH_TOKENS`` (padded tokens per forward pass: a batch
is split into chunks of at most this many rows × longest row), ``INFERQ_BATCH_WAIT_MS`` (sleep
after the first pop so more requests can join; 0 by default: under load the queue fills while
the previous batch runs, and when idle a wait is pure latency).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import torch
from redis.exceptions import NoScriptError

from shared import keys
from shared.errors import InferenceFailed, InferqError
from shared.queue import COMPLETE, REQUEUE, TAKE
from shared.redis_conn import as_bytes
from shared.wire import InferReply, InferRequest, WireError
from workers.runtime import LoadedModel
from workers.tasks import Prepared

log = logging.getLogger(__name__)

REPLY_TTL_S = 120
POP_TIMEOUT_S = 0.5  # how long a pop blocks before the loop looks at stop/drain again (redis-py types it int)


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 8
    max_batch_tokens: int = 8192
    batch_wait_ms: float = 0.0


@dataclass(frozen=True)
class AllocationContext:
    deployment_id: str
    node_id: str
    threads: int
    cache_budget_bytes: int
    cache_policy: str
    start_ms: int
    limits: BatchLimits


def now_ms() -> int:
    return int(time.time() * 1000)


def token_chunks(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Split item indices into chunks whose padded size (count × longest) stays within budget.

    Items are kept in order; a single item larger than the budget forms its own chunk.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in enumerate(lengths):
        candidate_longest = max(longest, length)
        if current and (
            (len(current) + 1) * candidate_longest > max_tokens or len(current) >= max_size
        ):
            chunks.append(current)
            current, candidate_longest = [], length
        current.append(i)
        longest = candidate_longest
    if current:
        chunks.append(current)
    return chunks


class Allocation(threading.Thread):
    def __init__(
        self,
        index: int,
        context: AllocationContext,
        model: LoadedModel,
        connect: Callable[[], redis.Redis],
        on_exit: Callable[[Allocation], None],
    ) -> None:
        super().__init__(name=f"alloc-{context.deployment_id}-{index}", daemon=True)
        self.index = index
        self.context = context
        self.model = model
        self.connect = connect
        self.on_exit = on_exit
        self.stop_requested = threading.Event()  # finish the current batch, then exit
        self.drain_requested = threading.Event()  # exit once the queue is empty
        self.queue_key = keys.queue(context.deployment_id, context.node_id)
        self.processing_key = keys.processing(context.deployment_id, context.node_id, f"a{index}")
        self.stats_key = keys.stats(context.deployment_id, context.node_id)
        self.cache_prefix = keys.cache_prefix(context.deployment_id, context.node_id)

    def run(self) -> None:
        torch.set_num_threads(self.context.threads)
        client = self.connect()
        take = client.register_script(TAKE)
        complete = client.register_script(COMPLETE)
        requeue = client.register_script(REQUEUE)
        limits = self.context.limits
        # Without a batch wait, the pop and the TAKE of the rest of the batch go in one round
        # trip: Redis runs the pipelined TAKE as soon as the BLMOVE returns.
        pipelined_take = limits.max_batch_size > 1 and limits.batch_wait_ms <= 0
        recovering = True  # first pass: put back whatever a previous failure left in our list
        try:
            while not self.stop_requested.is_set():
                try:
                    if recovering:
                        requeue(keys=[self.processing_key, self.queue_key])
                        recovering = False
                    if pipelined_take:
                        items = self._pop_and_take(client, take, limits.max_batch_size - 1)
                    else:
                        raw = client.blmove(self.queue_key, self.processing_key, POP_TIMEOUT_S, "RIGHT", "LEFT")  # type: ignore[arg-type]
                        items = [] if raw is None else [as_bytes(raw)]
                        if items and limits.max_batch_size > 1:
                            time.sleep(limits.batch_wait_ms / 1000)
                            items += take(keys=[self.queue_key, self.processing_key], args=[limits.max_batch_size - 1])
                    if not items:
                        if self.drain_requested.is_set():
                            break
                        continue
                    self.serve(client, complete, items)
                except redis.RedisError as exc:
                    # Redis is away: what we took stays in our processing list and is
                    # requeued on restart; keep the allocation alive and retry.
                    log.warning("allocation %s: redis error: %s", self.name, exc)
                    recovering = True
                    self.stop_requested.wait(0.5)
        except Exception:
            log.exception("allocation %s stopped on an error", self.name)
        finally:
            client.close()
            self.on_exit(self)

    def _pop_and_take(self, client: redis.Redis, take: Any, more: int) -> list[bytes]:
        """BLMOVE the oldest request (waiting up to POP_TIMEOUT_S) and TAKE up to ``more``, one round trip."""
        pipe = client.pipeline(transaction=False)
        pipe.blmove(self.queue_key, self.processing_key, POP_TIMEOUT_S, "RIGHT", "LEFT")  # type: ignore[arg-type]
        pipe.evalsha(take.sha, 2, self.queue_key, self.processing_key, more)
        raw, taken = pipe.execute(raise_on_error=False)
        if isinstance(raw, Exception):
            raise raw
        if isinstance(taken, NoScriptError):  # a restarted Redis: load it, take again
            taken = take(keys=[self.queue_key, self.processing_key], args=[more])
        elif isinstance(taken, Exception):
            raise taken
        return ([] if raw is None else [raw]) + list(taken)

    def serve(self, client: redis.Redis, complete: Any, items: Sequence[bytes]) -> None:
        now = now_ms()
        requests: list[InferRequest] = []
        for raw in items:
            try:
                requests.append(InferRequest.unpack(raw))
            except WireError as exc:
                log.warning("dropping malformed request: %s", exc)
        live = [r for r in requests if r.deadline_ms > now]  # nobody waits for the others any more
        replies: list[InferReply] = []
        cache_pairs: list[bytes | str] = []
        time_sum = 0.0
        ok = errors = 0
        prepared_ok: list[tuple[InferRequest, Prepared, int]] = []
        task = self.model.task
        for request in live:
            try:
                prepared = task.prepare(request.text, request.config)
                prepared_ok.append((request, prepared, _row_tokens(prepared)))
            except InferqError as error:
                replies.append(InferReply(request.id, self.context.node_id, error=error.to_wire()))
                errors += 1
        limits = self.context.limits
        for chunk in token_chunks([p[2] for p in prepared_ok], limits.max_batch_tokens, limits.max_batch_size):
            chunk_ms = now_ms()  # a later chunk skips whoever stopped waiting while earlier ones ran
            batch = [prepared_ok[i] for i in chunk if prepared_ok[i][0].deadline_ms > chunk_ms]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = task.run(self.model.module, [p[1] for p in batch])
            except InferqError as error:
                for request, _, _ in batch:
                    replies.append(InferReply(request.id, self.context.node_id, error=error.to_wire()))
                errors += len(batch)
                continue
            except Exception as exc:  # the model failed: a 500 for these requests, the node goes on
                log.exception("inference failed")
                failure = InferenceFailed(f"Error in inference process: [{exc}]")
                for request, _, _ in batch:
                    replies.append(InferReply(request.id, self.context.node_id, error=failure.to_wire()))
                errors += len(batch)
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            for (request, _, _), result in zip(batch, results, strict=True):
                body = json.dumps(result, separators=(",", ":")).encode()
                replies.append(
                    InferReply(
                        request.id,
                        self.context.node_id,
                        result_json=body,
                        time_ms=elapsed_ms,
                        timings={"queue_ms": float(now - request.enqueued_ms), "batch_size": float(len(batch))},
                    )
                )
                if request.digest:
                    cache_pairs += [request.digest, body]
                time_sum += elapsed_ms
                ok += 1
        by_id = {r.id: r for r in live}
        by_reply_list: dict[str, list[bytes]] = {}
        for reply in replies:
            by_reply_list.setdefault(by_id[reply.id].reply_to, []).append(reply.pack())
        # one round trip: the replies first (one RPUSH per reply list), then COMPLETE, run as
        # EVALSHA directly (a Script on a pipeline would add a SCRIPT EXISTS round trip)
        pipe = client.pipeline(transaction=False)
        for reply_to, packed in by_reply_list.items():
            pipe.rpush(reply_to, *packed)
            pipe.expire(reply_to, REPLY_TTL_S)
        complete_args = [
            self.cache_prefix,
            self.context.cache_budget_bytes,
            self.context.cache_policy,
            now_ms(),
            self.context.start_ms,
            ok,
            time_sum,
            errors,
            *cache_pairs,
        ]
        pipe.evalsha(complete.sha, 2, self.stats_key, self.processing_key, *complete_args)
        # replies first; a failing cache write or stats update must not fail the requests
        outcomes = pipe.execute(raise_on_error=False)
        if isinstance(outcomes[-1], NoScriptError):  # a restarted Redis: load it, complete again
            outcomes[-1] = _attempt(lambda: complete(keys=[self.stats_key, self.processing_key], args=complete_args))
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                log.warning("completing a batch: %s", outcome)


def _attempt(call: Callable[[], Any]) -> Any:
    """The call's result, or the Redis error it raised (as a pipeline reports failures)."""
    try:
        return call()
    except redis.RedisError as exc:
        return exc


def _row_tokens(prepared: Prepared) -> int:
    """Padded size of one prepared document: rows × its longest row."""
    rows = prepared.rows
    return len(rows) * max((len(r) for r in rows), default=1)
