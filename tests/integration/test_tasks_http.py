"""Every task type end to end through HTTP: upload through the REST API, deploy, ``_infer``,
and get exactly what the task layer computes directly with the same traced module (which
``test_tasks_reference.py`` checks against Hugging Face). The repeated request is a cache hit
that returns exactly what the miss returned."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shared.task_config import normalize_inference_config, resolve_request_config
from tests.cluster import LocalCluster, local_cluster, start, upload
from workers.runtime import load_torchscript

pytestmark = pytest.mark.slow

TEXTS = [
    "  Elastic is headquartered in Mountain View, said Café 😀 中文  ",
    "John Smith and Maria Garcia were in London.",
    "naïve résumé 東京",
]
MASKED = ["Paris is the [MASK] of France.", "  naïve [MASK] 東京 😀 "]

CASES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("text_embedding", "bert", None),
    ("text_expansion", "bert", None),
    ("pass_through", "bert", None),
    ("ner", "bert", None),
    ("text_classification", "bert", {"text_classification": {"num_top_classes": 2}}),
    ("zero_shot_classification", "bert", {"zero_shot_classification": {"labels": ["sports", "music", "travel"]}}),
    ("fill_mask", "bert", {"fill_mask": {"num_top_classes": 3}}),
    ("question_answering", "bert", {"question_answering": {"question": "Where is Elastic?"}}),
    ("text_similarity", "bert", {"text_similarity": {"text": "Where is Elastic?"}}),
    ("ner", "roberta", None),
    ("text_classification", "xlm_roberta", None),
    ("text_embedding", "mpnet", None),
]


@pytest.fixture(scope="module")
def big_pair(redis_url: str) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("left", 8), ("right", 8)]) as running:
        yield running


def close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-4, atol=1e-5))
    return bool(a == b)


@pytest.mark.parametrize(("task_type", "tokenizer", "request_config"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_task_through_http(
    big_pair: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
    task_type: str,
    tokenizer: str,
    request_config: dict[str, Any] | None,
) -> None:
    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model
    from workers.tasks import build_task

    folder = build_tiny_model(task_type, tmp_path_factory.mktemp(task_type), tokenizer)
    traced = trace_hf_model(folder, task_type, max_sequence_length=64)
    model_id = f"{task_type.replace('_', '-')}-{tokenizer.replace('_', '-')}"
    upload(big_pair, model_id, traced)
    start(big_pair, model_id, "number_of_allocations=2")

    texts = MASKED if task_type == "fill_mask" else TEXTS
    if tokenizer != "bert" and task_type == "fill_mask":
        texts = [t.replace("[MASK]", "<mask>") for t in texts]
    body: dict[str, Any] = {"docs": [{"text_field": t} for t in texts]}
    if request_config is not None:
        body["inference_config"] = request_config
    status, miss = big_pair.call("POST", f"/_ml/trained_models/{model_id}/_infer", body)
    assert status == 200, miss

    config = normalize_inference_config(traced.config["inference_config"])
    task = build_task(config, traced.vocabulary)
    module = load_torchscript(traced.torchscript)
    effective = resolve_request_config(config, request_config)
    expected = [task.run(module, [task.prepare(t, effective)])[0] for t in texts]
    assert close(miss["inference_results"], expected), (miss["inference_results"], expected)

    status, hit = big_pair.call("POST", f"/_ml/trained_models/{model_id}/_infer", body)
    assert status == 200 and hit == miss
    status, stats = big_pair.call("GET", f"/_ml/trained_models/{model_id}/_stats")
    nodes = stats["trained_model_stats"][0]["deployment_stats"]["nodes"]
    assert sum(n.get("inference_cache_hit_count", 0) for n in nodes) == len(texts)
    assert big_pair.call("POST", f"/_ml/trained_models/{model_id}/deployment/_stop")[0] == 200
