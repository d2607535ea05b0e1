"""zero_shot_classification: one (text, hypothesis) row per label, scored by the NLI entailment logit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.errors import BadRequest, Conflict
from workers.tasks.base import BaseTask, Prepared, effective_body, request_truncation
from workers.tasks.scoring import classification_result, row_vector, softmax
from workers.tokenization import Tokenization


def nli_positions(classification_labels: Sequence[str]) -> tuple[int, int]:
    """(entailment, contradiction) indices of the model's NLI labels."""
    lowered = [label.lower() for label in classification_labels]
    return lowered.index("entailment"), lowered.index("contradiction")


def hypothesis(template: str, label: str) -> str:
    return template.replace("{}", label, 1)


def zero_shot_result(
    output: np.ndarray,
    labels: Sequence[str],
    entailment: int,
    contradiction: int,
    multi_label: bool,
    results_field: str,
    truncated: bool,
) -> dict[str, Any]:
    """``output``: one row of NLI logits per label, in label order."""
    rows = [row_vector(row) for row in output]
    if len(rows) != len(labels):
        raise Conflict(
            f"Expected exactly [{len(labels)}] values in zero shot classification result; got [{len(rows)}]"
        )
    for row in rows:
        if row.shape[-1] != 3:
            raise Conflict(
                f"Expected exactly [3] values in inner zero shot classification result; got [{row.shape[-1]}]"
            )
    if multi_label:
        scores = np.array([softmax(np.array([row[entailment], row[contradiction]]))[0] for row in rows])
    else:
        scores = softmax(np.array([row[entailment] for row in rows]))
    return classification_result(labels, scores, len(labels), results_field, truncated)


class ZeroShotClassificationTask(BaseTask):
    name = "zero_shot_classification"

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared:
        body = effective_body(self.name, config)
        truncate, span = request_truncation(config)
        if span > -1:
            raise BadRequest("Unable to span zero-shot classification on long text input")
        labels = list(body.get("labels") or [])
        if not labels:
            raise BadRequest("zero_shot_classification requires non-empty [labels]")
        template = str(body.get("hypothesis_template", "This example is {}."))
        windows = []
        truncated = False
        for label in labels:
            pair = self.tokenizer.tokenize_pair(text, hypothesis(template, label), truncate=truncate, span=-1)
            windows.extend(pair.windows)
            truncated = truncated or pair.truncated
        return Prepared(text=text, config=body, tokenization=Tokenization(windows, truncated=truncated))

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        config = prepared.config
        entailment, contradiction = nli_positions(config["classification_labels"])
        return zero_shot_result(
            output,
            list(config["labels"]),
            entailment,
            contradiction,
            bool(config.get("multi_label", False)),
            config["results_field"],
            prepared.tokenization.truncated,
        )
