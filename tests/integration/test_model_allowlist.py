"""No false positives: the models the test suite builds (every task type, every tokenizer family
of tests/tiny_models.py, traced as eland traces them) and the demo all-MiniLM-L6-v2 import pass
validation, and their loaded graphs pass the same allowlist. Here every task type with the bert
family and every other family with text embedding; test_tasks_reference.py and
test_tasks_http.py load every other combination they build through the same loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.model_validation import default_allowlist, validate_archive

pytestmark = pytest.mark.slow

TASK_TYPES = (
    "text_embedding", "pass_through", "fill_mask", "text_expansion", "ner", "text_classification",
    "zero_shot_classification", "text_similarity", "question_answering",
)  # fmt: skip
FAMILIES = ("bert", "mpnet", "roberta", "xlm_roberta")
USED: set[str] = set()


def check(torchscript: bytes) -> None:
    from workers.runtime import load_torchscript

    report = validate_archive(torchscript)
    assert report.operations <= default_allowlist().allowed
    USED.update(report.operations)
    load_torchscript(torchscript)  # the graph check, after loading


CASES = [(task_type, "bert") for task_type in TASK_TYPES] + [("text_embedding", f) for f in FAMILIES if f != "bert"]


@pytest.mark.parametrize(("task_type", "family"), CASES)
def test_every_tiny_model_passes(task_type: str, family: str, tmp_path: Path) -> None:
    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model

    folder = build_tiny_model(task_type, tmp_path, family)
    check(trace_hf_model(folder, task_type, max_sequence_length=32).torchscript)


def test_the_demo_model_passes(minilm_traced: Any) -> None:
    check(minilm_traced.torchscript)
    print(f"operations used by the suite's models: {len(USED)} of {len(default_allowlist().allowed)} allowed")
