"""The official ``elasticsearch`` client's ``inference`` and model alias methods run unchanged:
``es.inference.put/put_elasticsearch/get/inference/text_embedding/sparse_embedding/rerank/
update/delete`` and ``es.ml.put/delete_trained_model_alias``, for all three task types, with
results equal to ``_infer``'s for the same texts (``tests/clients/es_inference_driver.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.clients import RERANK_DOCS, RERANK_QUERY, SAMPLE_TEXTS, assert_client_error, error, ok
from tests.clients.install import ensure, run_driver
from tests.cluster import LocalCluster, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow

DOCS, QUERY = list(RERANK_DOCS), RERANK_QUERY

COMBOS = [("es9", "sync"), ("es9", "async"), ("es8", "sync")]


@pytest.fixture(scope="module")
def es_cluster(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model

    with local_cluster(redis_url, nodes=[("node-1", 16)]) as running:
        for model_id, task in (("emb", "text_embedding"), ("expander", "text_expansion"), ("cross", "text_similarity")):
            traced = trace_hf_model(build_tiny_model(task, tmp_path_factory.mktemp(task)), task)
            upload(running, model_id, traced)
            start(running, model_id, f"deployment_id=ref-{model_id}")
        yield running


def infer_results(cluster: LocalCluster, deployment_id: str, texts: list[str], **extra: Any) -> list[dict[str, Any]]:
    status, body = infer(cluster, deployment_id, texts, **extra)
    assert status == 200, body
    results: list[dict[str, Any]] = body["inference_results"]
    return results


@pytest.fixture(scope="module")
def reference(es_cluster: LocalCluster) -> dict[str, Any]:
    """``_infer`` on the reference deployments: what every endpoint must answer."""
    texts = list(SAMPLE_TEXTS)
    scores = infer_results(es_cluster, "ref-cross", DOCS, inference_config={"text_similarity": {"text": QUERY}})
    return {
        "embeddings": [r["predicted_value"] for r in infer_results(es_cluster, "ref-emb", texts)],
        "sparse": infer_results(es_cluster, "ref-expander", texts),
        "scores": [r["predicted_value"] for r in scores],
    }


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{m}-{mode}" for m, mode in COMBOS])
def run(request: pytest.FixtureRequest, es_cluster: LocalCluster, reference: Any) -> dict[str, Any]:
    major, mode = request.param
    result = run_driver(
        "tests.clients.es_inference_driver",
        ["--url", es_cluster.url, "--mode", mode, "--prefix", f"{major}-{mode}"],
        ensure(major),
    )
    assert result["client"].startswith(major[-1] + ".")
    return result


def prefix_of(run: dict[str, Any]) -> str:
    return f"es{run['client'][0]}-{run['mode']}"


def test_no_client_side_failures(run: dict[str, Any]) -> None:
    assert {name: e for name, e in run["steps"].items() if "exception" in e} == {}


def test_put_and_get(run: dict[str, Any]) -> None:
    prefix = prefix_of(run)
    emb = ok(run, "put_text_embedding")
    assert emb["inference_id"] == f"{prefix}-emb" and emb["task_type"] == "text_embedding"
    assert emb["service_settings"]["model_id"] == "emb" and emb["service_settings"]["dimensions"] > 0
    sparse = ok(run, "put_sparse_embedding")
    assert sparse["chunking_settings"] == {"strategy": "sentence", "max_chunk_size": 100, "sentence_overlap": 0}
    assert ok(run, "put_rerank")["task_settings"] == {"return_documents": True}
    assert ok(run, "get_one") == {"endpoints": [emb]}
    assert ok(run, "get_typed") == {"endpoints": [sparse]}
    listed = {e["inference_id"] for e in ok(run, "get_all")["endpoints"]}
    assert {f"{prefix}-emb", f"{prefix}-sparse", f"{prefix}-rerank"} <= listed
    assert {e["task_type"] for e in ok(run, "get_all_of_type")["endpoints"]} == {"rerank"}


def test_results_equal_infer(run: dict[str, Any], reference: dict[str, Any]) -> None:
    for step in ("infer_text_embedding", "text_embedding"):
        vectors = [e["embedding"] for e in ok(run, step)["text_embedding"]]
        assert np.allclose(vectors, reference["embeddings"], atol=1e-6), step
    for step in ("infer_sparse_embedding", "sparse_embedding"):
        got = ok(run, step)["sparse_embedding"]
        assert [g["is_truncated"] for g in got] == [bool(r.get("is_truncated")) for r in reference["sparse"]]
        for g, r in zip(got, reference["sparse"], strict=True):
            assert g["embedding"].keys() == r["predicted_value"].keys()
            assert np.allclose(list(g["embedding"].values()), list(r["predicted_value"].values()), atol=1e-5)
    scores = reference["scores"]
    ranking = sorted(range(len(DOCS)), key=lambda i: (-scores[i], i))
    for step in ("infer_rerank", "rerank"):
        ranked = ok(run, step)["rerank"]
        assert [d["index"] for d in ranked] == ranking, step
        assert [d["text"] for d in ranked] == [DOCS[i] for i in ranking]
        assert np.allclose([d["relevance_score"] for d in ranked], [scores[i] for i in ranking], atol=1e-5)
    top = ok(run, "rerank_top")["rerank"]
    assert [d["index"] for d in top] == ranking[:2] and all("text" not in d for d in top)


def test_update(run: dict[str, Any]) -> None:
    assert ok(run, "update")["service_settings"]["num_allocations"] == 2
    assert ok(run, "get_updated")["endpoints"][0]["service_settings"]["num_allocations"] == 2


@pytest.mark.parametrize(
    ("step", "exception", "status", "error_type", "reason_part"),
    [
        ("err_missing", "NotFoundError", 404, "resource_not_found_exception", "Inference endpoint not found"),
        ("err_exists", "BadRequestError", 400, "resource_already_exists_exception", "already exists"),
        ("err_wrong_task", "BadRequestError", 400, "status_exception", "does not match the requested task type"),
        ("err_unknown_service", "BadRequestError", 400, "status_exception", "Unknown service [openai]"),
        ("err_incompatible", "BadRequestError", 400, "status_exception", "Incompatible task_type"),
        ("err_alias_taken", "BadRequestError", 400, "status_exception", "Set parameter [reassign] to [true]"),
        ("err_alias_reassign_type", "BadRequestError", 400, "status_exception", "with inference config type"),
        ("err_alias_gone", "NotFoundError", 404, "status_exception", "could not be found"),
        ("err_deleted", "NotFoundError", 404, "resource_not_found_exception", "Inference endpoint not found"),
    ],
)
def test_errors_are_the_clients_own_exceptions(
    run: dict[str, Any], step: str, exception: str, status: int, error_type: str, reason_part: str
) -> None:
    assert_client_error(error(run, step), exception, status, error_type, reason_part)


def test_aliases(run: dict[str, Any], reference: dict[str, Any]) -> None:
    assert ok(run, "put_alias") == {"acknowledged": True}
    vectors = [r["predicted_value"] for r in ok(run, "infer_alias")["inference_results"]]
    assert np.allclose(vectors, reference["embeddings"], atol=1e-6)
    config = ok(run, "get_alias")["trained_model_configs"][0]
    assert config["model_id"] == "emb" and f"{prefix_of(run)}-alias" in config["metadata"]["model_aliases"]
    assert ok(run, "delete_alias") == {"acknowledged": True}


def test_delete(run: dict[str, Any]) -> None:
    assert ok(run, "delete_dry_run") == {"acknowledged": False, "pipelines": [], "indexes": []}
    for step in ("delete_text_embedding", "delete_sparse_embedding", "delete_rerank"):
        assert ok(run, step) == {"acknowledged": True, "pipelines": [], "indexes": []}
    deployments = {
        s["deployment_stats"]["deployment_id"] for s in ok(run, "stats_after")["trained_model_stats"] if "deployment_stats" in s
    }
    assert f"{prefix_of(run)}-emb" not in deployments and "ref-emb" in deployments
