"""Bulk inference as RQ jobs: many documents for one deployment, fed through the ``Producer``.

A program calls ``enqueue_bulk(redis_conn, deployment_id, docs | jsonl_path, ...)``; an
``inferq bulk-worker`` (``run_bulk_worker``) runs the job: it streams the documents in chunks
through the asyncio ``shared.producer.Producer`` (the gateway's request path: same routing,
cache fast path and node queues) and writes the results in input order.

Results: a list of documents goes back as the job's result (``job.return_value()``:
``{"results": [{"index": i, "result": {...}} | {"index": i, "error": {...}}, ...], ...}``)
unless ``output_path`` is given; a JSONL input (one ``_infer`` doc per line) always goes to a
JSONL output (default ``<input stem>.results.jsonl``), one line per document, in order, the same
entries. The worker and the caller must see the same file system for paths. Progress is in
``job.meta`` (``done``, ``total``, ``errors``, ``resumed_from``); ``wait_for_job`` shows it as a
progress bar until the job ends. The API, with examples: docs/bulk.md.

Fairness to interactive ``_infer`` traffic (both bounds hold per job; see ``BulkOptions``):

- **window**: at most ``window_docs_per_allocation`` × (the deployment's started allocations)
  documents of a job are in flight at once (dispatched and not yet answered), in chunks of
  ``chunk_docs``; routing spreads them over the nodes by allocations, so an interactive request
  queues behind about ``window_docs_per_allocation`` bulk documents per allocation, whatever the
  cluster's size: one small batch (the allocation batches up to ``max_batch_size``, 8 by default).
- **bulk lane**: chunks go to the deployment's bulk lane (``BulkOptions.lane``): allocations serve
  interactive requests first and bulk work with a bounded share (``shared.queue.TAKE``).
- **queue share**: a chunk is pushed with ``Producer.infer(..., queue_limit=share × capacity)``:
  the ``DISPATCH`` script refuses a bulk document once that node's bulk queue holds
  ``queue_share × queue_capacity`` items (atomically, in the same script as the push), so bulk
  never takes the last ``(1 - share)`` of a queue from interactive requests (nor makes them
  429). A refused chunk (``QueueFull``) waits and is retried with exponential back-off
  (``backoff_initial_ms`` .. ``backoff_max_ms``): nothing is dropped. Those refusals are not
  counted as rejections in the deployment's stats. A chunk refused part way has had its first
  documents queued: they are computed and their replies ignored (wasted work, never a
  duplicate in the output); this happens only while queues sit at the bulk bound.

``tests/integration/test_bulk.py`` measures both: the longest node queue seen while a job runs
(never above the window: 16 with one allocation) and the interactive ``_infer`` p50/p99 with the
job paused and running, interleaved. With the tiny test model on a shared 2-core machine, p50
went from ~2-4 ms to ~4-10 ms and p99 by 1.5-3.5x: CPU contention (the bulk worker and the node
compete with the gateway), not queueing, dominates there. With a slow model the price is about
one small batch of bulk documents ahead of each interactive one; a strict guarantee would need
the allocations to serve an interactive queue before a bulk one (a worker change). Throughput,
same 2,000 documents, tiny model, one allocation: ~2,700 docs/s for a job (enqueue to finished),
as for HTTP ``_infer`` with as many documents in flight (2 clients × 8); HTTP with 32 in flight
reaches ~3,500: the window trades bulk throughput for interactive latency
(``window_docs_per_allocation``).

Failure handling: RQ retries a failed job (``retries``); a worker killed mid-job (SIGKILL, OOM)
leaves its job in RQ's started registry, whose entry this worker keeps alive from a heartbeat
thread with a short TTL (``job_heartbeat_ttl_s``), so another worker's maintenance pass finds it
abandoned within about ``job_heartbeat_ttl_s + idle_poll_s`` and RQ re-enqueues it. A JSONL
output is written to ``<output>.<job id>.part``: a retry resumes after the last complete line
(a torn last line is cut off), and the part file is renamed onto the output only when
complete, so the output never holds duplicated or partial lines. A job result is not
resumable; its retry starts over (cache hits make that cheap when the deployment caches).

Why ``SimpleWorker`` (no fork per job): the bulk worker holds no model and its job is I/O-bound
asyncio, so a fork (~20 ms, plus re-opening every connection) buys nothing; running in the
worker process keeps imports warm, lets RQ's SIGALRM job timeout work in the main thread, and
the job's own ``asyncio.timeout`` ends it cleanly just before RQ's alarm would.

Keys: RQ's ``rq:*`` keys (queue ``inferq-bulk``, its registries, jobs, workers) and those of
``Producer``. Job data, meta and results are msgpack (``MsgpackSerializer``), never pickle.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import msgpack
import redis
from rq import Queue, Retry, SimpleWorker
from rq.job import Job, get_current_job
from rq.timeouts import JobTimeoutException
from rq.worker import WorkerStatus

from shared import task_config
from shared.errors import Conflict, InferqError, NotFound, QueueFull, RequestTimeout, Unavailable
from shared.producer import InferResult, Producer
from shared.queue import BULK, LANES
from shared.redis_conn import is_cluster
from shared.settings import BulkSettings

log = logging.getLogger(__name__)

BULK_QUEUE = "inferq-bulk"
MAX_INLINE_DOCS = 10_000  # more documents than this must go to an output file
DEFAULT_JOB_TIMEOUT_S = 3600
DEFAULT_RESULT_TTL_S = 24 * 3600
DEFAULT_FAILURE_TTL_S = 7 * 24 * 3600


# ---- serializer ------------------------------------------------------------------------------


class MsgpackSerializer:
    """RQ serializer: job data, meta and results as msgpack (tuples come back as lists)."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]

    @staticmethod
    def loads(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)


