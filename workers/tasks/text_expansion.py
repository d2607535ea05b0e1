"""text_expansion (ELSER-style): vocabulary token → weight for every positive weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.tasks.base import BaseTask, Prepared
from workers.tasks.scoring import row_vector


def sanitized_token(token: str) -> str:
    # Elasticsearch's field names cannot hold dots: "." becomes "__".
    return token.replace(".", "__")


def text_expansion_result(
    output: np.ndarray, vocabulary: Sequence[str], results_field: str, truncated: bool
) -> dict[str, Any]:
    """``output``: the doc's rows; row 0's vector (or its first position) holds one weight per token."""
    vector = row_vector(output[0])
    weights = []
    for index in np.nonzero(vector > 0.0)[0]:
        token_id = int(index)
        token = vocabulary[token_id] if token_id < len(vocabulary) else str(token_id)
        weights.append((sanitized_token(token), float(np.float32(vector[token_id]))))
    weights.sort(key=lambda kv: -kv[1])  # stable: equal weights keep vocabulary order
    result: dict[str, Any] = {results_field: dict(weights)}
    if truncated:
        result["is_truncated"] = True
    return result


class TextExpansionTask(BaseTask):
    name = "text_expansion"

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        return text_expansion_result(
            output,
            self.tokenizer.vocabulary,
            prepared.config["results_field"],
            prepared.tokenization.truncated,
        )
