"""What a newcomer meets first, against a real gateway: ``inferq import`` refuses a full cluster
and a read-only key before it traces anything (the folder here is empty: any tracing would fail
with another message), ``_ml/info``, ``_has_privileges``, ``_stop`` of an unknown id as
Elasticsearch answers it, and a non-string input rendered without Python reprs."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferq.importer import import_model
from tests.cluster import LocalCluster, http, local_cluster, start, upload

pytestmark = pytest.mark.slow

ML = "/_ml/trained_models"
BOOTSTRAP = "boot-id:boot-secret-0123456789"


@pytest.fixture(scope="module")
def full(redis_url: str, tiny_embedding_model: Any) -> Iterator[LocalCluster]:
    """One node with one processor, held by a started deployment."""
    with local_cluster(redis_url, nodes=[("node-1", 1)]) as cluster:
        upload(cluster, "first", tiny_embedding_model)
        start(cluster, "first")
        yield cluster


def test_import_start_into_a_full_cluster_fails_before_tracing(
    full: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    rc = import_model(str(tmp_path), model_id="second", task_type="text_embedding", url=full.url, start=True)
    elapsed_s = time.monotonic() - began
    err = capsys.readouterr().err
    assert rc == 1
    assert "no processor is free for a new deployment: the worker nodes offer 1" in err, err
    assert "[first] 1" in err and "Nothing was traced or uploaded" in err
    assert f"{ML}/first/deployment/_update?number_of_allocations=1" in err
    assert full.call("GET", f"{ML}/second")[0] == 404
    print(f"import --start into a full cluster: message after {elapsed_s * 1000:.0f} ms")


def test_ml_info_reports_the_live_nodes(full: LocalCluster) -> None:
    status, body = full.call("GET", "/_ml/info")
    assert status == 200
    assert body["limits"]["total_ml_processors"] == 1
    assert body["limits"]["max_single_ml_node_processors"] == 1


def test_stop_of_an_unknown_deployment_answers_as_elasticsearch(full: LocalCluster) -> None:
    # TransportStopTrainedModelDeploymentAction: no assignment for the id → allow_no_match
    # (default true) answers {"stopped": true}; false → 404 missingModelDeployment
    assert full.call("POST", f"{ML}/never-there/deployment/_stop") == (200, {"stopped": True})
    status, body = full.call("POST", f"{ML}/never-there/deployment/_stop?allow_no_match=false")
    assert status == 404
    assert body["error"]["type"] == "resource_not_found_exception"
    assert body["error"]["reason"] == "No known model deployment with id [never-there]"


def test_a_list_input_is_rendered_without_python_reprs(full: LocalCluster) -> None:
    status, body = full.call("POST", f"{ML}/first/_infer", {"docs": [{"text_field": ["a", "b"]}]})
    assert status == 400, body
    assert body["error"]["reason"] == "Input value [[a, b]] for field [text_field] must be a string"


@pytest.fixture(scope="module")
def secured(redis_url: str) -> Iterator[LocalCluster]:
    env = {"INFERQ_AUTH": "on", "INFERQ_BOOTSTRAP_API_KEY": BOOTSTRAP}
    with local_cluster(redis_url, nodes=[], env=env) as cluster:
        yield cluster


def key(cluster: LocalCluster, privileges: list[str]) -> str:
    boot = base64.b64encode(BOOTSTRAP.encode()).decode()
    from inferq.importer import RestClient

    _, created = RestClient(cluster.url, api_key=boot).call(
        "POST", "/_security/api_key", {"name": "k", "role_descriptors": {"r": {"cluster": privileges}}}
    )
    return str(created["encoded"])


def test_a_read_only_key_is_refused_before_tracing(
    secured: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monitor = key(secured, ["monitor_ml"])
    rc = import_model(str(tmp_path), model_id="m", task_type="text_embedding", url=secured.url, api_key=monitor)
    err = capsys.readouterr().err
    assert rc == 1
    assert "may not cluster:admin/xpack/ml/inference/put" in err and "[manage_ml]" in err, err
    assert "Nothing was traced or uploaded" in err


def test_has_privileges_answers_per_privilege(secured: LocalCluster) -> None:
    from inferq.importer import RestClient

    client = RestClient(secured.url, api_key=key(secured, ["manage_ml"]))
    _, answer = client.call(
        "POST", "/_security/user/_has_privileges", {"cluster": ["manage_ml", "manage_security"]}
    )
    assert answer["has_all_requested"] is False
    assert answer["cluster"] == {"manage_ml": True, "manage_security": False}
    status, _ = http("POST", secured.url + "/_security/user/_has_privileges", {"cluster": ["manage_ml"]})
    assert status == 401
