"""The official ``elasticsearch`` client, 8.x and 9.x, sync and async, drives the cluster unchanged.

Each (major, mode) runs ``tests/clients/es_driver.py`` once in a subprocess with that client's
pinned folder on its path (installed into ``.inferq/clients`` on first use): the whole model
lifecycle, ``filter_path``/``pretty``/``human``/``error_trace``, a gzip-compressing client,
percent-encoded ids, and the error cases. The tests below check what it recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clients import SAMPLE_TEXTS, assert_client_error, error, ok, write_model_files
from tests.clients.install import ensure, run_driver
from tests.cluster import LocalCluster, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow

COMBOS = [("es8", "sync"), ("es8", "async"), ("es9", "sync"), ("es9", "async")]


@pytest.fixture(scope="module")
def es_cluster(redis_url: str) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("node-1", 4)]) as running:
        yield running


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_embedding_model: Any) -> Path:
    return write_model_files(tiny_embedding_model, tmp_path_factory.mktemp("client-model"))


@pytest.fixture(scope="module")
def reference(es_cluster: LocalCluster, tiny_embedding_model: Any) -> list[list[float]]:
    """The same model uploaded by inferq's own importer: the embeddings the clients must get."""
    upload(es_cluster, "ref-emb", tiny_embedding_model)
    start(es_cluster, "ref-emb")
    status, body = infer(es_cluster, "ref-emb", list(SAMPLE_TEXTS))
    assert status == 200, body
    return [r["predicted_value"] for r in body["inference_results"]]


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{m}-{mode}" for m, mode in COMBOS])
def run(request: pytest.FixtureRequest, es_cluster: LocalCluster, model_dir: Path, reference: Any) -> dict[str, Any]:
    major, mode = request.param
    folders = ensure(major)
    result = run_driver(
        "tests.clients.es_driver",
        ["--url", es_cluster.url, "--mode", mode, "--model-dir", str(model_dir), "--prefix", f"{major}-{mode}"],
        folders,
    )
    assert result["client"].startswith(major[-1] + ".")
    assert result["class"] == ("Elasticsearch" if mode == "sync" else "AsyncElasticsearch")
    return result


def model_of(run: dict[str, Any]) -> str:
    return f"{run['client'][0] == '8' and 'es8' or 'es9'}-{run['mode']}-emb"


def test_no_client_side_failures(run: dict[str, Any]) -> None:
    """No product-check, serialization, connection or warning failure anywhere."""
    failures = {name: e for name, e in run["steps"].items() if "exception" in e}
    assert failures == {}


def test_every_response_has_product_header_and_json_type(run: dict[str, Any]) -> None:
    for name, entry in run["steps"].items():
        outcome = entry.get("error", entry)
        if "headers" not in outcome:
            continue
        assert outcome["headers"].get("x-elastic-product") == "Elasticsearch", name
        assert outcome["headers"].get("content-type", "").startswith("application/json"), name
    assert run["steps"]["ping"] == {"value": True}


def test_info(run: dict[str, Any]) -> None:
    body = ok(run, "info")
    assert body["version"]["number"].startswith("9.")
    assert body["cluster_name"] and body["tagline"] == "You Know, for Search"


def test_upload_and_get(run: dict[str, Any]) -> None:
    model = model_of(run)
    prefix = model.removesuffix("-emb")
    put = ok(run, "put_model")
    assert put["model_id"] == model and put["model_type"] == "pytorch"
    assert put["tags"] == ["client-test", prefix]
    assert put["description"] == "uploaded by the official client"
    config_only = ok(run, "put_config_only")
    assert config_only["platform_architecture"] == "linux-x86_64"
    assert config_only["prefix_strings"] == {"ingest": "passage: ", "search": "query: "}
    for part in range(3):
        assert ok(run, f"put_part_{part}") == {"acknowledged": True}
    assert ok(run, "put_vocabulary") == {"acknowledged": True}

    one = ok(run, "get_one")
    assert one["count"] == 1
    assert one["trained_model_configs"][0]["model_id"] == model
    assert one["trained_model_configs"][0]["fully_defined"] is True
    listed = {c["model_id"] for c in ok(run, "get_list")["trained_model_configs"]}
    assert listed == {model, f"{prefix}-cfg"}
    everything = {c["model_id"] for c in ok(run, "get_all")["trained_model_configs"]}
    assert {model, f"{prefix}-cfg", "ref-emb"} <= everything
    assert {c["model_id"] for c in ok(run, "get_none")["trained_model_configs"]} == everything
    assert "create_time" not in ok(run, "get_excluded")["trained_model_configs"][0]
    assert ok(run, "get_filtered") == {"count": 1, "trained_model_configs": [{"model_id": model}]}
    assert run["steps"]["get_ignored_404"]["status"] == 404


