"""text_embedding: the model's vector for the (first window of the) text."""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.tasks.base import BaseTask, Prepared
from workers.tasks.scoring import row_vector


def text_embedding_result(output: np.ndarray, results_field: str, truncated: bool) -> dict[str, Any]:
    """``output``: the doc's rows ([windows, dim] or [windows, seq, dim]); ES returns row 0's vector."""
    result: dict[str, Any] = {results_field: np.asarray(row_vector(output[0]), dtype=np.float64).tolist()}
    if truncated:
        result["is_truncated"] = True
    return result


class TextEmbeddingTask(BaseTask):
    name = "text_embedding"

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        return text_embedding_result(
            output, prepared.config["results_field"], prepared.tokenization.truncated
        )
