from __future__ import annotations

import numpy as np
import pytest

from shared.errors import IllegalArgument
from workers.tasks.fill_mask import check_mask_count, fill_mask_result
from workers.tasks.pass_through import pass_through_result
from workers.tasks.scoring import softmax
from workers.tasks.text_embedding import text_embedding_result
from workers.tasks.text_expansion import text_expansion_result
from workers.tasks.text_similarity import text_similarity_result

VOCAB = ["[PAD]", "[MASK]", "paris", "##s", "lyon", "a.b"]


def test_fill_mask_result() -> None:
    row = np.zeros((4, len(VOCAB)))
    row[2] = [0.0, 0.0, 5.0, 1.0, 3.0, 0.0]

    def decode(i: int) -> str:
        return VOCAB[i].removeprefix("##")

    result = fill_mask_result(
        "capital is [MASK]", [0, 7, 1, 0], row, 1, "[MASK]", decode, len(VOCAB), 2, "predicted_value", False
    )
    probabilities = softmax(row[2])
    assert result["predicted_value"] == "paris"
    assert result["predicted_value_sequence"] == "capital is paris"
    assert result["prediction_probability"] == pytest.approx(probabilities[2])
    assert [c["class_name"] for c in result["top_classes"]] == ["paris", "lyon"]
    none = fill_mask_result("[MASK]", [1], row[2:3], 1, "[MASK]", decode, len(VOCAB), 0, "v", False)
    assert "top_classes" not in none and none["v_sequence"] == "paris"


def test_fill_mask_needs_exactly_one_mask() -> None:
    check_mask_count("a [MASK] b", "[MASK]")
    with pytest.raises(IllegalArgument, match=r"no \[MASK\] token could be found"):
        check_mask_count("a b", "[MASK]")
    with pytest.raises(IllegalArgument, match=r"only one <mask> token should exist in the input"):
        check_mask_count("<mask> <mask>", "<mask>")


def test_text_embedding_takes_the_first_row() -> None:
    assert text_embedding_result(np.array([[1.0, 2.0], [3.0, 4.0]]), "v", False) == {"v": [1.0, 2.0]}
    # a [rows, seq, dim] output gives the first position of the first row
    assert text_embedding_result(np.arange(8.0).reshape(2, 2, 2), "v", True) == {
        "v": [0.0, 1.0],
        "is_truncated": True,
    }


def test_text_similarity_combinations() -> None:
    output = np.array([[1.0], [3.0]])
    assert text_similarity_result(output, "max", "v", False) == {"v": 3.0}
    assert text_similarity_result(output, "mean", "v", True) == {"v": 2.0, "is_truncated": True}


def test_text_expansion_keeps_positive_weights_sorted() -> None:
    output = np.array([[0.0, -1.0, 0.5, 2.0, 0.0, 1.0]])
    result = text_expansion_result(output, VOCAB, "predicted_value", False)
    assert list(result["predicted_value"].items()) == [("##s", 2.0), ("a__b", 1.0), ("paris", 0.5)]


def test_pass_through_cuts_padding() -> None:
    output = np.arange(12.0).reshape(1, 3, 4)
    assert pass_through_result(output, [2], "v", False) == {"v": [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]}
    assert pass_through_result(np.array([[1.0, 2.0]]), [2], "v", False) == {"v": [[1.0, 2.0]]}
