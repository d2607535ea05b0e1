"""text_classification: softmax per window, averaged over windows; top classes by probability."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.errors import Conflict
from workers.tasks.base import BaseTask, Prepared
from workers.tasks.scoring import classification_result, row_vector, softmax


def text_classification_result(
    output: np.ndarray,
    labels: Sequence[str],
    num_top_classes: int,
    results_field: str,
    truncated: bool,
) -> dict[str, Any]:
    """``output``: the doc's rows, each [num_labels] logits (or [seq, num_labels]: first position)."""
    rows = [row_vector(row) for row in output]
    for row in rows:
        if row.shape[-1] != len(labels):
            raise Conflict(
                f"Expected exactly [{len(labels)}] values in text classification result; got [{row.shape[-1]}]"
            )
    probabilities = np.mean([softmax(row) for row in rows], axis=0)
    top = len(labels) if num_top_classes < 0 else num_top_classes
    return classification_result(labels, probabilities, top, results_field, truncated)


class TextClassificationTask(BaseTask):
    name = "text_classification"

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        config = prepared.config
        return text_classification_result(
            output,
            config["classification_labels"],
            int(config.get("num_top_classes", 0)),
            config["results_field"],
            prepared.tokenization.truncated,
        )
