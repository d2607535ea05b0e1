from __future__ import annotations

import numpy as np

from tests.unit.test_tokenization import bert
from workers.tasks.question_answering import question_answering_result, window_candidates

QUESTION = "the capital"
CONTEXT = "  paris is the capital of france  "


def logits(window_len: int, start_at: dict[int, float], end_at: dict[int, float]) -> np.ndarray:
    out = np.zeros((2, window_len))
    for i, v in start_at.items():
        out[0, i] = v
    for i, v in end_at.items():
        out[1, i] = v
    return out


def test_best_answer_with_character_offsets() -> None:
    tokenization = bert().tokenize_pair(QUESTION, CONTEXT)
    window = tokenization.windows[0]
    # [CLS] the capital [SEP] paris is the capital of france [SEP]
    assert window.sequence_ids.index(1) == 4
    output = logits(len(window), {4: 9.0}, {4: 9.0})[None]
    result = question_answering_result(CONTEXT, tokenization.windows, output, 0, 15, "predicted_value", False)
    assert result["predicted_value"] == "paris"
    assert (result["start_offset"], result["end_offset"]) == (2, 7)
    assert CONTEXT[2:7] == "paris"
    assert "top_classes" not in result
    assert 0.5 < result["prediction_probability"] <= 1.0


def test_top_classes_sorted_and_multi_token_answers() -> None:
    tokenization = bert().tokenize_pair(QUESTION, CONTEXT)
    window = tokenization.windows[0]
    output = logits(len(window), {8: 6.0, 4: 5.0}, {9: 6.0, 4: 4.0})[None]  # "of france" then "paris"
    result = question_answering_result(CONTEXT, tokenization.windows, output, 3, 15, "answer", False)
    assert result["answer"] == "of france"
    top = result["top_classes"]
    assert len(top) == 3
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert top[0] == {
        "answer": "of france",
        "score": result["prediction_probability"],
        "start_offset": CONTEXT.index("of france"),
        "end_offset": CONTEXT.index("of france") + 9,
    }


def test_max_answer_length_limits_spans() -> None:
    tokenization = bert().tokenize_pair(QUESTION, CONTEXT)
    window = tokenization.windows[0]
    output = logits(len(window), {4: 9.0}, {9: 9.0})[None]
    long = question_answering_result(CONTEXT, tokenization.windows, output, 0, 15, "v", False)
    short = question_answering_result(CONTEXT, tokenization.windows, output, 0, 2, "v", False)
    assert long["v"] == "paris is the capital of france"
    assert len(short["v"].split()) <= 2


def test_question_tokens_and_cls_are_never_answers() -> None:
    start = np.array([50.0, 40.0, 40.0, 0.0, 1.0, 0.0])
    end = np.array([50.0, 40.0, 40.0, 0.0, 1.0, 0.0])
    # context starts at 4, token 5 is the final [SEP]
    (best,) = window_candidates(start, end, 4, 6, 15, 1, 0)
    assert (best.start_token, best.end_token) == (0, 0)
    assert best.score > 0


def test_answer_found_in_a_later_window() -> None:
    context = "a b c a b c paris a b"
    tok = bert(max_sequence_length=10, truncate="none", span=2)
    tokenization = tok.tokenize_pair(QUESTION, context)
    windows = tokenization.windows
    assert len(windows) >= 2
    rows = []
    for window in windows:
        starts, ends = {}, {}
        for i, (token_id, seq) in enumerate(zip(window.input_ids, window.sequence_ids)):
            if seq == 1 and tok.id_to_token(token_id) == "paris":
                starts[i] = ends[i] = 12.0
        rows.append(logits(len(window), starts, ends))
    width = max(r.shape[1] for r in rows)
    output = np.stack([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows])
    result = question_answering_result(context, windows, output, 2, 15, "predicted_value", False)
    assert result["predicted_value"] == "paris"
    assert (result["start_offset"], result["end_offset"]) == (12, 17)
