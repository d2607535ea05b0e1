"""``gateway.inference_config`` (pure): the ``_inference`` bodies parsed and refused the way
Elasticsearch 9's inference plugin does, the result shapes, and the alias and started-deployment
choice of the cluster view."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import inference_config as ic
from gateway import inference_request as ir
from gateway.aliases_api import validate_alias
from gateway.start_params import parse_start, parse_update
from shared.cluster_view import ClusterView, DeploymentView
from shared.deployment_store import RouteStatus
from shared.errors import InferqError


def error_of(fn: Any, *args: Any) -> InferqError:
    with pytest.raises(InferqError) as caught:
        fn(*args)
    return caught.value


def test_endpoint_with_model_id() -> None:
    parsed = ic.parse_endpoint(
        "e", "any",
        {"task_type": "text_embedding", "service": "elasticsearch",
         "service_settings": {"model_id": "m", "num_threads": 2, "adaptive_allocations": {"enabled": True},
                              "similarity": "dot_product"}},
    )  # fmt: skip
    assert parsed.task_type == "text_embedding"
    assert parsed.chunking_settings == {"strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1}
    settings = parsed.settings
    assert (settings.model_id, settings.num_threads, settings.num_allocations) == ("m", 2, None)
    assert settings.adaptive_allocations == {"enabled": True} and settings.similarity == "dot_product"
    rendered = ic.render_service_settings(
        settings, "text_embedding", model_id="m", num_allocations=None, num_threads=2, deployment_id=None, dimensions=8
    )
    assert list(rendered) == ["num_threads", "model_id", "adaptive_allocations", "dimensions", "similarity", "element_type"]


def test_rerank_takes_no_chunking_settings_and_defaults_return_documents() -> None:
    body = {"service": "elasticsearch", "service_settings": {"model_id": "m", "num_allocations": 1, "num_threads": 1}}
    assert ic.parse_endpoint("e", "rerank", body).task_settings == {"return_documents": True}
    error = error_of(ic.parse_endpoint, "e", "rerank", body | {"chunking_settings": {"strategy": "none"}})
    assert (error.status, error.error_type) == (400, "status_exception")
    assert error.reason == (
        "Configuration contains settings [{chunking_settings={strategy=none}}] unknown to the [elasticsearch] service"
    )


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"model_id": "m", "num_threads": 0, "num_allocations": 1},
         "Validation Failed: 1: [service_settings] Invalid value [0]. [num_threads] must be a positive integer;"),
        ({"model_id": "m", "num_threads": "2", "num_allocations": 1},
         "Validation Failed: 1: field [num_threads] is not of the expected type. The value [2] cannot be converted to "
         "a [Integer];"),
        ({"model_id": "m", "num_threads": 1, "num_allocations": 1, "similarity": "manhattan"},
         "Validation Failed: 1: [service_settings] Invalid value [manhattan] received. [similarity] must be one of "
         "[cosine, dot_product, l2_norm];"),
        ({"model_id": "m", "num_threads": 1, "adaptive_allocations": {"enabled": True, "min_number_of_allocations": 3,
          "max_number_of_allocations": 2}},
         "Validation Failed: 1: [min_number_of_allocations] must not be larger than [max_number_of_allocations];"),
    ],
)  # fmt: skip
def test_service_settings_validation(settings: dict[str, Any], reason: str) -> None:
    error = error_of(ic.parse_endpoint, "e", "text_embedding", {"service": "elasticsearch", "service_settings": settings})
    assert (error.status, error.error_type, error.reason) == (400, "validation_exception", reason)


@pytest.mark.parametrize(
    ("chunking", "expected"),
    [
        ({"strategy": "sentence", "max_chunk_size": 20}, {"strategy": "sentence", "max_chunk_size": 20, "sentence_overlap": 1}),
        ({"strategy": "word", "max_chunk_size": 10, "overlap": 5}, {"strategy": "word", "max_chunk_size": 10, "overlap": 5}),
        ({"strategy": "none"}, {"strategy": "none"}),
    ],
)  # fmt: skip
def test_chunking_settings(chunking: dict[str, Any], expected: dict[str, Any]) -> None:
    assert ic.parse_chunking(chunking) == expected


@pytest.mark.parametrize(
    ("chunking", "error_type", "reason"),
    [
        ({"max_chunk_size": 20}, "illegal_argument_exception", "Can't generate Chunker without ChunkingStrategy provided"),
        ({"strategy": "paragraph"}, "illegal_argument_exception", "Invalid chunkingStrategy paragraph"),
        ({"strategy": "sentence", "max_chunk_size": 19}, "validation_exception",
         "Validation Failed: 1: [chunking_settings] Invalid value [19]. [max_chunk_size] must be a greater than or "
         "equal to [20];"),
        ({"strategy": "sentence", "max_chunk_size": 100, "sentence_overlap": 2}, "validation_exception",
         "Validation Failed: 1: sentence_overlap[2] must be either 0 or 1;"),
        ({"strategy": "word", "max_chunk_size": 100, "overlap": 51}, "validation_exception",
         "Validation Failed: 1: [chunking_settings] Invalid value [51]. [overlap] must be a less than or equal to [50];"),
    ],
)  # fmt: skip
def test_chunking_refusals(chunking: dict[str, Any], error_type: str, reason: str) -> None:
    error = error_of(ic.parse_chunking, chunking)
    assert (error.status, error.error_type, error.reason) == (400, error_type, reason)


def test_task_types() -> None:
    assert ic.resolve_task_type("any", "sparse_embedding") == "sparse_embedding"
    assert error_of(ic.resolve_task_type, "any", "any").reason == "task_type [any] is not valid type for inference"
    assert error_of(ic.parse_task_type, "embeddings").reason == "Unknown task_type [embeddings]"
    error = error_of(ic.model_task_type, "m", {"ner": {}}, "text_embedding")
    assert error.reason == "Deployed model [m] has type [ner] which does not map to any supported task types"


def test_inference_request() -> None:
    parsed = ir.parse_inference_request("rerank", {"input": "one", "query": "q", "top_n": 1, "timeout": "5s"})
    assert (parsed.inputs, parsed.query, parsed.top_n, parsed.timeout) == (["one"], "q", 1, "5s")
    error = error_of(ir.parse_inference_request, "sparse_embedding", {"input": ["a"], "input_type": "search"})
    assert error.reason == "Validation Failed: 1: Field [input_type] cannot be specified for task type [sparse_embedding];"
    assert ir.parse_inference_request("text_embedding", {"input": ["a"], "input_type": "ingest"}).inputs == ["a"]


def test_result_shapes() -> None:
    results = [{"predicted_value": 0.1}, {"predicted_value": 0.9}, {"predicted_value": 0.9}]
    ranked = ir.render_rerank(results, "predicted_value", ["a", "b", "c"], return_documents=True, top_n=2)
    assert ranked == {"rerank": [{"index": 1, "relevance_score": 0.9, "text": "b"}, {"index": 2, "relevance_score": 0.9, "text": "c"}]}
    assert ir.render_rerank(results, "predicted_value", ["a", "b", "c"], return_documents=False, top_n=9)["rerank"][2] == {
        "index": 0, "relevance_score": 0.1
    }  # fmt: skip
    sparse = ir.render_sparse_embedding([{"predicted_value": {"fox": 1.5}, "is_truncated": True}], "predicted_value")
    assert sparse == {"sparse_embedding": [{"is_truncated": True, "embedding": {"fox": 1.5}}]}


def test_alias_rules() -> None:
    validate_alias("current", "model-1")
    error = error_of(validate_alias, "model-1", "model-1")
    assert error.reason == (
        "Validation Failed: 1: model_alias [model-1] cannot equal model_id [model-1];2: Invalid model_alias; 'model-1' "
        "can contain lowercase alphanumeric (a-z and 0-9), hyphens or underscores; must start with alphanumeric and "
        "cannot end with numbers;"
    )


def test_adaptive_allocations_exclude_number_of_allocations() -> None:
    reason = "Validation Failed: 1: [number_of_allocations] cannot be set if adaptive allocations is enabled;"
    error = error_of(parse_start, "m", {"number_of_allocations": "2"}, {"adaptive_allocations": {"enabled": True}})
    assert (error.status, error.reason) == (400, reason)
    error = error_of(parse_update, {}, {"number_of_allocations": 2, "adaptive_allocations": {"enabled": True}})
    assert error.reason == reason
    params = parse_start("m", {}, {"adaptive_allocations": {"enabled": False}, "number_of_allocations": 2})
    assert params.number_of_allocations == 2
    defaults = parse_start("m", {}, {})
    assert (defaults.queue_capacity, defaults.timeout_ms) == (10_000, 30_000.0)


def _deployment(deployment_id: str, model_id: str, started: bool) -> DeploymentView:
    doc = {"deployment_id": deployment_id, "model_id": model_id, "targets": {"n": 1}, "assignment_state": "started",
           "task_parameters": {"queue_capacity": 10}}  # fmt: skip
    route = RouteStatus("started" if started else "starting", current_allocations=1 if started else 0)
    return DeploymentView(doc, {"n": route})


def test_view_prefers_started_deployments_and_resolves_aliases() -> None:
    view = ClusterView(aliases={"current": "m"})
    for deployment in (_deployment("a-waiting", "m", False), _deployment("b-started", "m", True)):
        view.deployments[deployment.deployment_id] = deployment
        view.by_model.setdefault("m", []).append(deployment.deployment_id)
    assert view.resolve("m") is view.deployments["b-started"]
    assert view.resolve("current") is view.deployments["b-started"]
    assert view.resolve("a-waiting") is view.deployments["a-waiting"]
    assert view.resolve("other") is None


def test_inference_privileges() -> None:
    from gateway.api_keys import action_allowed
    from gateway.auth import action_for

    post = action_for("POST", "/_inference/{task_type}/{inference_id}")
    put = action_for("PUT", "/_inference/{task_type}/{inference_id}")
    alias = action_for("PUT", "/_ml/trained_models/{model_id}/model_aliases/{model_alias}")
    assert action_allowed([["monitor_inference"]], post) and action_allowed([["monitor_inference"]], action_for("GET", "/_inference"))
    assert not action_allowed([["monitor_inference"]], put)
    assert action_allowed([["manage_inference"]], put) and action_allowed([["manage_inference"]], post)
    assert action_allowed([["manage_inference"]], action_for("DELETE", "/_inference/{inference_id}"))
    assert action_allowed([["manage_ml"]], alias) and not action_allowed([["monitor_ml"]], alias)
    assert not action_allowed([["monitor_ml"]], post)
