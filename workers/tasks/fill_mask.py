"""fill_mask: the most likely vocabulary tokens for the one mask token of the input."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from shared.errors import IllegalArgument
from workers.tasks.base import BaseTask, Prepared, effective_body, request_truncation
from workers.tasks.scoring import softmax, sorted_indices_desc


def check_mask_count(text: str, mask_token: str) -> None:
    first = text.find(mask_token)
    if first < 0:
        raise IllegalArgument(f"no {mask_token} token could be found")
    if text.find(mask_token, first + len(mask_token)) >= 0:
        raise IllegalArgument(f"only one {mask_token} token should exist in the input")


def fill_mask_result(
    text: str,
    input_ids: Sequence[int],
    row_output: np.ndarray,
    mask_id: int,
    mask_token: str,
    decode: Callable[[int], str],
    vocabulary_size: int,
    num_top_classes: int,
    results_field: str,
    truncated: bool,
) -> dict[str, Any]:
    """``row_output``: [seq, vocab] logits of the (only) row."""
    positions = [i for i, token_id in enumerate(input_ids) if token_id == mask_id]
    if not positions:
        return {"warning": f"mask token id [{mask_id}] not found in the tokenization"}
    logits = row_output[positions[0]][:vocabulary_size]
    probabilities = softmax(logits)
    order = sorted_indices_desc(probabilities)
    best = order[0]
    predicted = decode(best)
    result: dict[str, Any] = {results_field: predicted}
    if num_top_classes > 0:
        result["top_classes"] = [
            {
                "class_name": decode(i),
                "class_probability": float(probabilities[i]),
                "class_score": float(probabilities[i]),
            }
            for i in order[:num_top_classes]
        ]
    result["prediction_probability"] = float(probabilities[best])
    result[f"{results_field}_sequence"] = text.replace(mask_token, predicted)
    if truncated:
        result["is_truncated"] = True
    return result


class FillMaskTask(BaseTask):
    name = "fill_mask"

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared:
        body = effective_body(self.name, config)
        check_mask_count(text, self.tokenizer.mask_token)
        truncate, span = request_truncation(config)
        return Prepared(
            text=text, config=body, tokenization=self.tokenizer.tokenize(text, truncate=truncate, span=span)
        )

    def decode_token(self, token_id: int) -> str:
        """A vocabulary token as text: no ``##`` continuation mark, byte-level/sentencepiece spaces removed."""
        token = self.tokenizer.id_to_token(token_id)
        if self.tokenizer.kind in ("bert", "bert_ja", "mpnet"):
            return token[2:] if token.startswith("##") and len(token) > 2 else token
        return self.tokenizer.decode([token_id]).strip()

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        mask_id = self.tokenizer.mask_id
        if mask_id is None:
            return {
                "warning": f"The token id for the mask token {self.tokenizer.mask_token} is not known in the "
                "tokenizer. Check the vocabulary contains the mask token"
            }
        return fill_mask_result(
            prepared.text,
            prepared.rows[0].input_ids,
            output[0],
            mask_id,
            self.tokenizer.mask_token,
            self.decode_token,
            len(self.tokenizer.vocabulary),
            int(prepared.config.get("num_top_classes", 5)),
            prepared.config["results_field"],
            prepared.tokenization.truncated,
        )
