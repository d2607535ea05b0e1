"""Put a few documents straight onto inferq's node queues (no HTTP) and print the results.

    .venv/bin/python examples/produce.py DEPLOYMENT_ID [TEXT ...] [--redis-url URL] [--timeout-ms MS] [--sync]

It uses ``shared.producer.Producer``, the gateway's own request path: the same routing, the
same per-node result cache (each result says whether it was a cache hit) and the same bounded
queues. A full queue raises ``QueueFull`` at once (HTTP would answer 429); this program backs off
and tries again, up to ``--max-attempts`` times. ``--sync`` runs the blocking
``shared.sync_producer.SyncProducer`` instead, for programs without an event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence

try:
    from shared.errors import InferqError, QueueFull
    from shared.producer import InferResult, Producer
    from shared.sync_producer import SyncProducer
except ModuleNotFoundError as missing:  # a Python without the project installed
    raise SystemExit(f"{missing}: run this with the project's Python: .venv/bin/python examples/produce.py") from None

DEFAULT_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Hello world!", "The quick brown fox jumps over the lazy dog.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("deployment_id", help="model or deployment id")
    parser.add_argument("texts", nargs="*", default=list(DEFAULT_TEXTS), help="documents (text_field) to infer")
    parser.add_argument(
        "--redis-url", default=os.environ.get("INFERQ_REDIS_URL", "redis://127.0.0.1:6380/0"),
        help="the cluster's Redis, as its ready line names it (default: make run's private one) [INFERQ_REDIS_URL]",
    )
    parser.add_argument("--timeout-ms", type=float, default=10_000.0)
    parser.add_argument("--max-attempts", type=int, default=8, help="tries while every queue is full")
    parser.add_argument("--sync", action="store_true", help="use the blocking SyncProducer")
    return parser.parse_args(argv)


def backoff_s(attempt: int) -> float:
    return min(0.01 * 2.0**attempt, 1.0)


async def produce_async(args: argparse.Namespace, docs: list[dict[str, str]]) -> list[InferResult]:
    async with Producer.connect(args.redis_url) as producer:
        for attempt in range(args.max_attempts):
            try:
                return await producer.infer(args.deployment_id, docs, timeout_ms=args.timeout_ms)
            except QueueFull:
                print(f"queue full, backing off {backoff_s(attempt):.2f}s", file=sys.stderr)
                await asyncio.sleep(backoff_s(attempt))
    raise QueueFull()


def produce_sync(args: argparse.Namespace, docs: list[dict[str, str]]) -> list[InferResult]:
    with SyncProducer.connect(args.redis_url) as producer:
        for attempt in range(args.max_attempts):
            try:
                return producer.infer(args.deployment_id, docs, timeout_ms=args.timeout_ms)
            except QueueFull:
                print(f"queue full, backing off {backoff_s(attempt):.2f}s", file=sys.stderr)
                time.sleep(backoff_s(attempt))
    raise QueueFull()


def short(result: InferResult, max_chars: int = 100) -> str:
    text = json.dumps(result.result(), separators=(",", ":"))
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    docs = [{"text_field": text} for text in args.texts]
    try:
        results = produce_sync(args, docs) if args.sync else asyncio.run(produce_async(args, docs))
    except InferqError as error:  # the same error body the HTTP API would send
        print(json.dumps(error.body()), file=sys.stderr)
        return 1
    for text, result in zip(args.texts, results, strict=True):
        hit = "cache hit " if result.cache_hit else "inferred  "
        print(f"{hit} node={result.node or '-':<8} {result.time_ms:7.2f} ms  {text[:40]!r:<44} {short(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