# ---- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BulkOptions:
    chunk_docs: int = 8  # documents per Producer.infer call (capped at the queue limit)
    window_docs_per_allocation: int = 16  # a job's documents in flight, per started allocation
    queue_share: float = 0.5  # push only while a node queue holds < share × queue_capacity
    timeout_ms: float = 60_000.0  # per chunk
    max_timeouts: int = 3  # a chunk that times out this often fails the job (RQ retries it)
    backoff_initial_ms: float = 5.0
    backoff_max_ms: float = 200.0
    unavailable_timeout_s: float = 60.0  # wait this long for a deployment with no started node
    progress_interval_s: float = 0.5  # job.meta is saved at most this often (and at the end)
    lane: str = BULK  # the queue lane (``interactive`` only to measure what the bulk lane buys)

    def __post_init__(self) -> None:
        if self.lane not in LANES:
            raise ValueError(f"lane must be one of {list(LANES)}")
        if self.chunk_docs < 1 or self.window_docs_per_allocation < 1:
            raise ValueError("chunk_docs and window_docs_per_allocation must be at least 1")
        if not 0 < self.queue_share <= 1:
            raise ValueError("queue_share must be in (0, 1]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BulkOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data or {}) - known)
        if unknown:
            raise ValueError(f"unknown bulk options: {unknown}")
        return cls(**dict(data or {}))

    def queue_limit(self, queue_capacity: int) -> int:
        return max(1, int(queue_capacity * self.queue_share))


# ---- entries, sources and sinks --------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """The outcome for one document: its ES result object (JSON bytes) or an error."""

    index: int
    result_json: bytes | None = None
    error: dict[str, Any] | None = None

    def to_json_line(self) -> bytes:
        if self.result_json is not None:
            return b'{"index":%d,"result":%s}\n' % (self.index, self.result_json)
        return json.dumps({"index": self.index, "error": self.error}, separators=(",", ":")).encode() + b"\n"

    def to_object(self) -> dict[str, Any]:
        if self.result_json is not None:
            return {"index": self.index, "result": json.loads(self.result_json)}
        return {"index": self.index, "error": self.error}


@dataclass(frozen=True)
class Item:
    """One input document, or the error that reading it gave."""

    index: int
    doc: Mapping[str, Any] | None
    error: dict[str, Any] | None = None


def _bad_input(reason: str) -> dict[str, Any]:
    return {"status": 400, "type": "parse_exception", "reason": reason}


def iter_items(source: Mapping[str, Any], start: int = 0) -> Iterator[Item]:
    """The documents of ``source`` (``{"docs": [...]}`` or ``{"jsonl_path": path}``) from ``start``."""
    if "docs" in source:
        for index, doc in enumerate(source["docs"][start:], start=start):
            if isinstance(doc, Mapping):
                yield Item(index, doc)
            else:
                yield Item(index, None, _bad_input(f"document [{index}] is not an object"))
        return
    index = 0
    with open(source["jsonl_path"], "rb") as lines:
        for raw in lines:
            if not raw.strip():
                continue
            if index >= start:
                try:
                    doc = json.loads(raw)
                except ValueError as exc:
                    yield Item(index, None, _bad_input(f"line [{index}] is not JSON: {exc}"))
                else:
                    if isinstance(doc, dict):
                        yield Item(index, doc)
                    else:
                        yield Item(index, None, _bad_input(f"line [{index}] is not a JSON object"))
            index += 1


def count_items(source: Mapping[str, Any]) -> int:
    if "docs" in source:
        return len(source["docs"])
    with open(source["jsonl_path"], "rb") as lines:
        return sum(1 for raw in lines if raw.strip())


class Sink(Protocol):
    def resume(self) -> int:
        """How many leading documents are already written (a retry skips them)."""
        ...

    def write(self, entries: Sequence[Entry]) -> None: ...

    def finish(self) -> dict[str, Any]:
        """Make the output final; what goes into the job's result."""
        ...

    def close(self) -> None: ...


class InlineSink:
    """Results kept in memory and returned as the job's result."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def resume(self) -> int:
        return 0

    def write(self, entries: Sequence[Entry]) -> None:
        self.entries.extend(e.to_object() for e in entries)

    def finish(self) -> dict[str, Any]:
        return {"results": self.entries}

    def close(self) -> None:
        pass


class JsonlSink:
    """Lines appended to ``part_path``; renamed onto ``output_path`` once complete.

    A retry resumes after the last complete line of the part file (a torn last line, left by a
    killed worker, is cut off first), so every index is written exactly once.
    """

    def __init__(self, output_path: str | os.PathLike[str], part_path: str | os.PathLike[str]) -> None:
        self.output_path = Path(output_path)
        self.part_path = Path(part_path)
        self._file: Any = None

    def resume(self) -> int:
        written = 0
        if self.part_path.exists():
            data = self.part_path.read_bytes()
            end = data.rfind(b"\n") + 1  # after the last complete line
            written = data.count(b"\n", 0, end)
            if written and _line_index(data[data.rfind(b"\n", 0, end - 1) + 1 : end]) != written - 1:
                written, end = 0, 0  # not lines this job wrote in order: start over
            with open(self.part_path, "r+b") as part:
                part.truncate(end)
        self._file = open(self.part_path, "ab")
        return written

    def write(self, entries: Sequence[Entry]) -> None:
        self._file.write(b"".join(e.to_json_line() for e in entries))
        self._file.flush()  # the kernel has it: a killed process loses nothing it reported done

    def finish(self) -> dict[str, Any]:
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.part_path, self.output_path)
        return {"output_path": str(self.output_path)}

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


# ---- the run ---------------------------------------------------------------------------------


ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]


async def _no_progress(meta: dict[str, Any]) -> None:
    return None


@dataclass
class BulkCounters:
    done: int = 0
    errors: int = 0
    backoffs: int = 0  # QueueFull refusals waited out
    timeouts: int = 0
    started_s: float = field(default_factory=time.monotonic)


def _line_index(line: bytes) -> int | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value.get("index") if isinstance(value, dict) else None


class BulkRun:
    """Feeds one job's documents through a ``Producer`` with a bounded window, in order."""

    def __init__(
        self,
        producer: Producer,
        deployment_id: str,
        *,
        inference_config: Mapping[str, Any] | None = None,
        options: BulkOptions | None = None,
        progress: ProgressFn = _no_progress,
    ) -> None:
        self.producer = producer
        self.deployment_id = deployment_id
        self.inference_config = inference_config
        self.options = options or BulkOptions()
        self.progress = progress
        self.counters = BulkCounters()
        self.queue_limit = 1
        self.window_docs = self.options.window_docs_per_allocation
        self._last_report_s = 0.0

    async def run(self, source: Mapping[str, Any], sink: Sink) -> dict[str, Any]:
        view = await self.producer.resolve(self.deployment_id)  # NotFound fails the job at once
        # a bad inference_config fails the job here, not every document
        task_config.resolve_request_config(view.doc["inference_config"], self.inference_config, model_id=view.model_id)
        self.queue_limit = self.options.queue_limit(view.queue_capacity)
        chunk_docs = min(self.options.chunk_docs, self.queue_limit)  # a chunk always fits the limit
        total = count_items(source)
        start = sink.resume()
        counters = self.counters
        counters.done = start
        await self._report(total, start, force=True)
        in_flight: deque[asyncio.Task[list[Entry]]] = deque()
        try:
            for chunk in _chunked(iter_items(source, start), chunk_docs):
                while len(in_flight) >= self._window_chunks(chunk_docs):
                    self._write(sink, await in_flight.popleft())
                    await self._report(total, start)
                in_flight.append(asyncio.create_task(self._chunk(chunk)))
            while in_flight:
                self._write(sink, await in_flight.popleft())
                await self._report(total, start)
            outcome = sink.finish()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            sink.close()
        await self._report(total, start, force=True)
        elapsed_s = time.monotonic() - counters.started_s
        return {
            "deployment_id": self.deployment_id,
            "total": total,
            "done": counters.done,
            "errors": counters.errors,
            "resumed_from": start,
            "backoffs": counters.backoffs,
            "window_docs": self.window_docs,
            "elapsed_s": round(elapsed_s, 3),
            "docs_per_s": round((counters.done - start) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            **outcome,
        }

    def _window_chunks(self, chunk_docs: int) -> int:
        """Chunks in flight allowed now: the window follows the started allocations."""
        view = self.producer.watcher.view.resolve(self.deployment_id)
        allocations = sum(view.routable_weights().values()) if view is not None else 0
        self.window_docs = self.options.window_docs_per_allocation * max(1, allocations)
        return max(1, self.window_docs // chunk_docs)

    def _write(self, sink: Sink, entries: list[Entry]) -> None:
        sink.write(entries)
        self.counters.done += len(entries)
        self.counters.errors += sum(1 for e in entries if e.error is not None)

    async def _report(self, total: int, start: int, *, force: bool = False) -> None:
        now_s = time.monotonic()
        if not force and now_s - self._last_report_s < self.options.progress_interval_s:
            return
        self._last_report_s = now_s
        c = self.counters
        await self.progress(
            {"done": c.done, "total": total, "errors": c.errors, "resumed_from": start, "backoffs": c.backoffs}
        )

    async def _chunk(self, items: Sequence[Item]) -> list[Entry]:
        entries: dict[int, Entry] = {i.index: Entry(i.index, error=i.error) for i in items if i.doc is None}
        good = [i for i in items if i.doc is not None]
        if good:
            for item, entry in zip(good, await self._infer([i.doc for i in good if i.doc is not None]), strict=True):
                entries[item.index] = Entry(item.index, entry.result_json, entry.error)
        return [entries[i.index] for i in items]

    async def _infer(self, docs: Sequence[Mapping[str, Any]]) -> list[Entry]:
        """Entries (index 0..) for ``docs``; waits out back-pressure, isolates bad documents."""
        options = self.options
        backoff_ms = options.backoff_initial_ms
        timeouts = 0
        unavailable_since_s: float | None = None
        while True:
            try:
                results = await self.producer.infer(
                    self.deployment_id,
                    docs,
                    inference_config=self.inference_config,
                    timeout_ms=options.timeout_ms,
                    queue_limit=self.queue_limit,
                    lane=options.lane,
                )
                return [_entry(i, r) for i, r in enumerate(results)]
            except QueueFull:
                self.counters.backoffs += 1
            except RequestTimeout:
                timeouts += 1
                self.counters.timeouts += 1
                if timeouts >= options.max_timeouts:
                    raise
                continue
            except NotFound:
                raise
            except (Conflict, Unavailable):  # stopping, failed or not allocated: wait a while
                now_s = time.monotonic()
                unavailable_since_s = unavailable_since_s or now_s
                if now_s - unavailable_since_s > options.unavailable_timeout_s:
                    raise
            except InferqError as error:  # a bad document (400) or a model error (500)
                if len(docs) == 1:
                    return [Entry(0, error=error.to_wire())]
                entries: list[Entry] = []
                for i, doc in enumerate(docs):
                    (one,) = await self._infer([doc])
                    entries.append(Entry(i, one.result_json, one.error))
                return entries
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(backoff_ms * 2, options.backoff_max_ms)


def _entry(index: int, result: InferResult) -> Entry:
    return Entry(index, result_json=result.result_json)


def _chunked(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def run_bulk(
    redis_url: str,
    deployment_id: str,
    source: Mapping[str, Any],
    *,
    output_path: str | None = None,
    part_path: str | None = None,
    inference_config: Mapping[str, Any] | None = None,
    options: BulkOptions | None = None,
    progress: ProgressFn = _no_progress,
) -> dict[str, Any]:
    """Run one bulk inference to completion (what a job does; usable without RQ too)."""
    sink: Sink = (
        JsonlSink(output_path, part_path or f"{output_path}.part") if output_path is not None else InlineSink()
    )
    async with Producer.connect(redis_url) as producer:
        run = BulkRun(producer, deployment_id, inference_config=inference_config, options=options, progress=progress)
        return await run.run(source, sink)


# ---- the RQ job ------------------------------------------------------------------------------

# The Redis URL of the worker running the current job (set by BulkWorker around each job).
_WORKER_REDIS_URL: contextvars.ContextVar[str | None] = contextvars.ContextVar("inferq_bulk_redis_url", default=None)


def _redis_url_of(connection: redis.Redis) -> str:
    """A URL for the connection a job came from (when run by a worker other than BulkWorker)."""
    kwargs = connection.connection_pool.connection_kwargs
    db = int(kwargs.get("db", 0) or 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    auth = ""
    if kwargs.get("password"):
        user = quote(str(kwargs.get("username") or ""), safe="")
        auth = f"{user}:{quote(str(kwargs['password']), safe='')}@"
    return f"redis://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def run_bulk_job(
    deployment_id: str,
    source: dict[str, Any],
    output_path: str | None = None,
    inference_config: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The RQ job: every argument is msgpack-able; the result is too."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_bulk_job runs inside an RQ worker; call run_bulk() directly otherwise")
    redis_url = _WORKER_REDIS_URL.get() or _redis_url_of(job.connection)
    bulk_options = BulkOptions.from_dict(options)
    timeout_s = float(job.timeout) if job.timeout and job.timeout > 0 else None

    async def progress(meta: dict[str, Any]) -> None:
        job.meta.update(meta)
        await asyncio.to_thread(job.save_meta)

    async def main() -> dict[str, Any]:
        work = run_bulk(
            redis_url,
            deployment_id,
            source,
            output_path=output_path,
            part_path=f"{output_path}.{job.id}.part" if output_path is not None else None,
            inference_config=inference_config,
            options=bulk_options,
            progress=progress,
        )
        if timeout_s is None:
            return await work
        # end cleanly just before RQ's SIGALRM, which an event loop may swallow in a callback
        margin_s = min(5.0, timeout_s * 0.1)
        try:
            async with asyncio.timeout(timeout_s - margin_s):
                return await work
        except TimeoutError as exc:
            raise JobTimeoutException(f"bulk job exceeded its timeout of {timeout_s:.0f}s") from exc

    return asyncio.run(main())


def enqueue_bulk(
    redis_conn: redis.Redis,
    deployment_id: str,
    docs: Sequence[Mapping[str, Any]] | str | os.PathLike[str],
    *,
    output_path: str | os.PathLike[str] | None = None,
    inference_config: Mapping[str, Any] | None = None,
    options: BulkOptions | None = None,
    queue_name: str = BULK_QUEUE,
    job_timeout_s: int = DEFAULT_JOB_TIMEOUT_S,
    result_ttl_s: int = DEFAULT_RESULT_TTL_S,
    failure_ttl_s: int = DEFAULT_FAILURE_TTL_S,
    retries: int = 3,
    retry_interval_s: int | list[int] = 0,
    job_id: str | None = None,
) -> Job:
    """Enqueue a bulk inference job; ``docs`` is a list of ``_infer`` docs or a JSONL file path.

    Results go to the job's result for a list (at most ``MAX_INLINE_DOCS``) without
    ``output_path``, else to ``output_path`` (a JSONL input defaults it to
    ``<input stem>.results.jsonl``). ``retries``: how often RQ re-runs a failed or abandoned job;
    a ``retry_interval_s`` above 0 needs a worker running RQ's scheduler.
    """
    source: dict[str, Any]
    if isinstance(docs, (str, os.PathLike)):
        path = Path(docs).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no JSONL input at {path}")
        source = {"jsonl_path": str(path)}
        if output_path is None:
            output_path = path.with_name(f"{path.stem}.results.jsonl")
        total: int | None = None
    else:
        if not all(isinstance(d, Mapping) for d in docs):
            raise TypeError("docs must be a list of objects (mappings)")
        source = {"docs": [dict(d) for d in docs]}
        total = len(source["docs"])
        if output_path is None and total > MAX_INLINE_DOCS:
            raise ValueError(f"more than {MAX_INLINE_DOCS} documents: give an output_path (or a JSONL input)")
    out = str(Path(output_path).resolve()) if output_path is not None else None
    if is_cluster(redis_conn):
        raise TypeError(
            "enqueue_bulk needs a connection to RQ's Redis, a plain one (INFERQ_BULK_REDIS_URL); "
            "RQ has no Redis Cluster support"
        )
    queue = Queue(queue_name, connection=redis_conn, serializer=MsgpackSerializer)
    return queue.enqueue(
        run_bulk_job,
        args=(deployment_id, source),
        kwargs={
            "output_path": out,
            "inference_config": dict(inference_config) if inference_config is not None else None,
            "options": asdict(options) if options is not None else None,
        },
        job_timeout=job_timeout_s,
        result_ttl=result_ttl_s,
        failure_ttl=failure_ttl_s,
        retry=Retry(max=retries, interval=retry_interval_s) if retries > 0 else None,
        meta={"done": 0, "total": total, "errors": 0},
        job_id=job_id,
        description=f"bulk inference: {deployment_id} ({total if total is not None else 'jsonl'} docs)",
    )


def fetch_job(redis_conn: redis.Redis, job_id: str) -> Job:
    """A bulk job by id (with the msgpack serializer its data needs)."""
    return Job.fetch(job_id, connection=redis_conn, serializer=MsgpackSerializer)


FINAL_STATUSES = frozenset({"finished", "failed", "stopped", "canceled"})


def wait_for_job(job: Job, *, timeout_s: float | None = None, poll_s: float = 0.2, progress: bool = True) -> str:
    """Block until ``job`` ends (``finished``, ``failed``, ...) and return its status; with
    ``progress`` a tqdm bar on stderr follows ``job.meta`` (documents done of total, errors).
    A timeout raises ``TimeoutError`` and leaves the job running."""
    from tqdm import tqdm

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    bar = tqdm(total=job.meta.get("total"), unit="doc", desc=f"bulk {job.id[:8]}", file=sys.stderr, disable=not progress)
    try:
        while (status := str(job.get_status(refresh=True).value)) not in FINAL_STATUSES:
            meta = job.get_meta(refresh=True)
            bar.total = meta.get("total") or bar.total
            bar.update(int(meta.get("done") or 0) - bar.n)
            bar.set_postfix(errors=int(meta.get("errors") or 0), refresh=False)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"bulk job {job.id} still {status} after {timeout_s}s")
            time.sleep(poll_s)
        meta = job.get_meta(refresh=True)
        bar.update(int(meta.get("done") or 0) - bar.n)
        return status
    finally:
        bar.close()


# ---- the worker ------------------------------------------------------------------------------


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class BulkWorkerSettings:
    queues: tuple[str, ...] = (BULK_QUEUE,)
    job_heartbeat_ttl_s: int = 30  # an abandoned job is seen this long after its worker died
    idle_poll_s: int = 10  # an idle worker wakes this often (and runs maintenance when due)
    maintenance_interval_s: int = 30  # RQ's registry cleaning: finds abandoned jobs
    nice: int = 0  # added to the worker's CPU niceness (bulk yields the CPU to interactive work)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BulkWorkerSettings:
        env = os.environ if env is None else env
        queues = tuple(q for q in (env.get("INFERQ_BULK_QUEUES") or BULK_QUEUE).split(",") if q)
        return cls(
            queues=queues,
            job_heartbeat_ttl_s=max(1, int(_env_float(env, "INFERQ_BULK_HEARTBEAT_TTL_S", 30))),
            idle_poll_s=max(1, int(_env_float(env, "INFERQ_BULK_IDLE_POLL_S", 10))),
            maintenance_interval_s=max(1, int(_env_float(env, "INFERQ_BULK_MAINTENANCE_INTERVAL_S", 30))),
            nice=int(_env_float(env, "INFERQ_BULK_NICE", 0)),
        )


class BulkWorker(SimpleWorker):
    """A ``SimpleWorker`` that keeps a running job's heartbeat fresh from a side thread.

    ``SimpleWorker`` sets a job's started-registry entry to expire at ``timeout + 60`` s and
    never refreshes it, so a killed worker's job would wait that long to be retried; here the
    entry expires after ``job_heartbeat_ttl_s`` unless the heartbeat thread renews it.
    """

    def __init__(self, *args: Any, redis_url: str, job_heartbeat_ttl_s: int = 30, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redis_url = redis_url
        self.job_heartbeat_ttl_s = job_heartbeat_ttl_s

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.job_heartbeat_ttl_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        token = _WORKER_REDIS_URL.set(self.redis_url)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, stop), name="bulk-heartbeat", daemon=True)
        try:
            self.prepare_execution(job)
            beat.start()
            self.perform_job(job, queue)
        finally:
            stop.set()
            if beat.is_alive():
                beat.join()
            _WORKER_REDIS_URL.reset(token)
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, stop: threading.Event) -> None:
        interval_s = max(0.5, self.job_heartbeat_ttl_s / 3)
        while not stop.wait(interval_s):
            if self.execution is None:
                return
            try:
                self.maintain_heartbeats(job)
            except Exception as exc:  # the next beat tries again; the TTL covers two misses
                log.warning("bulk job heartbeat failed: %s", exc)


class _MaintenanceNoise(logging.Filter):
    """RQ says "cleaning registries for queue" at INFO on every maintenance pass (every
    ``maintenance_interval_s``): routine, so it shows only at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "cleaning registries" in str(record.msg).lower():
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def run_bulk_worker(
    redis_url: str,
    *,
    rq_redis_url: str | None = None,
    settings: BulkWorkerSettings | None = None,
    burst: bool = False,
    log_level: str = "info",
) -> int:
    """Run an RQ worker for bulk jobs until SIGTERM/SIGINT (``inferq bulk-worker``): its jobs
    are taken from ``rq_redis_url`` (one plain Redis; default ``redis_url``) and their documents
    go through inferq's Redis at ``redis_url`` (which may be a Redis Cluster)."""
    settings = settings or BulkWorkerSettings.from_env()
    logging.getLogger("rq.worker").addFilter(_MaintenanceNoise())
    if settings.nice:
        os.nice(settings.nice)
    connection = redis.Redis.from_url(BulkSettings(redis_url, rq_redis_url or "").rq_url())
    queues = [Queue(name, connection=connection, serializer=MsgpackSerializer) for name in settings.queues]
    worker = BulkWorker(
        queues,
        connection=connection,
        serializer=MsgpackSerializer,
        redis_url=redis_url,
        job_heartbeat_ttl_s=settings.job_heartbeat_ttl_s,
        worker_ttl=settings.idle_poll_s + 15,  # RQ blocks for worker_ttl - 15 s between wake-ups
        maintenance_interval=settings.maintenance_interval_s,
    )
    worker.work(burst=burst, logging_level=log_level.upper())
    return 0
