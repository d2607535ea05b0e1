"""question_answering: best answer spans in the context, searched over every window.

The traced model returns ``stack([start_logits, end_logits])``, i.e. [2, rows, seq].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import BadRequest
from workers.tasks.base import BaseTask, Prepared, effective_body, request_truncation
from workers.tokenization import Window

_MASKED_LOGIT = -10000.0


@dataclass(frozen=True)
class Candidate:
    start_token: int  # index among the window's context tokens
    end_token: int
    score: float
    window: int


def normalize_with_mask(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    masked = np.where(allowed, np.asarray(values, dtype=np.float64), _MASKED_LOGIT)
    exp_sum = np.sum(np.exp(masked))
    return np.asarray(np.exp(masked - np.log(exp_sum)))


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    context_start: int,
    token_count: int,
    max_answer_length: int,
    gather: int,
    window: int,
) -> list[Candidate]:
    """Elasticsearch's topScores for one window (logits already cut to the window's length)."""
    index = np.arange(token_count)
    allowed = (index == 0) | ((index >= context_start) & (index < token_count - 1))
    starts = normalize_with_mask(start_logits[:token_count], allowed)
    ends = normalize_with_mask(end_logits[:token_count], allowed)
    starts[0] = ends[0] = 0.0  # CLS takes part in the softmax but is never an answer
    if gather == 1:
        best = Candidate(0, 0, 0.0, window)
        best_score = 0.0
        for i in range(context_start, token_count):
            if starts[i] == 0:
                continue
            for j in range(i, min(i + max_answer_length, token_count)):
                score = float(starts[i] * ends[j])
                if score > best_score:
                    best_score = score
                    best = Candidate(i - context_start, j - context_start, score, window)
        return [best]
    return [
        Candidate(i - context_start, j - context_start, float(starts[i] * ends[j]), window)
        for i in range(context_start, token_count)
        for j in range(i, min(i + max_answer_length, token_count))
    ]


def question_answering_result(
    context: str,
    windows: Sequence[Window],
    output: np.ndarray,
    num_top_classes: int,
    max_answer_length: int,
    results_field: str,
    truncated: bool,
) -> dict[str, Any]:
    """``output``: [rows, 2, seq] (start and end logits per window)."""
    gather = max(num_top_classes, 1)
    candidates: list[Candidate] = []
    for w, window in enumerate(windows):
        context_positions = [i for i, seq in enumerate(window.sequence_ids) if seq == 1]
        token_count = len(window)
        context_start = context_positions[0] if context_positions else token_count - 1
        candidates.extend(
            window_candidates(
                output[w][0], output[w][1], context_start, token_count, max_answer_length, gather, w
            )
        )
    # Best first; on equal scores the later candidate wins (as Lucene's bounded priority queue keeps it).
    ranked = sorted(enumerate(candidates), key=lambda ic: (-ic[1].score, -ic[0]))[:gather]
    answers = []
    for _, candidate in ranked:
        window = windows[candidate.window]
        context_offsets = [off for off, seq in zip(window.offsets, window.sequence_ids) if seq == 1]
        if not context_offsets:
            start_offset = end_offset = 0
        else:
            start_offset = context_offsets[min(candidate.start_token, len(context_offsets) - 1)][0]
            end_offset = context_offsets[min(candidate.end_token, len(context_offsets) - 1)][1]
        answers.append(
            {
                "answer": context[start_offset:end_offset],
                "score": candidate.score,
                "start_offset": start_offset,
                "end_offset": end_offset,
            }
        )
    best = answers[0]
    result: dict[str, Any] = {
        results_field: best["answer"],
        "start_offset": best["start_offset"],
        "end_offset": best["end_offset"],
    }
    if num_top_classes > 0:
        result["top_classes"] = answers
    result["prediction_probability"] = best["score"]
    if truncated:
        result["is_truncated"] = True
    return result


class QuestionAnsweringTask(BaseTask):
    name = "question_answering"
    row_axis = 1

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared:
        body = effective_body(self.name, config)
        question = body.get("question")
        if question is None:
            raise BadRequest("Question is required for question answering")
        truncate, span = request_truncation(config)
        tokenization = self.tokenizer.tokenize_pair(str(question), text, truncate=truncate, span=span)
        return Prepared(text=text, config=body, tokenization=tokenization)

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        config = prepared.config
        return question_answering_result(
            prepared.text,
            prepared.rows,
            output,
            int(config.get("num_top_classes", 0)),
            int(config.get("max_answer_length", 15)),
            config["results_field"],
            prepared.tokenization.truncated,
        )
