"""``inferq cluster --demo-model`` (what ``make run`` runs): ready line, a working curl,
and Ctrl-C stops every process it started."""

from __future__ import annotations

import re
import time

import pytest

from tests.cluster import http
from tests.cluster_command import cluster_command
from tests.processes import alive, children_of

pytestmark = pytest.mark.slow


def test_cluster_command_serves_the_demo_model_and_stops_cleanly(redis_url: str) -> None:
    with cluster_command(redis_url, 14) as running:
        command = re.search(r"curl .*", running.ready_line)
        assert command is not None
        body = re.search(r"-d '(.*)'", running.ready_line)
        assert body is not None
        status, result = http("POST", f"{running.url}/_ml/trained_models/all-minilm-l6-v2/_infer", body.group(1).encode())
        assert status == 200 and len(result["inference_results"][0]["predicted_value"]) == 384
        children = children_of(running.proc.pid)
        assert len(children) >= 3  # gateway + 2 nodes (+ bulk worker)
        print(f"inferq cluster ready after {running.ready_s:.1f}s")
    assert running.proc.returncode == 0
    time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]
