"""A bounded property-based fuzz run of a live gateway with docs/openapi.yaml (schemathesis):
every operation, data that fits the schema and data that does not, auth on. Not one answer is
a 5xx, the gateway is alive afterwards, and its memory did not grow.

The run is deterministic (``derandomize``: the same cases in the same order every time) and
bounded: a warm-up round, then EXAMPLES per operation and mode (about 1,000 requests), cut
short on a slow machine after BUDGET_S; no shrinking (a failure is reported as found)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import LocalCluster, http, local_cluster

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
BOOTSTRAP = "fuzz-boot:fuzz-secret-0123456789"
AUTH = {"Authorization": "ApiKey " + base64.b64encode(BOOTSTRAP.encode()).decode()}
EXAMPLES = 12
BUDGET_S = 55.0  # past this, the remaining operations get their warm-up round only
MAX_RSS_GROWTH_BYTES = 48 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def gateway(redis_url: str) -> Iterator[LocalCluster]:
    env = {"INFERQ_AUTH": "on", "INFERQ_BOOTSTRAP_API_KEY": BOOTSTRAP, "INFERQ_BODY_TIMEOUT_S": "5"}
    with local_cluster(redis_url, nodes=(), env=env) as running:
        yield running


def seed(cluster: LocalCluster) -> None:
    """A stored model (no definition) so that id-taking operations reach past the 404."""
    import json
    import urllib.request

    config = {"model_type": "pytorch", "inference_config": {"text_embedding": {}}, "input": {"field_names": ["text_field"]}}
    request = urllib.request.Request(
        cluster.url + "/_ml/trained_models/fuzz-model", data=json.dumps(config).encode(), method="PUT",
        headers={"Content-Type": "application/json", **AUTH},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def test_fuzzing_the_api_finds_no_5xx_and_leaves_the_gateway_well(gateway: LocalCluster) -> None:
    import hypothesis
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from schemathesis import GenerationMode

    seed(gateway)
    pid = gateway.gateways[0].pid
    schema = schemathesis.openapi.from_path(str(SPEC))
    operations = [result.ok() for result in schema.get_all_operations()]
    session = requests.Session()
    sent: list[int] = []
    server_errors: list[str] = []
    unsendable = 0

    def call(case: Any) -> None:
        nonlocal unsendable
        try:
            response = case.call(base_url=gateway.url, session=session, headers=AUTH, timeout=30)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, ValueError, UnicodeError):
            unsendable += 1  # not a request an HTTP client can send
            return
        sent.append(response.status_code)
        if response.status_code >= 500:
            server_errors.append(f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:200]} -> "
                                 f"{response.status_code} {response.text[:300]}")

    warm = EXAMPLES // 5
    began = time.monotonic()
    baseline = 0
    for round_examples in (warm, EXAMPLES):
        for operation in operations:
            if round_examples != warm and time.monotonic() - began > BUDGET_S:
                break
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @hypothesis.settings(
                    max_examples=round_examples, deadline=None, derandomize=True, database=None,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                )
                @hypothesis.given(operation.as_strategy(generation_mode=mode))
                def run(case: Any) -> None:
                    call(case)

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    pass  # nothing of this operation can break its schema (e.g. GET / has no body)
        if round_examples == warm:  # the first round warms every path up; memory is measured after it
            baseline = rss_bytes(pid)
    elapsed_s = time.monotonic() - began
    grown = rss_bytes(pid) - baseline
    statuses = {code: sent.count(code) for code in sorted(set(sent))}
    print(f"fuzz: {len(sent)} requests ({unsendable} unsendable skipped) in {elapsed_s:.0f}s, statuses {statuses}, "
          f"{sum(1 for s in sent if s >= 500)} x 5xx, gateway RSS {grown / 2**20:+.1f} MiB after the warm-up")
    assert server_errors == []
    assert len(sent) >= 2 * len(operations)
    assert gateway.gateways[0].poll() is None
    status, body = http("GET", gateway.url + "/")
    assert status == 200 and body["version"]["number"]
    assert grown < MAX_RSS_GROWTH_BYTES
