from __future__ import annotations

import numpy as np
import pytest

from shared.errors import IllegalArgument
from shared.task_config import DEFAULT_NER_LABELS
from tests.unit.test_tokenization import bert
from workers.tasks.ner import IobTag, annotated_text, ner_result

LABELS = list(DEFAULT_NER_LABELS)  # O, B_MISC, I_MISC, B_PER, I_PER, B_ORG, I_ORG, B_LOC, I_LOC


def logits_for(tags: list[str], strength: float = 8.0) -> np.ndarray:
    """[seq, labels] logits where each position strongly prefers its tag (specials get "O")."""
    out = np.zeros((len(tags), len(LABELS)))
    for i, tag in enumerate(tags):
        out[i, LABELS.index(tag)] = strength
    return out


def run(text: str, tags: list[str], lower_case: bool = False, **settings: object) -> dict:
    tok = bert(**settings)
    tokenization = tok.tokenize(text)
    window = tokenization.windows[0]
    assert len(window) == len(tags) + 2
    output = logits_for(["O", *tags, "O"])[None]
    inner = tokenization.inner
    assert inner is not None
    return ner_result(
        text,
        tokenization.windows,
        output,
        inner.word_ids,
        inner.offsets,
        LABELS,
        lower_case,
        "predicted_value",
        tokenization.truncated,
    )


def test_entities_offsets_and_annotated_text() -> None:
    text = "Elastic is in Mountain View"
    result = run(text, ["B_ORG", "O", "O", "B_LOC", "I_LOC"])
    assert result["predicted_value"] == "[Elastic](ORG&Elastic) is in [Mountain View](LOC&Mountain+View)"
    entities = result["entities"]
    assert [(e["entity"], e["class_name"], e["start_pos"], e["end_pos"]) for e in entities] == [
        ("Elastic", "ORG", 0, 7),
        ("Mountain View", "LOC", 14, 27),
    ]
    assert all(0.99 < e["class_probability"] <= 1.0 for e in entities)
    assert "is_truncated" not in result


def test_lower_case_models_report_lower_case_entities() -> None:
    result = run("Elastic search", ["B_ORG", "I_ORG"], lower_case=True)
    assert result["entities"][0]["entity"] == "elastic search"
    assert result["predicted_value"] == "[Elastic search](ORG&Elastic+search)"


def test_beginning_tag_starts_a_new_entity_and_outside_ends_one() -> None:
    result = run("paris paris the paris", ["B_LOC", "B_LOC", "O", "I_LOC"])
    assert [(e["start_pos"], e["end_pos"]) for e in result["entities"]] == [(0, 5), (6, 11), (16, 21)]


def test_sub_tokens_are_averaged_into_one_word() -> None:
    text = "  unbelievable Café 😀 中文  "
    # un ##believ ##able | cafe | 😀 | 中 | 文 ; two of three sub-tokens say PER
    tags = ["B_PER", "B_PER", "O", "B_ORG", "O", "B_LOC", "I_LOC"]
    result = run(text, tags)
    entities = result["entities"]
    assert [(text[e["start_pos"] : e["end_pos"]], e["class_name"]) for e in entities] == [
        ("unbelievable", "PER"),
        ("Café", "ORG"),
        ("中文", "LOC"),
    ]
    # a word's probability is the mean of its sub-tokens' probability of the winning tag
    assert entities[0]["class_probability"] == pytest.approx(2 / 3, abs=5e-3)
    assert (
        result["predicted_value"]
        == "  [unbelievable](PER&unbelievable) [Café](ORG&Café) 😀 [中文](LOC&中文)  "
    )


def test_no_entities() -> None:
    result = run("hello world", ["O", "O"])
    assert result == {"predicted_value": "hello world", "entities": []}


def test_truncated_flag() -> None:
    tok = bert(max_sequence_length=4)
    tokenization = tok.tokenize("paris is the capital")
    inner = tokenization.inner
    assert inner is not None
    output = logits_for(["O", "B_LOC", "O", "O"])[None]
    result = ner_result(
        "paris is the capital",
        tokenization.windows,
        output,
        inner.word_ids,
        inner.offsets,
        LABELS,
        False,
        "out",
        tokenization.truncated,
    )
    assert result["is_truncated"] is True
    assert result["out"] == "[paris](LOC&paris) is the capital"


def test_entities_are_merged_across_span_windows() -> None:
    text = "a b c a b c paris a b"  # "paris" only fits in the second window
    tok = bert(max_sequence_length=8, truncate="none", span=2)
    tokenization = tok.tokenize(text)
    windows = tokenization.windows
    assert len(windows) >= 2 and windows[0].first_token + len(windows[0]) - 2 <= 6
    inner = tokenization.inner
    assert inner is not None
    rows = []
    for window in windows:
        tags = ["O"]
        for k in range(len(window) - 2):
            token = inner.ids[window.first_token + k]
            tags.append("B_LOC" if tok.id_to_token(token) == "paris" else "O")
        tags.append("O")
        rows.append(logits_for(tags))
    width = max(len(r) for r in rows)
    output = np.stack([np.pad(r, ((0, width - len(r)), (0, 0))) for r in rows])
    result = ner_result(
        text, windows, output, inner.word_ids, inner.offsets, LABELS, False, "predicted_value", False
    )
    assert [(e["entity"], e["start_pos"], e["end_pos"]) for e in result["entities"]] == [("paris", 12, 17)]


def test_overlapping_tokens_take_the_most_central_window() -> None:
    text = "a b c a b c"
    tok = bert(max_sequence_length=6, truncate="none", span=2)
    tokenization = tok.tokenize(text)
    windows = tokenization.windows
    inner = tokenization.inner
    assert inner is not None
    # window 0 covers tokens 0-3, window 1 covers 2-5: token 2 sits at the edge of window 0's cut, and at
    # window 1's cut too; token 3 is window 1's second token (more central there than last in window 0)
    assert [(w.first_token, len(w) - 2) for w in windows][:2] == [(0, 4), (2, 4)]
    first = logits_for(["O", "O", "O", "O", "B_PER", "O"])  # says token 3 is PER
    second = logits_for(["O", "O", "B_ORG", "O", "O", "O"])  # says token 3 is ORG
    rows = [first, second] + [logits_for(["O"] * len(w)) for w in windows[2:]]
    width = max(len(r) for r in rows)
    output = np.stack([np.pad(r, ((0, width - len(r)), (0, 0))) for r in rows])
    result = ner_result(
        text, windows, output, inner.word_ids, inner.offsets, LABELS, False, "predicted_value", False
    )
    assert [(e["class_name"], e["start_pos"]) for e in result["entities"]] == [("ORG", 6)]


def test_iob_tags() -> None:
    assert IobTag.parse("B-PER").entity == "PER"
    assert IobTag.parse("i_loc").entity == "LOC"
    assert IobTag.parse("B-PER").is_beginning and not IobTag.parse("I-PER").is_beginning
    assert IobTag.parse("O").is_none
    with pytest.raises(IllegalArgument, match="is not an entity I-O-B tag"):
        IobTag.parse("PERSON")


def test_annotated_text_skips_unplaced_entities() -> None:
    entities = [
        {"start_pos": -1, "end_pos": -1, "class_name": "X"},
        {"start_pos": 0, "end_pos": 2, "class_name": "Y"},
    ]
    assert annotated_text("ab cd", entities) == "[ab](Y&ab) cd"
