"""``_inference`` endpoints, model aliases and the Elasticsearch 9 deployment rules on a real
cluster (one gateway, one worker): every result equals ``_infer``'s for the same texts, and
every refusal is Elasticsearch's status, type and message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import LocalCluster, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow

TEXTS = ["the quick brown fox", "a queue of documents"]
QUERY = "where is the fox?"


@pytest.fixture(scope="module")
def traced_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model

    traced = {}
    for task in ("text_embedding", "text_expansion", "text_similarity"):
        folder = build_tiny_model(task, tmp_path_factory.mktemp(f"tiny-{task}"))
        traced[task] = trace_hf_model(folder, task)
    return traced


@pytest.fixture(scope="module")
def solo(redis_url: str, traced_models: dict[str, Any]) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("node-1", 8)]) as running:
        upload(running, "emb", traced_models["text_embedding"])
        upload(running, "emb-two", traced_models["text_embedding"])
        upload(running, "elser", traced_models["text_expansion"])
        upload(running, "cross", traced_models["text_similarity"])
        yield running


def endpoint_body(model_id: str, **extra: Any) -> dict[str, Any]:
    settings = {"model_id": model_id, "num_allocations": 1, "num_threads": 1}
    return {"service": "elasticsearch", "service_settings": settings, **extra}


@pytest.fixture(scope="module")
def emb_endpoint(solo: LocalCluster) -> dict[str, Any]:
    put: dict[str, Any] = ok(solo, "PUT", "/_inference/text_embedding/emb-endpoint", endpoint_body("emb"))
    return put


@pytest.fixture(scope="module")
def elser_endpoint(solo: LocalCluster) -> dict[str, Any]:
    chunking = {"strategy": "word", "max_chunk_size": 100, "overlap": 20}
    body = endpoint_body("elser", chunking_settings=chunking)
    put: dict[str, Any] = ok(solo, "PUT", "/_inference/sparse_embedding/elser-endpoint", body)
    return put


@pytest.fixture(scope="module")
def cross_endpoint(solo: LocalCluster) -> dict[str, Any]:
    body = endpoint_body("cross", task_settings={"return_documents": False})
    put: dict[str, Any] = ok(solo, "PUT", "/_inference/rerank/cross-endpoint", body)
    return put


def ok(cluster: LocalCluster, method: str, path: str, body: Any = None) -> Any:
    status, answer = cluster.call(method, path, body)
    assert status == 200, (method, path, answer)
    return answer


def fails(cluster: LocalCluster, method: str, path: str, body: Any, status: int, error_type: str, reason: str) -> None:
    got, answer = cluster.call(method, path, body)
    assert got == status, answer
    assert answer["status"] == status
    assert answer["error"]["type"] == error_type, answer
    assert answer["error"]["reason"] == reason, answer
    assert answer["error"]["root_cause"][0]["reason"] == reason


def infer_results(cluster: LocalCluster, model_id: str, texts: list[str], **extra: Any) -> list[dict[str, Any]]:
    status, body = infer(cluster, model_id, texts, **extra)
    assert status == 200, body
    results: list[dict[str, Any]] = body["inference_results"]
    return results


def test_text_embedding_endpoint_starts_its_deployment(solo: LocalCluster, emb_endpoint: dict[str, Any]) -> None:
    put = emb_endpoint
    assert put["inference_id"] == "emb-endpoint" and put["task_type"] == "text_embedding"
    assert put["service"] == "elasticsearch"
    settings = put["service_settings"]
    assert list(settings) == ["num_allocations", "num_threads", "model_id", "dimensions", "similarity", "element_type"]
    assert settings["similarity"] == "cosine" and settings["element_type"] == "float" and settings["dimensions"] > 0
    assert put["chunking_settings"] == {"strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1}
    assert "task_settings" not in put
    # the deployment is the endpoint's: deployment id = inference id, queue_capacity ES 9's default
    stats = ok(solo, "GET", "/_ml/trained_models/emb/_stats")["trained_model_stats"]
    deployment = next(s["deployment_stats"] for s in stats if s.get("deployment_stats"))
    assert deployment["deployment_id"] == "emb-endpoint" and deployment["queue_capacity"] == 10_000

    answer = ok(solo, "POST", "/_inference/text_embedding/emb-endpoint", {"input": TEXTS})
    expected = [r["predicted_value"] for r in infer_results(solo, "emb-endpoint", TEXTS)]
    assert answer == {"text_embedding": [{"embedding": e} for e in expected]}
    assert len(expected[0]) == settings["dimensions"]
    # a single string is one input; the task-less route works too
    single = ok(solo, "POST", "/_inference/emb-endpoint", {"input": TEXTS[0]})
    assert single == {"text_embedding": [{"embedding": expected[0]}]}
    # input_type ingest goes through the bulk lane, search through the interactive one: same results
    for input_type in ("ingest", "search"):
        fresh = [f"{text} ({input_type})" for text in TEXTS]
        answer = ok(solo, "POST", "/_inference/text_embedding/emb-endpoint", {"input": fresh, "input_type": input_type})
        assert answer == {"text_embedding": [{"embedding": r["predicted_value"]} for r in infer_results(solo, "emb-endpoint", fresh)]}
    # one cache: _infer after the endpoint, and the endpoint again, were all answered from it
    entries = ok(solo, "GET", "/_ml/trained_models/emb-endpoint/_stats")["trained_model_stats"]
    stats = next(e["deployment_stats"] for e in entries if e["deployment_stats"]["deployment_id"] == "emb-endpoint")
    assert sum(n["inference_cache_hit_count"] for n in stats["nodes"]) >= len(TEXTS) + 1


def test_sparse_and_rerank_endpoints_equal_infer(
    solo: LocalCluster, elser_endpoint: dict[str, Any], cross_endpoint: dict[str, Any]
) -> None:
    sparse = ok(solo, "POST", "/_inference/sparse_embedding/elser-endpoint", {"input": TEXTS})
    expected = infer_results(solo, "elser-endpoint", TEXTS)
    assert sparse == {
        "sparse_embedding": [
            {"is_truncated": r.get("is_truncated", False), "embedding": r["predicted_value"]} for r in expected
        ]
    }
    got = ok(solo, "GET", "/_inference/sparse_embedding/elser-endpoint")["endpoints"][0]
    assert got["chunking_settings"] == {"strategy": "word", "max_chunk_size": 100, "overlap": 20}

    put = cross_endpoint
    assert put["task_settings"] == {"return_documents": False} and "chunking_settings" not in put
    docs = ["the fox is in the wood", "nothing to see", "a brown fox", "the quick brown fox"]
    scores = [
        r["predicted_value"]
        for r in infer_results(solo, "cross-endpoint", docs, inference_config={"text_similarity": {"text": QUERY}})
    ]
    ranking = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    ranked = ok(solo, "POST", "/_inference/rerank/cross-endpoint", {"input": docs, "query": QUERY})
    assert ranked == {"rerank": [{"index": i, "relevance_score": scores[i]} for i in ranking]}
    top = ok(
        solo, "POST", "/_inference/rerank/cross-endpoint",
        {"input": docs, "query": QUERY, "top_n": 2, "return_documents": True},
    )  # fmt: skip
    assert top == {"rerank": [{"index": i, "relevance_score": scores[i], "text": docs[i]} for i in ranking[:2]]}
    by_settings = ok(
        solo, "POST", "/_inference/cross-endpoint",
        {"input": docs, "query": QUERY, "task_settings": {"return_documents": True}},
    )  # fmt: skip
    assert [d["text"] for d in by_settings["rerank"]] == [docs[i] for i in ranking]


def test_get_lists_by_task_type(solo: LocalCluster) -> None:
    ok(solo, "PUT", "/_inference/text_embedding/emb-listed",
       {"service": "elasticsearch", "service_settings": {"model_id": "emb-two", "num_allocations": 1, "num_threads": 1}})  # fmt: skip
    everything = {e["inference_id"] for e in ok(solo, "GET", "/_inference")["endpoints"]}
    assert "emb-listed" in everything
    assert {e["inference_id"] for e in ok(solo, "GET", "/_inference/_all")["endpoints"]} == everything
    embeddings = ok(solo, "GET", "/_inference/text_embedding/_all")["endpoints"]
    assert embeddings and all(e["task_type"] == "text_embedding" for e in embeddings)
    one = ok(solo, "GET", "/_inference/emb-listed")["endpoints"]
    assert [e["inference_id"] for e in one] == ["emb-listed"]
    assert all(not k.startswith("_") for k in one[0])
    fails(solo, "GET", "/_inference/sparse_embedding/emb-listed", None, 400, "status_exception",
          "Requested task type [sparse_embedding] does not match the inference endpoint's task type [text_embedding]")  # fmt: skip
    fails(solo, "GET", "/_inference/nope", None, 404, "resource_not_found_exception", "Inference endpoint not found [nope]")
    fails(solo, "GET", "/_inference/bogus/emb-listed", None, 400, "status_exception", "Unknown task_type [bogus]")

    # DELETE: dry run keeps it; the endpoint's own deployment goes with it
    assert ok(solo, "DELETE", "/_inference/emb-listed?dry_run=true") == {
        "acknowledged": False, "pipelines": [], "indexes": []
    }  # fmt: skip
    fails(solo, "DELETE", "/_inference/rerank/emb-listed", None, 400, "status_exception",
          "Requested task type [rerank] does not match the inference endpoint's task type [text_embedding]")  # fmt: skip
    assert ok(solo, "DELETE", "/_inference/text_embedding/emb-listed") == {
        "acknowledged": True, "pipelines": [], "indexes": []
    }  # fmt: skip
    fails(solo, "GET", "/_inference/emb-listed", None, 404, "resource_not_found_exception",
          "Inference endpoint not found [emb-listed]")  # fmt: skip
    stats = ok(solo, "GET", "/_ml/trained_models/emb-two/_stats")["trained_model_stats"]
    assert all("deployment_stats" not in s for s in stats)


def test_endpoint_on_an_existing_deployment(solo: LocalCluster, emb_endpoint: dict[str, Any]) -> None:
    start(solo, "emb", "deployment_id=emb-shared&number_of_allocations=1")
    put = ok(solo, "PUT", "/_inference/text_embedding/on-shared",
             {"service": "elasticsearch", "service_settings": {"deployment_id": "emb-shared"}})  # fmt: skip
    settings = put["service_settings"]
    assert (settings["num_allocations"], settings["num_threads"], settings["model_id"], settings["deployment_id"]) == (
        1, 1, "emb", "emb-shared"
    )  # fmt: skip
    answer = ok(solo, "POST", "/_inference/text_embedding/on-shared", {"input": TEXTS})
    expected = [r["predicted_value"] for r in infer_results(solo, "emb-shared", TEXTS)]
    assert answer == {"text_embedding": [{"embedding": e} for e in expected]}

    # ES 9: the deployment an endpoint uses is stopped only with force; updates go through their owner
    fails(solo, "POST", "/_ml/trained_models/emb-shared/deployment/_stop", None, 409, "status_exception",
          "Cannot stop deployment [emb-shared] as it is used by inference endpoint [on-shared]; use force to stop "
          "the deployment")  # fmt: skip
    fails(solo, "PUT", "/_inference/text_embedding/on-shared/_update", {"service_settings": {"num_allocations": 2}},
          409, "status_exception",
          "Cannot update inference endpoint [on-shared] using model deployment [emb-shared]. The model deployment "
          "must be updated through the trained models API.")  # fmt: skip
    fails(solo, "POST", "/_ml/trained_models/emb-endpoint/deployment/_update", {"number_of_allocations": 2}, 409,
          "status_exception",
          "Cannot update deployment [emb-endpoint] as it was created by inference endpoint [emb-endpoint]. This model "
          "deployment must be updated through the inference API.")  # fmt: skip
    fails(solo, "POST", "/_ml/trained_models/emb-endpoint/deployment/_stop", None, 409, "status_exception",
          "Cannot stop deployment [emb-endpoint] as it was created by inference endpoint [emb-endpoint]; use force "
          "to stop the deployment")  # fmt: skip
    updated = ok(solo, "PUT", "/_inference/emb-endpoint/_update", {"service_settings": {"num_allocations": 2}})
    assert updated["service_settings"]["num_allocations"] == 2
    assert ok(solo, "GET", "/_inference/emb-endpoint")["endpoints"][0]["service_settings"]["num_allocations"] == 2
    # deleting the endpoint leaves a deployment it did not create; force stops it
    ok(solo, "DELETE", "/_inference/on-shared")
    stats = ok(solo, "GET", "/_ml/trained_models/emb/_stats")["trained_model_stats"]
    assert "emb-shared" in {s["deployment_stats"]["deployment_id"] for s in stats if "deployment_stats" in s}
    assert ok(solo, "POST", "/_ml/trained_models/emb-shared/deployment/_stop?force=true") == {"stopped": True}


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type", "reason"),
    [
        ("/_inference/text_embedding/x1", {"service": "openai", "service_settings": {}}, 400, "status_exception",
         "Unknown service [openai]"),
        ("/_inference/text_embedding/x1", {"service_settings": {"model_id": "emb"}}, 400, "status_exception",
         "Inference endpoint configuration is missing the [service] setting"),
        ("/_inference/x1", {"service": "elasticsearch", "service_settings": {"model_id": "emb"}}, 400,
         "status_exception", "model is missing required setting [task_type]"),
        ("/_inference/completion/x1", {"service": "elasticsearch", "service_settings": {"model_id": "emb"}}, 400,
         "status_exception", "The [elasticsearch] service does not support task type [completion]"),
        ("/_inference/text_embedding/x1", {"service": "elasticsearch", "task_type": "rerank",
         "service_settings": {"model_id": "emb"}}, 400, "status_exception",
         "Cannot resolve conflicting task_type parameter in the request URL [text_embedding] and the request body "
         "[rerank]"),
        ("/_inference/sparse_embedding/x1", {"service": "elasticsearch",
         "service_settings": {"model_id": "emb", "num_allocations": 1, "num_threads": 1}}, 400, "status_exception",
         "Deployed model [emb] with type [text_embedding] does not match the requested task type [sparse_embedding]"),
        ("/_inference/text_embedding/x1", {"service": "elasticsearch", "service_settings": {"num_threads": 1}}, 400,
         "illegal_argument_exception", "Error parsing service settings, model_id must be provided"),
        ("/_inference/text_embedding/x1", {"service": "elasticsearch", "service_settings": {"model_id": "emb"}}, 400,
         "validation_exception",
         "Validation Failed: 1: [service_settings] does not contain the required setting [num_threads];2: "
         "[service_settings] does not contain one of the required settings [num_allocations, adaptive_allocations];"),
        ("/_inference/text_embedding/x1", {"service": "elasticsearch",
         "service_settings": {"model_id": "emb", "num_allocations": 1, "num_threads": 1, "foo": 1}}, 400,
         "status_exception", "Configuration contains settings [{foo=1}] unknown to the [elasticsearch] service"),
        ("/_inference/text_embedding/x1", {"service": "elasticsearch",
         "service_settings": {"model_id": "missing", "num_allocations": 1, "num_threads": 1}}, 404,
         "resource_not_found_exception", "Could not find trained model [missing]"),
        ("/_inference/sparse_embedding/x1", {"service": "elasticsearch",
         "service_settings": {"deployment_id": "nowhere"}}, 404, "status_exception",
         "Cannot find deployment [nowhere]"),
        ("/_inference/text_embedding/emb-endpoint", {"service": "elasticsearch",
         "service_settings": {"model_id": "emb", "num_allocations": 1, "num_threads": 1}}, 400,
         "resource_already_exists_exception", "Inference endpoint [emb-endpoint] already exists"),
        ("/_inference/text_embedding/emb", {"service": "elasticsearch",
         "service_settings": {"model_id": "emb", "num_allocations": 1, "num_threads": 1}}, 400, "status_exception",
         "Inference endpoint IDs must be unique. Requested inference endpoint ID [emb] matches existing trained "
         "model ID(s) but must not."),
        ("/_inference/sparse_embedding/.elser-2-elasticsearch", {"service": "elasticsearch",
         "service_settings": {"model_id": "elser"}}, 400, "status_exception",
         "[.elser-2-elasticsearch] is a reserved inference ID. Cannot create a new inference endpoint with a "
         "reserved ID."),
    ],
)  # fmt: skip
def test_put_refusals(
    solo: LocalCluster, emb_endpoint: dict[str, Any], path: str, body: Any, status: int, error_type: str, reason: str
) -> None:
    fails(solo, "PUT", path, body, status, error_type, reason)


def test_inference_request_refusals(
    solo: LocalCluster, emb_endpoint: dict[str, Any], cross_endpoint: dict[str, Any]
) -> None:
    url = "/_inference/text_embedding/emb-endpoint"
    fails(solo, "POST", url, {"query": "q"}, 400, "action_request_validation_exception",
          "Validation Failed: 1: Field [input] cannot be null;")  # fmt: skip
    fails(solo, "POST", url, {"input": []}, 400, "action_request_validation_exception",
          "Validation Failed: 1: Field [input] cannot be an empty array;")  # fmt: skip
    fails(solo, "POST", url, {"input": ["a"], "top_n": 1}, 400, "action_request_validation_exception",
          "Validation Failed: 1: Field [top_n] cannot be specified for task type [text_embedding];")  # fmt: skip
    fails(solo, "POST", url, {"input": ["a"], "foo": 1}, 400, "x_content_parse_exception",
          "[1:2] [cluster:internal/xpack/inference] unknown field [foo]")  # fmt: skip
    fails(solo, "POST", "/_inference/rerank/cross-endpoint", {"input": ["a"]}, 400,
          "action_request_validation_exception",
          "Validation Failed: 1: Field [query] cannot be null for task type [rerank];")  # fmt: skip
    fails(solo, "POST", "/_inference/sparse_embedding/emb-endpoint", {"input": ["a"]}, 400, "status_exception",
          "Incompatible task_type, the requested type [sparse_embedding] does not match the model type "
          "[text_embedding]")  # fmt: skip


def test_model_aliases(solo: LocalCluster, emb_endpoint: dict[str, Any]) -> None:
    start(solo, "emb-two", "deployment_id=emb-two-dep")
    assert ok(solo, "PUT", "/_ml/trained_models/emb-two/model_aliases/current") == {"acknowledged": True}
    expected = infer_results(solo, "emb-two", TEXTS)
    assert infer_results(solo, "current", TEXTS) == expected
    got = ok(solo, "GET", "/_ml/trained_models/current")["trained_model_configs"]
    assert [c["model_id"] for c in got] == ["emb-two"] and got[0]["metadata"]["model_aliases"] == ["current"]
    stats = ok(solo, "GET", "/_ml/trained_models/current/_stats")["trained_model_stats"]
    assert [s["model_id"] for s in stats] == ["emb-two"]

    fails(solo, "PUT", "/_ml/trained_models/emb/model_aliases/current", None, 400, "status_exception",
          "cannot assign model_alias [current] to model_id [emb] as model_alias already refers to [emb-two]. Set "
          "parameter [reassign] to [true] if model_alias should be reassigned.")  # fmt: skip
    fails(solo, "PUT", "/_ml/trained_models/elser/model_aliases/current?reassign=true", None, 400,
          "status_exception",
          "cannot reassign model_alias [current] to model [elser] with inference config type [text_expansion] from "
          "model [emb-two] with type [text_embedding]")  # fmt: skip
    fails(solo, "PUT", "/_ml/trained_models/emb/model_aliases/emb-two", None, 400, "status_exception",
          "model_alias cannot be the same as an existing trained model_id")  # fmt: skip
    fails(solo, "PUT", "/_ml/trained_models/emb/model_aliases/ends-in-2", None, 400,
          "action_request_validation_exception",
          "Validation Failed: 1: Invalid model_alias; 'ends-in-2' can contain lowercase alphanumeric (a-z and 0-9), "
          "hyphens or underscores; must start with alphanumeric and cannot end with numbers;")  # fmt: skip
    fails(solo, "PUT", "/_ml/trained_models/nope/model_aliases/other", None, 404, "resource_not_found_exception",
          "Could not find trained model [nope]")  # fmt: skip
    # reassigned to a model whose deployment is started: _infer follows at once
    assert ok(solo, "PUT", "/_ml/trained_models/emb/model_aliases/current?reassign=true") == {"acknowledged": True}
    assert infer_results(solo, "current", TEXTS) == infer_results(solo, "emb", TEXTS)
    # an endpoint names the model by its alias
    put = ok(solo, "PUT", "/_inference/text_embedding/by-alias",
             {"service": "elasticsearch", "service_settings": {"model_id": "current", "num_allocations": 1,
                                                               "num_threads": 1}})  # fmt: skip
    assert put["service_settings"]["model_id"] == "current"
    ok(solo, "DELETE", "/_inference/by-alias")

    fails(solo, "DELETE", "/_ml/trained_models/emb-two/model_aliases/current", None, 409, "status_exception",
          "model_alias [current] does not refer to provided model_id [emb-two]")  # fmt: skip
    assert ok(solo, "DELETE", "/_ml/trained_models/emb/model_aliases/current") == {"acknowledged": True}
    fails(solo, "DELETE", "/_ml/trained_models/emb/model_aliases/current", None, 404, "status_exception",
          "model_alias [current] could not be found")  # fmt: skip
    fails(solo, "POST", "/_ml/trained_models/current/_infer", {"docs": [{"text_field": "x"}]}, 404,
          "resource_not_found_exception", "Could not find trained model [current]")  # fmt: skip


def test_es9_start_rules(solo: LocalCluster) -> None:
    fails(solo, "POST", "/_ml/trained_models/emb/deployment/_start?deployment_id=emb-adaptive&number_of_allocations=2",
          {"adaptive_allocations": {"enabled": True}}, 400, "action_request_validation_exception",
          "Validation Failed: 1: [number_of_allocations] cannot be set if adaptive allocations is enabled;")  # fmt: skip
    fails(solo, "POST", "/_ml/trained_models/emb/deployment/_start?deployment_id=emb-q&queue_capacity=100001", None,
          400, "action_request_validation_exception",
          "Validation Failed: 1: [queue_capacity] must be less than 100000;")  # fmt: skip
    fails(solo, "GET", "/_ml/trained_models/emb?include=nonsense", None, 400, "status_exception",
          "unknown [include] parameters [nonsense]. Valid options are [definition, definition_status, "
          "feature_importance_baseline, hyperparameters, total_feature_importance]")  # fmt: skip
    assert ok(solo, "GET", "/_ml/trained_models/emb?include=hyperparameters")["count"] == 1
    status, answer = solo.call("GET", "/_ml/trained_models/emb?include_model_definition=true")
    assert status == 400 and answer["error"]["type"] == "status_exception"
    status, answer = solo.call("DELETE", "/_ml/trained_models/emb?force=true&timeout=soon")
    assert status == 400 and answer["error"]["reason"].startswith("failed to parse setting [timeout] with value [soon]")
    assert ok(solo, "GET", "/_ml/trained_models/emb")["count"] == 1  # a bad timeout deletes nothing


def test_update_forwards_adaptive_allocations(solo: LocalCluster, cross_endpoint: dict[str, Any]) -> None:
    adaptive = {"enabled": True, "min_number_of_allocations": 1, "max_number_of_allocations": 2}
    updated = ok(solo, "PUT", "/_inference/rerank/cross-endpoint/_update", {"service_settings": {"adaptive_allocations": adaptive}})
    assert updated["service_settings"]["adaptive_allocations"] == adaptive
    entries = ok(solo, "GET", "/_ml/trained_models/cross/_stats")["trained_model_stats"]
    stats = next(e["deployment_stats"] for e in entries if e["deployment_stats"]["deployment_id"] == "cross-endpoint")
    assert stats["adaptive_allocations"] == adaptive
    fails(solo, "PUT", "/_inference/rerank/cross-endpoint/_update",
          {"service_settings": {"adaptive_allocations": {"enabled": True, "min_number_of_allocations": 3,
                                                         "max_number_of_allocations": 2}}},
          400, "validation_exception",
          "Validation Failed: 1: [min_number_of_allocations] must not be larger than [max_number_of_allocations];")  # fmt: skip
