"""Gateway (producer) CPU per document: cache hits (``DISPATCH`` answers them) and misses
(queued, answered by a minimal fake worker process that pops and replies with plain commands, so
only the gateway's side is measured), 32 concurrent callers of ``Producer.infer``, 1 or 16
documents a call. Uses nothing but the producer's public API and ``shared.keys``, so the same file
measures another checkout: ``cd /tmp && PYTHONPATH=<checkout> python <this file> 30000``.

    python -m benchmarks.gateway_cpu [documents per case, default 20000]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
import sys
import time
from typing import Any

import redis

from shared import keys
from shared.deployment_store import RouteStatus
from shared.producer import Producer
from shared.wire import InferReply, InferRequest
from tests.redis_server import redis_server_process

DEP, NODE = "bench", "node-1"

def seed(url: str) -> None:
    c = redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    doc = {"deployment_id": DEP, "model_id": DEP, "task_parameters": {"model_id": DEP, "deployment_id": DEP,
           "model_bytes": 1, "threads_per_allocation": 1, "number_of_allocations": 1, "queue_capacity": 100000,
           "cache_size": "64mb", "priority": "normal"}, "cache_size_bytes": 64 << 20, "cache_policy": "lfu",
           "memory_bytes": 1, "targets": {NODE: 1}, "assignment_state": "started", "start_time_ms": now, "uid": "u1",
           "model_sha256": "ab" * 32, "inference_config": {"text_embedding": {"results_field": "predicted_value"}},
           "field_names": ["text_field"]}
    c.set(keys.deployment(DEP), json.dumps(doc))
    c.sadd(keys.DEPLOYMENTS, DEP)
    c.hset(keys.routes(DEP), NODE, RouteStatus("started", 1, "", now, 1).to_json())

def fake_worker(url: str, stop: Any) -> None:
    c = redis.Redis.from_url(url)
    q = keys.queue(DEP, NODE)
    result = json.dumps({"predicted_value": [0.1] * 8}).encode()
    while not stop.is_set():
        items = c.rpop(q, 256)
        if not items:
            c.blmove(q, q, 0.2, "RIGHT", "RIGHT")
            continue
        pipe = c.pipeline(transaction=False)
        for raw in items:
            r = InferRequest.unpack(raw)
            pipe.rpush(r.reply_to, InferReply(r.id, NODE, result_json=result).pack())
        pipe.execute()

def fill_cache(url: str, texts: list[str]) -> None:
    """Cache a result for each text, as a worker's COMPLETE would (the hits' results)."""
    from shared.cache import DigestPrefix
    from shared.producer import canonical_json
    from shared.task_config import resolve_request_config

    client = redis.Redis.from_url(url)
    doc = json.loads(client.get(keys.deployment(DEP)) or b"{}")
    config = resolve_request_config(doc["inference_config"], None, model_id=DEP)
    prefix = DigestPrefix(doc["model_sha256"], doc["uid"], canonical_json(config))
    pairs = [x for t in texts for x in (prefix.digest(t), json.dumps({"predicted_value": [0.1] * 8}).encode())]
    try:
        from shared import queue

        completion = queue.Completion(64 << 20, "lfu", int(time.time() * 1000), 0, 0, 0, 0, cache_pairs=pairs)
        queue.run(client, queue.complete(DEP, NODE, "a0", completion))
    except (ImportError, AttributeError):  # a checkout before shared.queue's typed calls
        from shared.cache import SyncResultCache  # type: ignore[attr-defined]

        cache = SyncResultCache(client, keys.cache_prefix(DEP, NODE), budget_bytes=64 << 20)  # type: ignore[attr-defined]
        for i in range(0, len(pairs), 2):
            cache.put(pairs[i], pairs[i + 1])


def redis_cpu_s(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def run(url: str, n: int, docs_per_call: int, concurrency: int, miss: bool) -> tuple[float, float, float]:
    p = Producer.connect(url)
    await p.start()
    counter = iter(range(10**9))
    async def one() -> None:
        texts = [{"text_field": f"{'miss' if miss else 'hit'} {next(counter) if miss else i}"} for i in range(docs_per_call)]
        await p.infer(DEP, texts, timeout_ms=30000)
    await asyncio.gather(*(one() for _ in range(concurrency)))  # warm: connections, views
    if not miss:
        assert (await p.infer(DEP, [{"text_field": "hit 0"}]))[0].cache_hit
    admin = redis.Redis.from_url(url)
    t0, r0, redis0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), redis_cpu_s(admin)
    done = 0
    async def loop() -> None:
        nonlocal done
        while done < n:
            done += docs_per_call
            await one()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    r1, t1, redis1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), redis_cpu_s(admin)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    await p.close()
    return cpu / done * 1e6, (redis1 - redis0) / done * 1e6, done / (t1 - t0)

def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with redis_server_process() as (url, _):
        seed(url)
        stop = multiprocessing.Event()
        w = multiprocessing.Process(target=fake_worker, args=(url, stop))
        w.start()
        fill_cache(url, [f"hit {i}" for i in range(16)])
        for miss in (False, True):
            for docs in (1, 16):
                us, redis_us, rps = asyncio.run(run(url, n, docs, 32, miss))
                print(f"{'miss' if miss else 'hit '} docs/call={docs:<3} gateway CPU {us:7.1f} us/doc   "
                      f"Redis CPU {redis_us:6.1f} us/doc   {rps:8.0f} docs/s")
        stop.set()
        w.join()

if __name__ == "__main__":
    main()
