"""text_similarity: cross-encoder score of (config ``text``, input) over windows, combined max/mean."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.errors import InferenceFailed
from workers.tasks.base import BaseTask, Prepared, effective_body, request_truncation
from workers.tasks.scoring import row_vector


def text_similarity_result(
    output: np.ndarray, combination: str, results_field: str, truncated: bool
) -> dict[str, Any]:
    """``output``: one [1] score per window; ``combination`` is ``max`` or ``mean``."""
    scores = []
    for row in output:
        vector = row_vector(row)
        if vector.shape[-1] != 1:
            raise InferenceFailed(
                f"Expected exactly [1] value in text_similarity result; got [{vector.shape[-1]}]"
            )
        scores.append(float(vector[0]))
    score = max(scores) if combination == "max" else sum(scores) / len(scores)
    result: dict[str, Any] = {results_field: score}
    if truncated:
        result["is_truncated"] = True
    return result


class TextSimilarityTask(BaseTask):
    name = "text_similarity"

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared:
        body = effective_body(self.name, config)
        truncate, span = request_truncation(config)
        tokenization = self.tokenizer.tokenize_pair(str(body["text"]), text, truncate=truncate, span=span)
        return Prepared(text=text, config=body, tokenization=tokenization)

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        return text_similarity_result(
            output,
            str(prepared.config.get("span_score_combination_function", "max")),
            prepared.config["results_field"],
            prepared.tokenization.truncated,
        )
