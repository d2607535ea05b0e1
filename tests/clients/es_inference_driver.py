"""Drive the ``_inference`` API and model aliases with the official ``elasticsearch`` client
(whichever major is on the path), sync or async; print what happened as one JSON line.

Run by ``tests/integration/test_clients_es_inference.py`` after it uploaded the models ``emb``
(text_embedding), ``expander`` (text_expansion) and ``cross`` (text_similarity). Every call is
the client's own method, unchanged; the test makes the assertions.

    python -m tests.clients.es_inference_driver --url URL --mode sync|async --prefix P
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import warnings
from typing import Any

import elasticsearch
from elasticsearch import AsyncElasticsearch, Elasticsearch, ElasticsearchWarning

from tests.clients import RERANK_DOCS, RERANK_QUERY, SAMPLE_TEXTS
from tests.clients.es_driver import Recorder

QUERY = RERANK_QUERY
DOCS = list(RERANK_DOCS)


async def scenario(es: Any, rec: Recorder, prefix: str) -> None:
    inference, ml = es.inference, es.ml
    texts = list(SAMPLE_TEXTS)
    settings = {"num_allocations": 1, "num_threads": 1}
    emb, sparse, rerank = f"{prefix}-emb", f"{prefix}-sparse", f"{prefix}-rerank"

    # create: the generic put with a whole config, and the service-specific put_elasticsearch
    await rec(
        "put_text_embedding",
        lambda: inference.put(
            task_type="text_embedding", inference_id=emb,
            inference_config={"service": "elasticsearch", "service_settings": {"model_id": "emb", **settings}},
        ),
    )  # fmt: skip
    await rec(
        "put_sparse_embedding",
        lambda: inference.put_elasticsearch(
            task_type="sparse_embedding", elasticsearch_inference_id=sparse, service="elasticsearch",
            service_settings={"model_id": "expander", **settings},
            chunking_settings={"strategy": "sentence", "max_chunk_size": 100, "sentence_overlap": 0},
        ),
    )  # fmt: skip
    await rec(
        "put_rerank",
        lambda: inference.put(
            task_type="rerank", inference_id=rerank,
            inference_config={"service": "elasticsearch", "service_settings": {"model_id": "cross", **settings},
                              "task_settings": {"return_documents": True}},
        ),
    )  # fmt: skip

    # read
    await rec("get_one", lambda: inference.get(inference_id=emb))
    await rec("get_typed", lambda: inference.get(task_type="sparse_embedding", inference_id=sparse))
    await rec("get_all", lambda: inference.get())
    await rec("get_all_of_type", lambda: inference.get(task_type="rerank", inference_id="_all"))

    # infer: the generic method and the per-task ones
    await rec("infer_text_embedding", lambda: inference.inference(inference_id=emb, input=texts))
    await rec("text_embedding", lambda: inference.text_embedding(inference_id=emb, input=texts))
    await rec("infer_sparse_embedding", lambda: inference.inference(task_type="sparse_embedding", inference_id=sparse, input=texts))
    await rec("sparse_embedding", lambda: inference.sparse_embedding(inference_id=sparse, input=texts))
    await rec("infer_rerank", lambda: inference.inference(task_type="rerank", inference_id=rerank, input=DOCS, query=QUERY))
    await rec("rerank", lambda: inference.rerank(inference_id=rerank, input=DOCS, query=QUERY))
    if "top_n" in inspect.signature(inference.rerank).parameters:  # 9.x
        await rec("rerank_top", lambda: inference.rerank(inference_id=rerank, input=DOCS, query=QUERY, top_n=2, return_documents=False))
    else:  # 8.19 has no top_n argument yet: the same fields through its body argument
        top = {"input": DOCS, "query": QUERY, "top_n": 2, "return_documents": False}
        await rec("rerank_top", lambda: inference.rerank(inference_id=rerank, body=top))

    # update the endpoint's own deployment
    await rec(
        "update",
        lambda: inference.update(inference_id=emb, task_type="text_embedding",
                                 inference_config={"service_settings": {"num_allocations": 2}}),
    )  # fmt: skip
    await rec("get_updated", lambda: inference.get(inference_id=emb))

    # errors, as the client's own exception classes
    await rec("err_missing", lambda: inference.get(inference_id=f"{prefix}-missing"))
    await rec("err_exists", lambda: inference.put(
        task_type="text_embedding", inference_id=emb,
        inference_config={"service": "elasticsearch", "service_settings": {"model_id": "emb", **settings}},
    ))  # fmt: skip
    await rec("err_wrong_task", lambda: inference.put(
        task_type="sparse_embedding", inference_id=f"{prefix}-wrong",
        inference_config={"service": "elasticsearch", "service_settings": {"model_id": "emb", **settings}},
    ))  # fmt: skip
    await rec("err_unknown_service", lambda: inference.put(
        task_type="text_embedding", inference_id=f"{prefix}-openai",
        inference_config={"service": "openai", "service_settings": {"api_key": "k"}},
    ))  # fmt: skip
    await rec("err_incompatible", lambda: inference.inference(task_type="rerank", inference_id=emb, input=texts))

    # model aliases, resolved by _infer and GET
    alias = f"{prefix}-alias"
    await rec("put_alias", lambda: ml.put_trained_model_alias(model_id="emb", model_alias=alias))
    await rec("infer_alias", lambda: ml.infer_trained_model(model_id=alias, docs=[{"text_field": t} for t in texts]))
    await rec("get_alias", lambda: ml.get_trained_models(model_id=alias))
    await rec("err_alias_taken", lambda: ml.put_trained_model_alias(model_id="expander", model_alias=alias))
    await rec("err_alias_reassign_type", lambda: ml.put_trained_model_alias(model_id="expander", model_alias=alias, reassign=True))
    await rec("delete_alias", lambda: ml.delete_trained_model_alias(model_id="emb", model_alias=alias))
    await rec("err_alias_gone", lambda: ml.delete_trained_model_alias(model_id="emb", model_alias=alias))

    # delete: a dry run first, then each endpoint (its deployment goes with it)
    await rec("delete_dry_run", lambda: inference.delete(inference_id=emb, dry_run=True))
    await rec("delete_text_embedding", lambda: inference.delete(inference_id=emb))
    await rec("delete_sparse_embedding", lambda: inference.delete(task_type="sparse_embedding", inference_id=sparse, force=True))
    await rec("delete_rerank", lambda: inference.delete(inference_id=rerank))
    await rec("err_deleted", lambda: inference.inference(inference_id=emb, input=texts))
    await rec("stats_after", lambda: ml.get_trained_models_stats(model_id="emb"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("sync", "async"), required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    warnings.simplefilter("error", ElasticsearchWarning)
    cls = Elasticsearch if args.mode == "sync" else AsyncElasticsearch
    es = cls(args.url, request_timeout=120)
    rec = Recorder()
    try:
        await scenario(es, rec, args.prefix)
    finally:
        closed = es.close()
        if inspect.isawaitable(closed):
            await closed
    print(json.dumps({"client": elasticsearch.__versionstr__, "mode": args.mode, "steps": rec.steps}))


if __name__ == "__main__":
    asyncio.run(main())