def test_percent_encoded_id_is_one_segment(run: dict[str, Any]) -> None:
    failure = error(run, "get_percent_encoded")
    assert failure["class"] == "NotFoundError"
    assert "[a b/c]" in failure["body"]["error"]["reason"]


def test_deploy_infer_update_clear(run: dict[str, Any], reference: list[list[float]]) -> None:
    model = model_of(run)
    assignment = ok(run, "start")["assignment"]
    params = assignment["task_parameters"]
    assert assignment["assignment_state"] == "started"
    assert params["deployment_id"] == model and params["model_id"] == model
    assert params["number_of_allocations"] == 1 and params["threads_per_allocation"] == 1
    assert params["queue_capacity"] == 100 and params["priority"] == "normal"
    assert params["cache_size"] == f"{10 * 1024 * 1024}b"
    low = ok(run, "start_low_priority")["assignment"]
    assert low["task_parameters"]["priority"] == "low"
    assert low["task_parameters"]["deployment_id"] == f"{model}-low"

    vectors = [r["predicted_value"] for r in ok(run, "infer")["inference_results"]]
    assert np.allclose(vectors, reference, atol=1e-6)
    assert np.allclose(ok(run, "infer_with_config")["inference_results"][0]["predicted_value"], reference[0], atol=1e-6)
    assert np.allclose(ok(run, "infer_low")["inference_results"][0]["predicted_value"], reference[0], atol=1e-6)
    gzip_vectors = [r["predicted_value"] for r in ok(run, "infer_gzip")["inference_results"]]
    assert np.allclose(gzip_vectors, reference[:2], atol=1e-6)
    filtered = ok(run, "infer_filtered")
    assert list(filtered) == ["inference_results"] and list(filtered["inference_results"][0]) == ["predicted_value"]

    stats = ok(run, "stats_one")
    assert stats["count"] >= 1
    deployments = {s["deployment_stats"]["deployment_id"] for s in stats["trained_model_stats"] if "deployment_stats" in s}
    assert model in deployments
    assert ok(run, "stats_all")["count"] >= stats["count"]
    updated = ok(run, "update")["assignment"]
    assert updated["task_parameters"]["number_of_allocations"] == 2
    assert ok(run, "clear_cache") == {"cleared": True}


@pytest.mark.parametrize(
    ("step", "exception", "status", "error_type", "reason_part"),
    [
        ("err_not_found", "NotFoundError", 404, "resource_not_found_exception", "-missing"),
        ("err_exists", "BadRequestError", 400, "resource_already_exists_exception", "already exists"),
        ("err_validation", "BadRequestError", 400, "action_request_validation_exception", "power of 2"),
        ("err_bad_enum", "BadRequestError", 400, "illegal_argument_exception", "URGENT"),
        ("err_conflict_delete", "ConflictError", 409, "status_exception", "currently deployed"),
        ("err_not_deployed", "ConflictError", 409, "status_exception", "must be deployed"),
        ("err_no_capacity", "ApiError", 429, "status_exception", "Could not start deployment"),
        ("err_timeout", "ApiError", 408, "status_exception", "timeout [1ms]"),
        ("err_stop_missing", "NotFoundError", 404, "resource_not_found_exception", "-nodep"),
    ],
)
def test_errors_are_the_clients_own_exceptions(
    run: dict[str, Any], step: str, exception: str, status: int, error_type: str, reason_part: str
) -> None:
    failure = error(run, step)
    assert_client_error(failure, exception, status, error_type, reason_part)
    assert failure["status_code"] == status and failure["message"] == error_type
    root = failure["body"]["error"]["root_cause"][0]
    assert reason_part in root["reason"]
    assert repr(root["reason"]) in failure["str"]  # the client's message shows the root cause


def test_stop_in_body_and_query_then_delete(run: dict[str, Any]) -> None:
    assert ok(run, "stop_query") == {"stopped": True}
    assert ok(run, "stop_body") == {"stopped": True}
    after = ok(run, "stats_after_stop")
    assert all("deployment_stats" not in s for s in after["trained_model_stats"])
    assert ok(run, "delete") == {"acknowledged": True}
    assert ok(run, "delete_config_only") == {"acknowledged": True}
    assert error(run, "get_deleted")["class"] == "NotFoundError"


def test_security_endpoints_without_auth_answer_as_elasticsearch_does(es_cluster: LocalCluster) -> None:
    """INFERQ_AUTH off: no credentials needed, and the key APIs say security is disabled."""
    status, body = es_cluster.call("GET", "/_security/_authenticate")
    assert status == 500 and body["error"]["type"] == "security_exception"
    assert "INFERQ_AUTH=on" in body["error"]["reason"]
    status, body = es_cluster.call("POST", "/_security/api_key", {"name": "k"})
    assert status == 500 and body["error"]["type"] == "security_exception"
