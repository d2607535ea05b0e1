"""The ``inferq`` command. Every option also reads an ``INFERQ_*`` environment variable.

    inferq gateway  [--host H] [--port 9200] [--redis-url URL]
    inferq worker   --node-id ID --processors N [--memory BYTES] [--redis-url URL]
    inferq cluster  [--nodes 2] [--port 9200] [--redis-url URL] [--demo-model]
    inferq import   PATH --model-id ID --task-type TASK [--url URL] [--start]
    inferq bulk-worker [--redis-url URL] [--gateway-url URL]

Subcommands import their side lazily: the gateway never loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from shared.settings import DEFAULT_REDIS_URL, GatewaySettings, WorkerSettings
from shared.units import parse_byte_size


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return value if value not in (None, "") else default


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferq", description="A self-hosted inference cluster with Elasticsearch's trained-model API.")
    sub = parser.add_subparsers(dest="command", required=True)
    redis_url = _env(env, "INFERQ_REDIS_URL", _env(env, "REDIS_URL", DEFAULT_REDIS_URL))

    gw = sub.add_parser("gateway", help="run the HTTP gateway")
    gw.add_argument("--host", default=_env(env, "INFERQ_HOST", "127.0.0.1"), help="bind address [INFERQ_HOST]")
    gw.add_argument("--port", type=int, default=int(_env(env, "INFERQ_PORT", "9200")), help="port [INFERQ_PORT]")
    gw.add_argument("--redis-url", default=redis_url, help="Redis URL [INFERQ_REDIS_URL]")

    wk = sub.add_parser("worker", help="run one worker node")
    wk.add_argument("--node-id", default=_env(env, "INFERQ_NODE_ID", ""), required=not env.get("INFERQ_NODE_ID"), help="node id [INFERQ_NODE_ID]")
    wk.add_argument("--processors", type=int, default=int(_env(env, "INFERQ_PROCESSORS", str(os.cpu_count() or 1))), help="processors this node offers [INFERQ_PROCESSORS]")
    wk.add_argument("--memory", default=_env(env, "INFERQ_MEMORY", "8gb"), help="memory for models, bytes or e.g. 4gb [INFERQ_MEMORY]")
    wk.add_argument("--redis-url", default=redis_url, help="Redis URL [INFERQ_REDIS_URL]")

    cl = sub.add_parser("cluster", help="run a local cluster: Redis check, one gateway, N worker nodes")
    cl.add_argument("--nodes", type=int, default=int(_env(env, "INFERQ_NODES", "2")), help="worker nodes [INFERQ_NODES]")
    cl.add_argument("--processors", type=int, default=int(_env(env, "INFERQ_PROCESSORS", "1")), help="processors per node [INFERQ_PROCESSORS]")
    cl.add_argument("--port", type=int, default=int(_env(env, "INFERQ_PORT", "9200")), help="gateway port [INFERQ_PORT]")
    cl.add_argument("--redis-url", default=_env(env, "INFERQ_REDIS_URL", _env(env, "REDIS_URL", "")), help="Redis URL; default: 127.0.0.1:6379 if it answers, else a private redis-server [INFERQ_REDIS_URL]")
    cl.add_argument("--demo-model", action="store_true", default=_env(env, "INFERQ_DEMO_MODEL", "") == "1", help="import and deploy all-MiniLM-L6-v2 [INFERQ_DEMO_MODEL=1]")
    cl.add_argument("--no-bulk-worker", action="store_true", help="do not start the RQ bulk worker")

    im = sub.add_parser("import", help="trace a local Hugging Face model folder and upload it")
    im.add_argument("path", help="local model folder (never a hub id)")
    im.add_argument("--model-id", required=True, help="id to store the model under")
    im.add_argument("--task-type", required=True, help="ner, text_classification, text_embedding, ...")
    im.add_argument("--url", default=_env(env, "INFERQ_URL", "http://127.0.0.1:9200"), help="gateway URL [INFERQ_URL]")
    im.add_argument("--api-key", default=_env(env, "INFERQ_API_KEY", ""), help="API key, base64 id:key [INFERQ_API_KEY]")
    im.add_argument("--max-sequence-length", type=int, default=None)
    im.add_argument("--start", action="store_true", help="start a deployment after the upload")
    im.add_argument("--clear-previous", action="store_true", help="stop and delete a model with this id first")

    bw = sub.add_parser("bulk-worker", help="run an RQ worker for bulk inference jobs")
    bw.add_argument("--redis-url", default=redis_url, help="Redis URL [INFERQ_REDIS_URL]")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    if args.command == "gateway":
        from gateway.app import run as run_gateway

        settings = GatewaySettings.from_env(env)
        run_gateway(GatewaySettings(**{**settings.__dict__, "host": args.host, "port": args.port, "redis_url": args.redis_url}))
        return 0
    if args.command == "worker":
        from workers.node import run as run_worker

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
        from shared.local_cluster import run_cluster

        return run_cluster(
            nodes=args.nodes,
            processors=args.processors,
            port=args.port,
            redis_url=args.redis_url or None,
            demo_model=args.demo_model,
            bulk_worker=not args.no_bulk_worker,
        )
    if args.command == "import":
        from workers.importer import import_model

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
        from workers.bulk import run_bulk_worker

        return run_bulk_worker(args.redis_url)
    return 2


if __name__ == "__main__":
    sys.exit(main())
