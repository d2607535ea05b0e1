"""Pure numeric helpers shared by task post-processing (Elasticsearch's NlpHelpers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax(values: np.ndarray, axis: int = -1) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    shifted = values - np.max(values, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / np.sum(exp, axis=axis, keepdims=True))


def sorted_indices_desc(scores: np.ndarray) -> list[int]:
    """Indices by descending score; equal scores keep index order (a stable sort, as Java's)."""
    return [int(i) for i in sorted(range(len(scores)), key=lambda i: -float(scores[i]))]


def top_class_entries(
    labels: Sequence[str], scores: np.ndarray, order: Sequence[int]
) -> list[dict[str, Any]]:
    return [
        {"class_name": labels[i], "class_probability": float(scores[i]), "class_score": float(scores[i])}
        for i in order
    ]


def classification_result(
    labels: Sequence[str],
    probabilities: np.ndarray,
    num_top_classes: int,
    results_field: str,
    truncated: bool,
) -> dict[str, Any]:
    """ES's NlpClassificationInferenceResults: predicted label, probability, top classes (if any)."""
    order = sorted_indices_desc(probabilities)
    best = order[0]
    result: dict[str, Any] = {results_field: labels[best]}
    top = top_class_entries(labels, probabilities, order[:num_top_classes] if num_top_classes >= 0 else order)
    if top:
        result["top_classes"] = top
    result["prediction_probability"] = float(probabilities[best])
    if truncated:
        result["is_truncated"] = True
    return result


def row_vector(row_output: np.ndarray) -> np.ndarray:
    """A row's vector: 1-D output as is; for [seq, dim] the first position (ES reads [0][0])."""
    if row_output.ndim == 1:
        return row_output
    return np.asarray(row_output.reshape(-1, row_output.shape[-1])[0])
