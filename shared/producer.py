"""The producer: put inference work on the node queues and await the replies.

One implementation serves the HTTP gateway and programs that enqueue directly. Per document:
validate the input, build the cache digest, rank the deployment's nodes for that digest,
and run ``DISPATCH`` on the first node (a cache hit returns at once; no worker involved).
A full queue falls through to the next node in the ranking; when every node is full the call
raises ``QueueFull`` (never blocks). Replies come back on this producer's own reply list,
read by one loop (one round trip per wake-up, however many replies wait), so any number of
requests in flight share a fixed number of connections. Replies are read without popping them
and trimmed in the next round trip, once delivered: a reply read on a connection that dies
(Redis restarting) is read again, never lost.

Hot path: ``DISPATCH`` calls go through ``ScriptPipeline``: calls made while a round trip is in
flight leave together in the next one (EVALSHA, pipelined on one connection), so under load a
document costs a fraction of a round trip, and never redis-py's per-pipeline ``SCRIPT EXISTS``.
Calls are packed by ``shared.queue`` (``dispatch_head``/``dispatch_argv``, derived from
``DISPATCH``'s field lists); the constant parts are packed once: the start of the EVALSHA per
(deployment, node, lane), the message's shared fields and the digest's hashed prefix per plan
(``_Plan``: the deployment's resolved config when a request has no ``inference_config``). On a
Redis Cluster there is one ``ScriptPipeline`` per shard (its own connection to that master); a
redirect (resharding, failover) sends the call through the cluster client instead.

Keys touched: through ``shared.queue`` only (the ``{dep|node}`` queue, stats and cache keys;
the producer's reply list ``keys.gateway_replies``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AskError, ClusterDownError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys, queue, task_config
from shared.cache import DigestPrefix
from shared.cluster_view import DeploymentView, ViewWatcher
from shared.errors import Conflict, InferqError, NotFound, QueueFull, RequestTimeout
from shared.queue import DISPATCH, DISPATCH_FULL, DISPATCH_HIT, INTERACTIVE, LANES, Script
from shared.redis_conn import as_bytes, async_client, exchange, exchange_connection, pack_args, pack_command
from shared.routing import rank_nodes
from shared.units import format_time_ms
from shared.wire import InferReply, RequestTemplate, WireError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 10_000.0
REPLY_READ_COUNT = 256  # replies read per round trip at most


@dataclass(frozen=True)
class InferResult:
    result_json: bytes  # one Elasticsearch result object, JSON
    cache_hit: bool
    node: str
    time_ms: float

    def result(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.result_json)
        return value


_REQUEST_ID_BATCH = 512


def now_ms() -> int:
    return int(time.time() * 1000)


def canonical_json(config: Mapping[str, Any]) -> str:
    """The config as the cache digest hashes it (docs/protocol.md, section 6)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def request_ids() -> Iterator[str]:
    """Request ids: 8 random hex characters, then a counter in hex (unique per producer). The
    randomness is drawn in batches, not one ``urandom`` call per request."""
    counter = itertools.count()
    while True:
        pool = secrets.token_hex(4 * _REQUEST_ID_BATCH)
        for start in range(0, len(pool), 8):
            yield f"{pool[start : start + 8]}{next(counter):x}"


@dataclass(frozen=True)
class _Plan:
    """What every document of one request shares: the digest's hashed prefix (None: cache
    off) and the request message with its constant fields packed."""

    digest_prefix: DigestPrefix | None
    template: RequestTemplate


