"""The producer: put inference work on the node queues and await the replies.

One implementation serves the HTTP gateway and programs that enqueue directly. Per document:
validate the input, build the cache digest, rank the deployment's nodes for that digest,
and run ``DISPATCH`` on the first node (a cache hit returns at once; no worker involved).
A full queue falls through to the next node in the ranking; when every node is full the call
raises ``QueueFull`` (never blocks). Replies come back on this producer's own reply list,
read by one loop (``BLMPOP``: one round trip per wake-up, however many replies wait), so any
number of requests in flight share a fixed number of connections.

Hot path: ``DISPATCH`` calls go through ``ScriptPipeline``: calls made while a round trip is in
flight leave together in the next one (EVALSHA, pipelined on one connection), so under load a
document costs a fraction of a round trip, and never redis-py's per-pipeline ``SCRIPT EXISTS``.
A request without ``inference_config`` reuses the deployment's resolved config and its JSON.

Keys touched: the ``{dep|node}`` queue, stats and cache keys; ``inferq:replies:<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from shared import keys, task_config
from shared.cache import cache_digest
from shared.cluster_view import DeploymentView, ViewWatcher
from shared.errors import Conflict, InferqError, NotFound, QueueFull, RequestTimeout
from shared.queue import DISPATCH, DISPATCH_FULL, DISPATCH_HIT
from shared.redis_conn import as_bytes, async_client
from shared.routing import rank_nodes
from shared.units import format_time_ms
from shared.wire import InferReply, InferRequest, WireError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 10_000.0
REPLY_TTL_S = 120


@dataclass(frozen=True)
class InferResult:
    result_json: bytes  # one Elasticsearch result object, JSON
    cache_hit: bool
    node: str
    time_ms: float

    def result(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.result_json)
        return value


def now_ms() -> int:
    return int(time.time() * 1000)


class ScriptPipeline:
    """One Lua script called by many coroutines, in as few round trips as the load allows.

    ``submit`` queues a call and returns its future; one flusher task sends every queued call
    as EVALSHA in one pipeline, and whatever is submitted while that round trip is in flight
    leaves together in the next. The script is loaded on first NOSCRIPT (a new or restarted
    Redis) and only the calls refused that way are sent again, so none runs twice.
    """

    def __init__(self, client: aioredis.Redis, script: str) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(((len(keys), *keys, *args), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
        for _, future in self._pending:
            future.cancel()
        self._pending = []

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    replies = await self._run([call for call, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:  # the connection failed: every call of the batch fails
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # its caller went away
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._flusher = None

    async def _run(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                for i in todo:
                    pipe.evalsha(self.sha, *calls[i])
                outcomes = await pipe.execute(raise_on_error=False)
            refused = []
            for i, outcome in zip(todo, outcomes, strict=True):
                if attempt == 0 and isinstance(outcome, NoScriptError):
                    refused.append(i)
                else:
                    replies[i] = outcome
            if not refused:
                break
            await self.client.script_load(self.script)
            todo = refused
        return replies


class Producer:
    """asyncio producer. ``async with Producer.connect(url) as p: await p.infer(...)``."""

    def __init__(
        self,
        client: aioredis.Redis,
        blocking_client: aioredis.Redis,
        *,
        producer_id: str | None = None,
        refresh_s: float = 1.0,
        cache_timeout_s: float = 0.1,
        cache_affinity: bool = True,
    ) -> None:
        self.redis = client
        self.blocking = blocking_client
        self.producer_id = producer_id or secrets.token_hex(6)
        self.reply_key = keys.gateway_replies(self.producer_id)
        self.watcher = ViewWatcher(client, blocking_client, refresh_s)
        self.cache_timeout_s = cache_timeout_s
        self.cache_affinity = cache_affinity
        self._dispatch = ScriptPipeline(client, DISPATCH)
        self._request_ids = (f"{secrets.token_hex(4)}{n:x}" for n in itertools.count())
        self._default_configs: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self._waiting: dict[str, asyncio.Future[InferReply]] = {}
        self._reply_task: asyncio.Task[None] | None = None
        self._owned: list[aioredis.Redis] = []
        self._stopping = False

    @classmethod
    def connect(cls, redis_url: str, **kwargs: Any) -> Producer:
        client = async_client(redis_url)
        blocking = async_client(redis_url, blocking=True)
        producer = cls(client, blocking, **kwargs)
        producer._owned = [client, blocking]
        return producer

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self.watcher.start()
        self._reply_task = asyncio.create_task(self._read_replies())

    async def close(self) -> None:
        self._stopping = True
        if self._reply_task is not None:
            self._reply_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reply_task
        await self.watcher.close()
        await self._dispatch.close()
        for future in self._waiting.values():
            if not future.done():
                future.cancel()
        for client in self._owned:
            await client.aclose()

    # ---- public API --------------------------------------------------------------------------

    async def resolve(self, model_or_deployment_id: str) -> DeploymentView:
        view = self.watcher.view.resolve(model_or_deployment_id)
        if view is None:
            view = (await self.watcher.refresh()).resolve(model_or_deployment_id)
        if view is None:
            if await self.redis.exists(keys.model_config(model_or_deployment_id)):
                raise Conflict(
                    f"Model [{model_or_deployment_id}] must be deployed to use. Please deploy with the "
                    "start trained model deployment API."
                )
            raise NotFound(f"Could not find trained model [{model_or_deployment_id}]")
        return view

    async def infer(
        self,
        model_or_deployment_id: str,
        docs: Sequence[Mapping[str, Any]],
        *,
        inference_config: Mapping[str, Any] | None = None,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        queue_limit: int | None = None,
    ) -> list[InferResult]:
        """Results in document order. Raises InferqError (QueueFull, RequestTimeout, 4xx, 500).

        ``queue_limit`` (bulk producers): push only while a node's queue holds fewer items than
        this (never more than the deployment's ``queue_capacity``), so interactive requests keep
        the rest of the queue; a refusal under this lower bound raises ``QueueFull`` but is
        back-pressure, not a rejection, so it is not counted in ``rejected_execution_count``.
        """
        view = await self.resolve(model_or_deployment_id)
        if view.state in ("stopping", "failed"):
            raise Conflict(f"Trained model [{view.deployment_id}] is [{view.state}]")
        weights = view.routable_weights()
        if not weights:  # this view may lag a start that just finished elsewhere: look once more
            view = (await self.watcher.refresh()).resolve(model_or_deployment_id) or view
            weights = view.routable_weights()
        if not weights:
            raise Conflict(f"Trained model deployment [{view.deployment_id}] is not allocated to any nodes")
        field_names = view.doc.get("field_names") or ["text_field"]
        config_json: str | None = None
        if inference_config:
            config = task_config.resolve_request_config(
                view.doc["inference_config"], inference_config, model_id=view.model_id
            )
        else:
            config, config_json = self._default_config(view)
        texts = [task_config.read_input_text(doc, field_names) for doc in docs]
        return await self.infer_texts(
            view, texts, config, timeout_ms=timeout_ms, weights=weights, queue_limit=queue_limit,
            config_json=config_json,
        )

    def _default_config(self, view: DeploymentView) -> tuple[dict[str, Any], str]:
        """The deployment's effective config for requests without overrides, resolved once."""
        key = (view.deployment_id, str(view.doc.get("uid", "")))
        found = self._default_configs.get(key)
        if found is None:
            config = task_config.resolve_request_config(view.doc["inference_config"], None, model_id=view.model_id)
            found = (config, json.dumps(config, sort_keys=True, separators=(",", ":")))
            if len(self._default_configs) >= 256:
                self._default_configs.clear()
            self._default_configs[key] = found
        return found

    async def infer_texts(
        self,
        view: DeploymentView,
        texts: Sequence[str],
        config: Mapping[str, Any],
        *,
        timeout_ms: float,
        weights: Mapping[str, int],
        queue_limit: int | None = None,
        config_json: str | None = None,
    ) -> list[InferResult]:
        """``config_json``: ``config`` as canonical JSON, when the caller has it already."""
        enqueued_ms = now_ms()
        deadline_ms = enqueued_ms + int(timeout_ms)
        if config_json is None:
            config_json = json.dumps(config, sort_keys=True, separators=(",", ":"))
        use_cache = view.cache_size_bytes > 0
        requests: list[InferRequest] = []
        rankings: list[list[str]] = []
        for text in texts:
            digest = (
                cache_digest(view.doc["model_sha256"], view.doc["uid"], config_json, text) if use_cache else ""
            )
            requests.append(
                InferRequest(
                    id=next(self._request_ids),
                    reply_to=self.reply_key,
                    deployment_id=view.deployment_id,
                    text=text,
                    config=dict(config),
                    deadline_ms=deadline_ms,
                    enqueued_ms=enqueued_ms,
                    digest=digest,
                )
            )
            rankings.append(rank_nodes(weights, digest if self.cache_affinity else None))

        loop = asyncio.get_running_loop()
        results: list[InferResult | None] = [None] * len(requests)
        futures: dict[int, asyncio.Future[InferReply]] = {}
        placed_on: dict[int, str] = {}
        for i, request in enumerate(requests):
            futures[i] = loop.create_future()
            self._waiting[request.id] = futures[i]
        try:
            pending = list(range(len(requests)))
            attempt = 0
            while pending:
                outcomes = await self._dispatch_round(
                    view, requests, rankings, pending, attempt, enqueued_ms, queue_limit=queue_limit
                )
                still_full: list[int] = []
                for i, (node, outcome) in zip(pending, outcomes, strict=True):
                    code = int(outcome[0])
                    if code == DISPATCH_HIT:
                        results[i] = InferResult(bytes(outcome[1]), True, node, 0.0)
                        self._forget(requests[i].id)
                    elif code == DISPATCH_FULL:
                        still_full.append(i)
                    else:
                        placed_on[i] = node
                attempt += 1
                if still_full and any(attempt >= len(rankings[i]) for i in still_full):
                    raise QueueFull()
                pending = still_full
            await self._await_replies(view, requests, futures, results, placed_on, deadline_ms, timeout_ms)
        finally:
            for request in requests:
                self._forget(request.id)
        return [r for r in results if r is not None]

    # ---- internals ---------------------------------------------------------------------------

    async def _dispatch_round(
        self,
        view: DeploymentView,
        requests: Sequence[InferRequest],
        rankings: Sequence[Sequence[str]],
        pending: Sequence[int],
        attempt: int,
        now: int,
        *,
        queue_limit: int | None = None,
    ) -> list[tuple[str, list[Any]]]:
        nodes = [rankings[i][attempt] for i in pending]
        capacity = view.queue_capacity if queue_limit is None else max(0, min(queue_limit, view.queue_capacity))
        count_rejection = queue_limit is None
        futures = []
        for i, node in zip(pending, nodes, strict=True):
            request = requests[i]
            last = attempt == len(rankings[i]) - 1
            futures.append(
                self._dispatch.submit(
                    keys=[keys.queue(view.deployment_id, node), keys.stats(view.deployment_id, node)],
                    args=[
                        keys.cache_prefix(view.deployment_id, node),
                        request.digest,
                        view.cache_policy,
                        now,
                        view.start_ms(node),
                        capacity,
                        request.pack(),
                        1 if last and count_rejection else 0,
                    ],
                )
            )
        replies = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        return list(zip(nodes, replies, strict=True))

    async def _await_replies(
        self,
        view: DeploymentView,
        requests: Sequence[InferRequest],
        futures: Mapping[int, asyncio.Future[InferReply]],
        results: list[InferResult | None],
        placed_on: Mapping[int, str],
        deadline_ms: int,
        timeout_ms: float,
    ) -> None:
        waiting = {i: futures[i] for i in placed_on}
        if not waiting:
            return
        remaining_s = max(0.0, (deadline_ms - now_ms()) / 1000)
        done, not_done = await asyncio.wait(waiting.values(), timeout=remaining_s)
        if not_done:
            late_nodes = [placed_on[i] for i, f in waiting.items() if f in not_done]
            async with self.redis.pipeline(transaction=False) as pipe:
                for node in late_nodes:
                    pipe.hincrby(keys.stats(view.deployment_id, node), "timeout_count", 1)
                await pipe.execute()
            raise RequestTimeout(f"timeout [{format_time_ms(timeout_ms)}] waiting for inference result")
        for i, future in waiting.items():
            reply = future.result()
            if reply.error is not None:
                raise InferqError.from_wire(reply.error)
            results[i] = InferResult(reply.result_json or b"{}", reply.cache_hit, reply.node, reply.time_ms)

    def _forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    async def _read_replies(self) -> None:
        while not self._stopping:
            try:
                item = await self.blocking.blmpop(1, 1, self.reply_key, direction="LEFT", count=256)
                if item is None:
                    continue
                for raw in item[1]:
                    if isinstance(raw, (bytes, str)):
                        self._deliver(as_bytes(raw))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving: Redis hiccups must not kill the reply path
                log.warning("reply loop error: %s", exc)
                await asyncio.sleep(0.1)

    def _deliver(self, raw: bytes) -> None:
        try:
            reply = InferReply.unpack(raw)
        except WireError as exc:
            log.warning("dropping malformed reply: %s", exc)
            return
        future = self._waiting.get(reply.id)
        if future is not None and not future.done():  # late or duplicate replies are ignored
            future.set_result(reply)
