"""A blocking front for the asyncio ``Producer``, for programs without an event loop.

``SyncProducer`` runs one ``shared.producer.Producer`` on a private event-loop thread and
hands each call to it with ``run_coroutine_threadsafe``; it adds no logic of its own, so
routing, the cache fast path, the queue bound (``QueueFull``, never blocking) and timeouts
(``RequestTimeout``) are exactly the gateway's. Any number of threads may call ``infer`` at
once: they share the producer's two Redis connections and its one reply list.

    with SyncProducer.connect("redis://127.0.0.1:6379/0") as producer:
        results = producer.infer("my-model", [{"text_field": "hello"}], timeout_ms=5_000)

Keys touched: those of ``Producer`` (node queues, stats and cache keys, ``inferq:replies:<id>``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from shared.cluster_view import DeploymentView
from shared.errors import RequestTimeout
from shared.producer import DEFAULT_TIMEOUT_MS, InferResult, Producer
from shared.units import format_time_ms

T = TypeVar("T")

# How long a call may outlive its own timeout before the caller gives up on the loop thread
# (a Redis call stuck below the producer's deadline; the producer's clients time out at 10 s).
LOOP_GRACE_S = 30.0


class SyncProducer:
    """Blocking ``Producer``: ``with SyncProducer.connect(url) as p: p.infer(...)``."""

    def __init__(self, redis_url: str, **producer_kwargs: Any) -> None:
        self.redis_url = redis_url
        self._producer_kwargs = producer_kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, redis_url: str, **producer_kwargs: Any) -> SyncProducer:
        """A producer for ``redis_url``; it connects on ``start()`` / entering ``with``.
        ``producer_kwargs`` go to ``Producer.connect`` (``producer_id``, ``refresh_s``, ...)."""
        return cls(redis_url, **producer_kwargs)

    def __enter__(self) -> SyncProducer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("SyncProducer is not started: use `with SyncProducer.connect(url) as p:`")
        return self._producer

    @property
    def producer_id(self) -> str:
        return self.producer.producer_id

    def start(self) -> None:
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="inferq-sync-producer", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        try:
            self._producer = self._call(self._open(), timeout_s=LOOP_GRACE_S)
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        with self._lock:
            loop = self._loop
            if loop is None:
                return
        try:
            if self._producer is not None:
                self._call(self._producer.close(), timeout_s=LOOP_GRACE_S)
        finally:
            self._producer = None
            self._stop_loop()

    # ---- the API: the same calls as Producer, blocking ------------------------------------------

    def infer(
        self,
        model_or_deployment_id: str,
        docs: Sequence[Mapping[str, Any]],
        *,
        inference_config: Mapping[str, Any] | None = None,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        queue_limit: int | None = None,
    ) -> list[InferResult]:
        """``Producer.infer``: results in document order; raises the same ``InferqError``s."""
        coroutine = self.producer.infer(
            model_or_deployment_id,
            docs,
            inference_config=inference_config,
            timeout_ms=timeout_ms,
            queue_limit=queue_limit,
        )
        try:
            return self._call(coroutine, timeout_s=timeout_ms / 1000 + LOOP_GRACE_S)
        except concurrent.futures.TimeoutError as exc:
            raise RequestTimeout(
                f"timeout [{format_time_ms(timeout_ms)}] waiting for inference result"
            ) from exc

    def resolve(self, model_or_deployment_id: str) -> DeploymentView:
        """``Producer.resolve``: the deployment a model or deployment id routes to."""
        return self._call(self.producer.resolve(model_or_deployment_id), timeout_s=LOOP_GRACE_S)

    # ---- internals ---------------------------------------------------------------------------

    async def _open(self) -> Producer:
        producer = Producer.connect(self.redis_url, **self._producer_kwargs)
        try:
            await producer.start()
        except BaseException:
            await producer.close()
            raise
        return producer

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
        loop = self._loop
        if loop is None or not loop.is_running():
            coroutine.close()
            raise RuntimeError("SyncProducer is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(timeout=timeout_s)
        except BaseException:  # timeout, KeyboardInterrupt: stop the work on the loop too
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=LOOP_GRACE_S)
        if not loop.is_running():
            loop.close()
