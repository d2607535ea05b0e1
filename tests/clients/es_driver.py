"""Drive a cluster with the official ``elasticsearch`` client (whichever major is on the path),
sync or async, through every trained-model method; print what happened as one JSON line.

Run by ``tests/integration/test_clients_es.py`` with a pinned client folder first on
``PYTHONPATH``. This script only records: each step's response body, status and headers, or
the exception class, status, message and body. The test makes the assertions.

    python -m tests.clients.es_driver --url URL --mode sync|async --model-dir DIR --prefix P
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import elasticsearch
from elasticsearch import ApiError, AsyncElasticsearch, Elasticsearch, ElasticsearchWarning

from tests.clients import SAMPLE_TEXTS


def _headers(meta: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in dict(meta.headers).items()}


class Recorder:
    def __init__(self) -> None:
        self.steps: dict[str, Any] = {}

    async def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            response = fn()
            if inspect.isawaitable(response):
                response = await response
        except ApiError as exc:
            self.steps[name] = {
                "error": {
                    "class": type(exc).__name__,
                    "mro": [c.__name__ for c in type(exc).__mro__],
                    "status": exc.meta.status,
                    "status_code": exc.status_code,
                    "message": exc.message,
                    "str": str(exc),
                    "body": exc.body if isinstance(exc.body, (dict, list, str)) else repr(exc.body),
                    "headers": _headers(exc.meta),
                }
            }
            return None
        except Exception as exc:  # noqa: BLE001 - a client-side failure (connection, serialization, product check)
            self.steps[name] = {"exception": {"class": type(exc).__name__, "str": str(exc)}}
            return None
        if isinstance(response, bool) or getattr(response, "meta", None) is None:  # ping(), eland helpers
            self.steps[name] = {"value": response}
            return response
        self.steps[name] = {
            "status": response.meta.status,
            "body": response.body,
            "headers": _headers(response.meta),
            "response_class": type(response).__name__,
        }
        return response


async def scenario(es: Any, compressed: Any, no_retry: Any, rec: Recorder, prefix: str, model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    vocabulary = json.loads((model_dir / "vocabulary.json").read_text())
    definition = (model_dir / "model.pt").read_bytes()
    model = f"{prefix}-emb"
    config_only = f"{prefix}-cfg"
    docs = [{"text_field": t} for t in SAMPLE_TEXTS]

    await rec("info", lambda: es.info())
    await rec("ping", lambda: es.ping())
    await rec(
        "put_model",
        lambda: es.ml.put_trained_model(
            model_id=model,
            model_type="pytorch",
            inference_config=config["inference_config"],
            input=config["input"],
            description="uploaded by the official client",
            metadata=config.get("metadata") or {},
            tags=["client-test", prefix],
            defer_definition_decompression=True,
            wait_for_completion=False,
        ),
    )
    await rec(
        "put_config_only",
        lambda: es.ml.put_trained_model(
            model_id=config_only,
            model_type="pytorch",
            inference_config=config["inference_config"],
            input=config["input"],
            platform_architecture="linux-x86_64",
            prefix_strings={"ingest": "passage: ", "search": "query: "},
        ),
    )
    parts = 3
    chunk = math.ceil(len(definition) / parts)
    for part in range(parts):
        data = definition[part * chunk : (part + 1) * chunk]
        await rec(
            f"put_part_{part}",
            lambda part=part, data=data: es.ml.put_trained_model_definition_part(
                model_id=model,
                part=part,
                definition=base64.b64encode(data).decode(),
                total_definition_length=len(definition),
                total_parts=parts,
            ),
        )
    await rec(
        "put_vocabulary",
        lambda: es.ml.put_trained_model_vocabulary(
            model_id=model, **{k: v for k, v in vocabulary.items() if k in ("vocabulary", "merges", "scores")}
        ),
    )
    await rec(
        "get_one",
        lambda: es.ml.get_trained_models(
            model_id=model, include="definition_status", allow_no_match=False, decompress_definition=False,
            exclude_generated=False, from_=0, size=10, tags=["client-test"],
        ),
    )
    await rec("get_list", lambda: es.ml.get_trained_models(model_id=[model, f"{prefix}-c*"]))
    await rec("get_all", lambda: es.ml.get_trained_models(model_id="_all", size=100))
    await rec("get_none", lambda: es.ml.get_trained_models())
    await rec("get_excluded", lambda: es.ml.get_trained_models(model_id=model, exclude_generated=True))
    await rec(
        "get_filtered",
        lambda: es.ml.get_trained_models(
            model_id=model, filter_path=["count", "trained_model_configs.model_id"], human=True, pretty=True,
            error_trace=True,
        ),
    )
    await rec("get_percent_encoded", lambda: es.ml.get_trained_models(model_id="a b/c", allow_no_match=False))
    await rec("get_ignored_404", lambda: es.options(ignore_status=404).ml.get_trained_models(model_id=f"{prefix}-nope"))

    # every start parameter, on the query string
    await rec(
        "start",
        lambda: es.ml.start_trained_model_deployment(
            model_id=model, cache_size="10mb", deployment_id=model, number_of_allocations=1, priority="normal",
            queue_capacity=100, threads_per_allocation=1, timeout="60s", wait_for="started",
        ),
    )
    # adaptive_allocations travels in the body
    await rec(
        "start_low_priority",
        lambda: es.ml.start_trained_model_deployment(
            model_id=model, deployment_id=f"{model}-low", priority="low", wait_for="started",
            adaptive_allocations={"enabled": False},
        ),
    )
    await rec("infer", lambda: es.ml.infer_trained_model(model_id=model, docs=docs, timeout="30s"))
    await rec(
        "infer_with_config",
        lambda: es.ml.infer_trained_model(model_id=model, docs=docs[:1], inference_config={"text_embedding": {}}),
    )
    await rec("infer_low", lambda: es.ml.infer_trained_model(model_id=f"{model}-low", docs=docs[:1]))
    await rec("infer_gzip", lambda: compressed.ml.infer_trained_model(model_id=model, docs=docs[:2]))
    await rec("infer_filtered", lambda: es.ml.infer_trained_model(model_id=model, docs=docs[:1], filter_path="inference_results.predicted_value"))
    await rec("stats_one", lambda: es.ml.get_trained_models_stats(model_id=model, allow_no_match=True, from_=0, size=5))
    await rec("stats_all", lambda: es.ml.get_trained_models_stats())
    await rec("update", lambda: es.ml.update_trained_model_deployment(model_id=model, number_of_allocations=2))
    await rec("clear_cache", lambda: es.ml.clear_trained_model_deployment_cache(model_id=model))

    # errors, each as the client's own exception class
    await rec("err_not_found", lambda: es.ml.get_trained_models(model_id=f"{prefix}-missing", allow_no_match=False))
    await rec(
        "err_exists",
        lambda: es.ml.put_trained_model(
            model_id=model, model_type="pytorch", inference_config=config["inference_config"], input=config["input"]
        ),
    )
    await rec(
        "err_validation",
        lambda: es.ml.start_trained_model_deployment(model_id=model, deployment_id=f"{model}-bad", threads_per_allocation=3),
    )
    await rec("err_bad_enum", lambda: es.ml.start_trained_model_deployment(model_id=model, deployment_id=f"{model}-x", priority="urgent"))
    await rec("err_conflict_delete", lambda: es.ml.delete_trained_model(model_id=model))
    await rec("err_not_deployed", lambda: es.ml.infer_trained_model(model_id=config_only, docs=docs[:1]))
    await rec(
        "err_no_capacity",
        lambda: no_retry.ml.start_trained_model_deployment(model_id=model, deployment_id=f"{model}-big", number_of_allocations=64),
    )
    await rec(
        "err_timeout",  # a text never seen (no cache hit) cannot be embedded within 1ms
        lambda: es.ml.infer_trained_model(
            model_id=model, docs=[{"text_field": f"{prefix} needs more than a millisecond " * 20}], timeout="1ms"
        ),
    )
    await rec("err_stop_missing", lambda: es.ml.stop_trained_model_deployment(model_id=f"{prefix}-nodep", allow_no_match=False))

    # stop: parameters in the body (these clients) and in the query (older clients)
    await rec(
        "stop_query",
        lambda: es.perform_request(
            "POST", f"/_ml/trained_models/{model}-low/deployment/_stop", params={"force": "true", "allow_no_match": "false"},
            headers={"accept": "application/json"},
        ),
    )
    await rec("stop_body", lambda: es.ml.stop_trained_model_deployment(model_id=model, force=True, allow_no_match=True))
    await rec("stats_after_stop", lambda: es.ml.get_trained_models_stats(model_id=model))
    await rec("delete", lambda: es.ml.delete_trained_model(model_id=model, force=True, timeout="30s"))
    await rec("delete_config_only", lambda: es.ml.delete_trained_model(model_id=config_only))
    await rec("get_deleted", lambda: es.ml.get_trained_models(model_id=model, allow_no_match=False))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("sync", "async"), required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()
    warnings.simplefilter("error", ElasticsearchWarning)  # a server's Warning header fails the step
    cls = Elasticsearch if args.mode == "sync" else AsyncElasticsearch
    auth = {"api_key": args.api_key} if args.api_key else {}
    es = cls(args.url, request_timeout=120, **auth)
    compressed = cls(args.url, request_timeout=120, http_compress=True, **auth)
    no_retry = es.options(max_retries=0)
    rec = Recorder()
    try:
        await scenario(es, compressed, no_retry, rec, args.prefix, args.model_dir)
    finally:
        for client in (es, compressed):
            closed = client.close()
            if inspect.isawaitable(closed):
                await closed
    print(json.dumps({"client": elasticsearch.__versionstr__, "mode": args.mode, "class": cls.__name__, "steps": rec.steps}))


if __name__ == "__main__":
    asyncio.run(main())
