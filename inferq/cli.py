"""The ``inferq`` command. The server commands' options also read ``INFERQ_*`` variables
(the help of each option names it); ``import`` reads only ``INFERQ_URL`` and ``INFERQ_API_KEY``.

    inferq gateway  [--host H] [--port 9200] [--redis-url URL] [--log-level info]
    inferq worker   --node-id ID --processors N [--memory BYTES] [--redis-url URL] [--log-level info]
    inferq cluster  [--nodes 2] [--processors 1] [--port 9200] [--redis-url URL] [--bulk-redis-url URL] [--demo-model] [--log-level warning]
    inferq import   PATH --model-id ID --task-type TASK [--url URL] [--api-key KEY] [--start]
    inferq bulk-worker [--redis-url URL] [--bulk-redis-url URL] [--log-level info]

``--redis-url`` is one Redis or a Redis Cluster (``redis+cluster://host:port``); RQ's bulk jobs
need one plain Redis: ``--bulk-redis-url`` when inferq's is a cluster.

Subcommands import their side lazily: the gateway never loads torch. Logging is configured
here, once per process (the composition root), at ``--log-level``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from shared.redis_conn import RedisUrlError
from shared.settings import BulkSettings, GatewaySettings, WorkerSettings, redis_url_from_env
from shared.units import parse_byte_size


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return value if value not in (None, "") else default


LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_log_level(parser: argparse.ArgumentParser, env: Mapping[str, str], default: str) -> None:
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default=_env(env, "INFERQ_LOG_LEVEL", default).lower(),
        help=f"least severe log lines shown (default {default}) [INFERQ_LOG_LEVEL]",
    )


def configure_logging(level: str, role: str) -> None:
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s {role} %(levelname)s %(message)s")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferq", description="A self-hosted inference cluster with Elasticsearch's trained-model API.")
    sub = parser.add_subparsers(dest="command", required=True)
    redis_url = redis_url_from_env(env)
    redis_help = "Redis URL: redis://, rediss://, or a Redis Cluster: redis+cluster://host:port[,host:port] [INFERQ_REDIS_URL]"
    bulk_help = "RQ's Redis for bulk jobs, a plain one (default: --redis-url, when that is not a cluster) [INFERQ_BULK_REDIS_URL]"
    bulk_redis_url = _env(env, "INFERQ_BULK_REDIS_URL", "")

    gw = sub.add_parser("gateway", help="run the HTTP gateway")
    gw.add_argument("--host", default=_env(env, "INFERQ_HOST", "127.0.0.1"), help="bind address [INFERQ_HOST]")
    gw.add_argument("--port", type=int, default=int(_env(env, "INFERQ_PORT", "9200")), help="port [INFERQ_PORT]")
    gw.add_argument("--redis-url", default=redis_url, help=redis_help)
    _add_log_level(gw, env, "info")

    wk = sub.add_parser("worker", help="run one worker node")
    wk.add_argument("--node-id", default=_env(env, "INFERQ_NODE_ID", ""), required=not env.get("INFERQ_NODE_ID"), help="node id [INFERQ_NODE_ID]")
    wk.add_argument("--processors", type=int, default=int(_env(env, "INFERQ_PROCESSORS", str(os.cpu_count() or 1))), help="processors this node offers [INFERQ_PROCESSORS]")
    wk.add_argument("--memory", default=_env(env, "INFERQ_MEMORY", "8gb"), help="memory for models, bytes or e.g. 4gb [INFERQ_MEMORY]")
    wk.add_argument("--redis-url", default=redis_url, help=redis_help)
    _add_log_level(wk, env, "info")

    cl = sub.add_parser("cluster", help="run a local cluster: Redis check, one gateway, N worker nodes")
    cl.add_argument("--nodes", type=int, default=int(_env(env, "INFERQ_NODES", "2")), help="worker nodes [INFERQ_NODES]")
    cl.add_argument("--processors", type=int, default=int(_env(env, "INFERQ_PROCESSORS", "1")), help="processors per node [INFERQ_PROCESSORS]")
    cl.add_argument("--port", type=int, default=int(_env(env, "INFERQ_PORT", "9200")), help="gateway port [INFERQ_PORT]")
    cl.add_argument("--redis-url", default=_env(env, "INFERQ_REDIS_URL", ""), help="a Redis of yours, kept after exit; default: a private redis-server, deleted on exit [INFERQ_REDIS_URL]")
    cl.add_argument("--bulk-redis-url", default=bulk_redis_url, help=bulk_help)
    cl.add_argument("--demo-model", action="store_true", default=_env(env, "INFERQ_DEMO_MODEL", "") == "1", help="import and deploy all-MiniLM-L6-v2 [INFERQ_DEMO_MODEL=1]")
    cl.add_argument("--no-bulk-worker", action="store_true", help="do not start the RQ bulk worker")
    cl.add_argument("--fresh", action="store_true", help="empty the Redis database first (FLUSHDB): start clean")
    _add_log_level(cl, env, "warning")

    im = sub.add_parser("import", help="trace a local Hugging Face model folder and upload it")
    im.add_argument("path", help="local model folder (never a hub id)")
    im.add_argument("--model-id", required=True, help="id to store the model under")
    im.add_argument("--task-type", required=True, help="ner, text_classification, text_embedding, ...")
    im.add_argument("--url", default=_env(env, "INFERQ_URL", "http://127.0.0.1:9200"), help="gateway URL [INFERQ_URL]")
    im.add_argument("--api-key", default=_env(env, "INFERQ_API_KEY", ""), help="API key, base64 id:key [INFERQ_API_KEY]")
    im.add_argument("--max-sequence-length", type=int, default=None, help="tokens per input (default: the tokenizer's limit, at most 8192)")
    im.add_argument("--start", action="store_true", help="start a deployment after the upload")
    im.add_argument("--clear-previous", action="store_true", help="stop and delete a model with this id first")

    bw = sub.add_parser("bulk-worker", help="run an RQ worker for bulk inference jobs")
    bw.add_argument("--redis-url", default=redis_url, help=redis_help)
    bw.add_argument("--bulk-redis-url", default=bulk_redis_url, help=bulk_help)
    _add_log_level(bw, env, "info")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    if args.command == "gateway":
        from gateway.app import run as run_gateway

        configure_logging(args.log_level, "gateway")
        settings = GatewaySettings.from_env(env)
        run_gateway(GatewaySettings(**{**settings.__dict__, "host": args.host, "port": args.port, "redis_url": args.redis_url}))
        return 0
    if args.command == "worker":
        from workers.node import run as run_worker

        configure_logging(args.log_level, args.node_id)
        base = WorkerSettings.from_env(env)
        run_worker(
            WorkerSettings(
                **{
                    **base.__dict__,
                    "node_id": args.node_id,
                    "processors": args.processors,
                    "memory_bytes": parse_byte_size(args.memory, "memory"),
                    "redis_url": args.redis_url,
                }
            )
        )
        return 0
    if args.command == "cluster":
        from inferq.local_cluster import run_cluster

        return run_cluster(
            nodes=args.nodes,
            processors=args.processors,
            port=args.port,
            redis_url=args.redis_url or None,
            bulk_redis_url=args.bulk_redis_url or None,
            demo_model=args.demo_model,
            bulk_worker=not args.no_bulk_worker,
            log_level=args.log_level,
            fresh=args.fresh,
        )
    if args.command == "import":
        from inferq.importer import import_model

        return import_model(
            args.path,
            model_id=args.model_id,
            task_type=args.task_type,
            url=args.url,
            api_key=args.api_key or None,
            start=args.start,
            clear_previous=args.clear_previous,
            max_sequence_length=args.max_sequence_length,
        )
    if args.command == "bulk-worker":
        from inferq.bulk import run_bulk_worker

        configure_logging(args.log_level, "bulk-worker")
        try:
            rq_url = BulkSettings(args.redis_url, args.bulk_redis_url).rq_url()
        except RedisUrlError as exc:
            print(f"inferq bulk-worker: {exc}", file=sys.stderr)
            return 2
        return run_bulk_worker(args.redis_url, rq_redis_url=rq_url, log_level=args.log_level)
    return 2


if __name__ == "__main__":
    sys.exit(main())
