"""text_embedding: the model's pooled vector for the (first window of the) text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from workers.tasks.base import BaseTask, Prepared, effective_body, request_truncation, with_truncation


def embedding_from_output(row_output: np.ndarray) -> list[float]:
    """A row's embedding: a 1-D output as is; for [seq, hidden] the first token (as ES reads [0][0])."""
    vector = row_output if row_output.ndim == 1 else row_output.reshape(-1, row_output.shape[-1])[0]
    return [float(x) for x in vector]


def text_embedding_result(output: np.ndarray, results_field: str, truncated: bool) -> dict[str, Any]:
    result: dict[str, Any] = {results_field: embedding_from_output(output[0])}
    if truncated:
        result["is_truncated"] = True
    return result


class TextEmbeddingTask(BaseTask):
    name = "text_embedding"

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared:
        body = effective_body(self.name, config)
        truncate, span = request_truncation(config)
        tokenization = self.tokenizer.tokenize(text, truncate=truncate, span=span)
        return Prepared(text=text, config=body, tokenization=tokenization)

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        return with_truncation(
            text_embedding_result(output, prepared.config["results_field"], False), prepared
        )
