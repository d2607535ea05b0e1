"""Auth that works everywhere users turn it on: an invalidated key stops working on every
gateway within one second; the bootstrap key cannot be invalidated over the API (the answer
says why) and is retired by restarting with another; ``inferq cluster`` (what ``make run``
runs) with ``INFERQ_AUTH=on`` deploys the demo model and prints a curl that carries the key."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import LocalCluster, local_cluster
from tests.cluster_command import cluster_command

pytestmark = pytest.mark.slow

BOOTSTRAP = "ops-boot:ops-secret-0123456789"
BOOT = base64.b64encode(BOOTSTRAP.encode()).decode()
ML = "/_ml/trained_models"


def call(url: str, method: str, path: str, body: Any = None, *, key: str | None = BOOT) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"ApiKey {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def two_gateways(redis_url: str) -> Iterator[tuple[LocalCluster, str, str]]:
    env = {"INFERQ_AUTH": "on", "INFERQ_BOOTSTRAP_API_KEY": BOOTSTRAP}
    with local_cluster(redis_url, nodes=(), env=env) as cluster:
        second = cluster.start_gateway()
        yield cluster, cluster.url, f"http://127.0.0.1:{second}"


def test_an_invalidated_key_stops_working_on_every_gateway_within_one_second(two_gateways: tuple[LocalCluster, str, str]) -> None:
    _, first, second = two_gateways
    status, created = call(first, "POST", "/_security/api_key", {"name": "short-lived"})
    assert status == 200
    key = created["encoded"]
    for _ in range(3):  # verified and cached on both gateways
        assert call(first, "GET", ML, key=key)[0] == 200
        assert call(second, "GET", ML, key=key)[0] == 200
    status, answer = call(first, "DELETE", "/_security/api_key", {"ids": [created["id"]]})
    invalidated_at = time.monotonic()
    assert status == 200 and answer["invalidated_api_keys"] == [created["id"]]
    assert call(first, "GET", ML, key=key)[0] == 401  # the invalidating gateway: at once
    time.sleep(max(0.0, invalidated_at + 1.0 - time.monotonic()))
    assert call(second, "GET", ML, key=key)[0] == 401  # every other gateway: within one second


def test_the_bootstrap_key_cannot_be_invalidated_and_the_answer_says_so(two_gateways: tuple[LocalCluster, str, str]) -> None:
    _, first, second = two_gateways
    status, created = call(first, "POST", "/_security/api_key", {"name": "made-by-elastic"})
    assert status == 200
    status, answer = call(first, "DELETE", "/_security/api_key", {"username": "elastic"})
    assert status == 200
    assert created["id"] in answer["invalidated_api_keys"]
    assert "ops-boot" not in answer["invalidated_api_keys"] and answer["error_count"] == 1
    assert "the bootstrap API key [ops-boot] cannot be invalidated" in answer["error_details"][0]["reason"]
    assert "INFERQ_BOOTSTRAP_API_KEY" in answer["error_details"][0]["reason"]
    time.sleep(1.0)
    assert call(first, "GET", ML)[0] == 200 and call(second, "GET", ML)[0] == 200


def test_restarting_with_another_bootstrap_key_retires_the_old_one(two_gateways: tuple[LocalCluster, str, str]) -> None:
    cluster, first, _ = two_gateways
    new = "ops-boot-2:another-secret-0123456789"
    port = cluster.start_gateway_with({"INFERQ_BOOTSTRAP_API_KEY": new})
    third = f"http://127.0.0.1:{port}"
    assert call(third, "GET", ML, key=base64.b64encode(new.encode()).decode())[0] == 200
    assert call(third, "GET", ML)[0] == 401
    time.sleep(1.0)
    assert call(first, "GET", ML)[0] == 401


def test_the_local_cluster_with_auth_on_deploys_the_demo_and_its_curl_carries_the_key(redis_url: str) -> None:
    with cluster_command(
        redis_url, 13, "--no-bulk-worker", env={"INFERQ_AUTH": "on", "INFERQ_BOOTSTRAP_API_KEY": BOOTSTRAP}
    ) as running:
        header = re.search(r"-H 'Authorization: ApiKey ([^']+)'", running.ready_line)
        body = re.search(r"-d '(.*)'", running.ready_line)
        assert header is not None and body is not None, running.ready_line
        assert header.group(1) == BOOT
        payload = json.loads(body.group(1))
        status, result = call(running.url, "POST", f"{ML}/all-minilm-l6-v2/_infer", payload, key=header.group(1))
        assert status == 200 and len(result["inference_results"][0]["predicted_value"]) == 384
        assert call(running.url, "POST", f"{ML}/all-minilm-l6-v2/_infer", payload, key=None)[0] == 401
    assert running.proc.returncode == 0


def test_auth_on_without_a_bootstrap_key_says_what_is_missing() -> None:
    from inferq.local_cluster import cluster_api_key

    assert cluster_api_key({}) is None
    assert cluster_api_key({"INFERQ_AUTH": "on", "INFERQ_BOOTSTRAP_API_KEY": "a:b"}) == base64.b64encode(b"a:b").decode()
    with pytest.raises(SystemExit, match="INFERQ_BOOTSTRAP_API_KEY"):
        cluster_api_key({"INFERQ_AUTH": "on"})