class ScriptPipeline:
    """One Lua script called by many coroutines, in as few round trips as the load allows.

    ``submit`` queues a call and returns its future; one flusher task sends every queued call
    as EVALSHA, pipelined on a connection of its own (made with the client's settings), and
    whatever is submitted while that round trip is in flight leaves together in the next.
    ``submit_packed`` takes a whole packed call (``Script.head`` + its packer). The script is
    loaded on first NOSCRIPT (a new or restarted Redis) and only the calls refused that way
    are sent again, so none runs twice. A failed exchange fails every call of its batch.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        script: Script,
        connect: Callable[[], AbstractConnection] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """``connect``: the connection to send on (default: one made with ``client``'s settings;
        a Redis Cluster's producer passes one per shard); ``timeout_s``: the bound of one round
        trip (default: the client's socket timeout)."""
        self.client = client
        self.spec = script
        self.script = script.source
        self.sha = script.sha
        self._connect = connect or (lambda: exchange_connection(client))
        pool = getattr(client, "connection_pool", None)  # a cluster client has none: it passes connect
        self._timeout_s = timeout_s if connect is not None or pool is None else pool.connection_kwargs.get("socket_timeout")
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None

    def submit(self, key_values: Sequence[str], arg_values: Sequence[Any]) -> asyncio.Future[Any]:
        """A call by its values in field order (``Script.call`` checks them), packed here."""
        call = self.spec.call(key_values, arg_values)
        return self.submit_packed(self.spec.head(call.keys) + pack_args(call.args))

    def submit_packed(self, command: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
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
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    replies = await self._run([command for command, _ in batch])
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

    async def _run(self, commands: Sequence[bytes]) -> list[Any]:
        replies = await self._exchange(commands)
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:  # loaded on the connection that was refused (a cluster's shard, too)
            await self._exchange([pack_command(("SCRIPT", "LOAD", self.script))])
            again = await self._exchange([commands[i] for i in refused])
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        return replies

    async def _exchange(self, commands: Sequence[bytes]) -> list[Any]:
        connection = self._connection
        if connection is None:
            connection = self._connection = self._connect()
        timeout_s = self._timeout_s
        payload = commands[0] if len(commands) == 1 else b"".join(commands)
        replies: list[Any] = await connection.retry.call_with_retry(
            lambda: exchange(connection, payload, len(commands), timeout_s),
            lambda _error: connection.disconnect(),
        )
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
        self._cluster = queue.is_cluster(client)  # then one ScriptPipeline per shard (_shard)
        self._shards: dict[str, ScriptPipeline] = {}
        self._request_ids = request_ids()
        self._default_plans: dict[tuple[str, str, str], _Plan] = {}
        self._heads: dict[tuple[str, str, str], bytes] = {}
        self._waiting: dict[str, asyncio.Future[InferReply]] = {}
        self._reply_task: asyncio.Task[None] | None = None
        self._owned: list[aioredis.Redis] = []
        self._stopping = False
        # called with the deployment id when a request goes to a standby node (no allocation
        # yet): the gateway wakes its adaptive allocations scaler
        self.on_cold_dispatch: Callable[[str], None] | None = None

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
        if self._cluster:
            await self.redis.initialize()  # type: ignore[attr-defined]  # the slot table _shard reads
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
        for shard in self._shards.values():
            await shard.close()
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
            model_id = self.watcher.view.model_id(model_or_deployment_id)
            if await self.redis.exists(keys.model_config(model_id)):
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
        lane: str = INTERACTIVE,
    ) -> list[InferResult]:
        """Results in document order. Raises InferqError (QueueFull, RequestTimeout, 4xx, 500).

        ``lane``: ``interactive`` (default: ``_infer``, search-time calls) or ``bulk`` (ingest,
        bulk jobs): allocations take interactive work first and give bulk a bounded share
        (``shared.queue.TAKE``); each lane is bounded by ``queue_capacity`` on its own.

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
            weights = view.cold_weights()
            if weights and self.on_cold_dispatch is not None:
                self.on_cold_dispatch(view.deployment_id)
        if not weights:
            raise Conflict(f"Trained model deployment [{view.deployment_id}] is not allocated to any nodes")
        field_names = view.doc.get("field_names") or ["text_field"]
        config = (
            task_config.resolve_request_config(view.doc["inference_config"], inference_config, model_id=view.model_id)
            if inference_config
            else None
        )
        texts = [task_config.read_input_text(doc, field_names) for doc in docs]
        plan = self._default_plan(view) if config is None else self._plan(view, config, canonical_json(config))
        return await self._infer_texts(view, texts, plan, timeout_ms, weights, queue_limit, lane)

    def _default_plan(self, view: DeploymentView) -> _Plan:
        """The plan of requests without overrides (the deployment's effective config), made once."""
        doc = view.doc
        key = (view.deployment_id, str(doc.get("uid", "")), str(doc.get("model_sha256", "")))
        found = self._default_plans.get(key)
        if found is None:
            config = task_config.resolve_request_config(doc["inference_config"], None, model_id=view.model_id)
            found = self._plan(view, config, canonical_json(config))
            if len(self._default_plans) >= 256:
                self._default_plans.clear()
            self._default_plans[key] = found
        return found

    def _plan(self, view: DeploymentView, config: Mapping[str, Any], config_json: str) -> _Plan:
        doc = view.doc
        prefix = DigestPrefix(doc["model_sha256"], doc["uid"], config_json) if view.cache_size_bytes > 0 else None
        return _Plan(prefix, RequestTemplate(self.reply_key, view.deployment_id, dict(config)))

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
        lane: str = INTERACTIVE,
    ) -> list[InferResult]:
        """``config_json``: ``config`` as canonical JSON, when the caller has it already."""
        plan = self._plan(view, config, canonical_json(config) if config_json is None else config_json)
        return await self._infer_texts(view, texts, plan, timeout_ms, weights, queue_limit, lane)

    async def _infer_texts(
        self,
        view: DeploymentView,
        texts: Sequence[str],
        plan: _Plan,
        timeout_ms: float,
        weights: Mapping[str, int],
        queue_limit: int | None,
        lane: str = INTERACTIVE,
    ) -> list[InferResult]:
        if lane not in LANES:
            raise ValueError(f"unknown lane [{lane}]")
        enqueued_ms = now_ms()
        deadline_ms = enqueued_ms + int(timeout_ms)
        prefix = plan.digest_prefix
        affinity = self.cache_affinity
        loop = asyncio.get_running_loop()
        request_ids = self._request_ids
        waiting = self._waiting
        count = len(texts)
        ids: list[str] = []
        payloads: list[bytes] = []
        digests: list[str] = []
        rankings: list[list[str]] = []
        futures: list[asyncio.Future[InferReply]] = []
        for text in texts:
            request_id = next(request_ids)
            digest = prefix.digest(text) if prefix is not None else ""
            ids.append(request_id)
            digests.append(digest)
            payloads.append(plan.template.pack(request_id, text, deadline_ms, enqueued_ms, digest))
            rankings.append(rank_nodes(weights, digest if affinity else None))
            future: asyncio.Future[InferReply] = loop.create_future()
            futures.append(future)
            waiting[request_id] = future

        results: list[InferResult | None] = [None] * count
        placed_on: dict[int, str] = {}
        try:
            pending = list(range(count))
            attempt = 0
            while pending:
                nodes, calls = self._submit_round(
                    view, payloads, digests, rankings, pending, attempt, enqueued_ms, queue_limit, lane
                )
                outcomes = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
                still_full: list[int] = []
                for i, node, outcome in zip(pending, nodes, outcomes, strict=True):
                    code = int(outcome[0])
                    if code == DISPATCH_HIT:
                        results[i] = InferResult(bytes(outcome[1]), True, node, 0.0)
                        waiting.pop(ids[i], None)
                    elif code == DISPATCH_FULL:
                        still_full.append(i)
                    else:
                        placed_on[i] = node
                attempt += 1
                if still_full and any(attempt >= len(rankings[i]) for i in still_full):
                    raise QueueFull()
                pending = still_full
            if placed_on:
                await self._await_replies(view, futures, results, placed_on, deadline_ms, timeout_ms)
        finally:
            for request_id in ids:
                waiting.pop(request_id, None)
        return [r for r in results if r is not None]

    # ---- internals ---------------------------------------------------------------------------

    def _submit_round(
        self,
        view: DeploymentView,
        payloads: Sequence[bytes],
        digests: Sequence[str],
        rankings: Sequence[Sequence[str]],
        pending: Sequence[int],
        attempt: int,
        now: int,
        queue_limit: int | None,
        lane: str = INTERACTIVE,
    ) -> tuple[list[str], list[asyncio.Future[Any]]]:
        """``DISPATCH`` each pending document on its ``attempt``-th ranked node: (nodes, futures)."""
        nodes = [rankings[i][attempt] for i in pending]
        capacity = view.queue_capacity if queue_limit is None else max(0, min(queue_limit, view.queue_capacity))
        count_rejection = queue_limit is None
        policy = view.cache_policy
        futures: list[asyncio.Future[Any]] = []
        for i, node in zip(pending, nodes, strict=True):
            last = attempt == len(rankings[i]) - 1
            command = self._head(view.deployment_id, node, lane) + queue.dispatch_argv(
                digests[i], policy, now, view.start_ms(node), capacity, payloads[i], last and count_rejection
            )
            if self._cluster:
                values = queue.dispatch_values(
                    digests[i], policy, now, view.start_ms(node), capacity, payloads[i], last and count_rejection
                )
                call = DISPATCH.call(queue.dispatch_keys(view.deployment_id, node, lane), values)
                futures.append(asyncio.ensure_future(self._dispatch_on_shard(command, call)))
                continue
            futures.append(self._dispatch.submit_packed(command))
        return nodes, futures

    async def _dispatch_on_shard(self, command: bytes, call: queue.Eval) -> Any:
        """On a Redis Cluster: the call pipelined with the others bound to its shard; when the
        shard answers with a redirect (a resharding, a failover) or is unreachable, the call goes
        through the cluster client, which follows the redirect and refreshes its slot table."""
        try:
            return await self._shard(call.keys[0]).submit_packed(command)
        except (AskError, TryAgainError, ClusterDownError, RedisConnectionError, RedisTimeoutError):
            return await queue.call_async(self.redis, call)

    def _shard(self, key: str) -> ScriptPipeline:
        node: Any = self.redis.get_node_from_key(key)  # type: ignore[attr-defined]  # a cluster client here
        pipeline = self._shards.get(node.name)
        if pipeline is None:
            kwargs = {**node.connection_kwargs, "socket_timeout": None}
            timeout_s = node.connection_kwargs.get("socket_timeout")
            pipeline = self._shards[node.name] = ScriptPipeline(
                self.redis, DISPATCH, connect=lambda: node.connection_class(**kwargs), timeout_s=timeout_s
            )
        return pipeline

    def _head(self, deployment_id: str, node: str, lane: str = INTERACTIVE) -> bytes:
        """The packed start of ``DISPATCH`` on one (deployment, node, lane), made once."""
        key = (deployment_id, node, lane)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= 4096:
                self._heads.clear()
            head = self._heads[key] = queue.dispatch_head(deployment_id, node, lane)
        return head

    async def _await_replies(
        self,
        view: DeploymentView,
        futures: Sequence[asyncio.Future[InferReply]],
        results: list[InferResult | None],
        placed_on: Mapping[int, str],
        deadline_ms: int,
        timeout_ms: float,
    ) -> None:
        waiting = {i: futures[i] for i in placed_on}
        remaining_s = max(0.0, (deadline_ms - now_ms()) / 1000)
        try:
            async with asyncio.timeout(remaining_s):
                for future in waiting.values():  # awaited directly: a reply wakes this task in one step
                    await future
        except TimeoutError:  # the timeout cancelled the future it was awaiting: no reply either
            late_nodes = [placed_on[i] for i, f in waiting.items() if not f.done() or f.cancelled()]
            await queue.arun(self.redis, queue.count_timeouts(view.deployment_id, late_nodes))
            raise RequestTimeout(f"timeout [{format_time_ms(timeout_ms)}] waiting for inference result") from None
        for i, future in waiting.items():
            reply = future.result()
            if reply.error is not None:
                raise InferqError.from_wire(reply.error)
            results[i] = InferResult(reply.result_json or b"{}", reply.cache_hit, reply.node, reply.time_ms)

    def _forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    async def _read_replies(self) -> None:
        """One round trip per wake-up: ``LTRIM`` what the last one delivered, ``BLMOVE`` the list
        onto itself (waits, up to 1 s, until it holds a reply; pops nothing), ``LRANGE`` up to
        ``REPLY_READ_COUNT``. Workers only push at the tail, so the trim removes exactly what
        was read; replies read again after a failed round trip are duplicates, ignored."""
        delivered = 0
        while not self._stopping:
            try:
                async with self.blocking.pipeline(transaction=False) as pipe:
                    if delivered:
                        pipe.ltrim(self.reply_key, delivered, -1)
                    pipe.blmove(self.reply_key, self.reply_key, 1, "LEFT", "RIGHT")
                    pipe.lrange(self.reply_key, 0, REPLY_READ_COUNT - 1)
                    replies = await pipe.execute()
                items = replies[-1]
                for raw in items:
                    if isinstance(raw, (bytes, str)):
                        self._deliver(as_bytes(raw))
                delivered = len(items)
                if delivered:  # the requests woken answer their clients before the next read is sent
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving: Redis hiccups must not kill the reply path
                log.warning("reply loop error: %s", exc)
                delivered = 0  # read again what may not have been trimmed
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
