from __future__ import annotations

import numpy as np
import pytest

from shared.errors import Conflict
from workers.tasks.scoring import softmax
from workers.tasks.text_classification import text_classification_result
from workers.tasks.zero_shot_classification import hypothesis, nli_positions, zero_shot_result

LABELS = ["NEGATIVE", "NEUTRAL", "POSITIVE"]


def test_text_classification_single_window() -> None:
    output = np.array([[0.1, 0.2, 2.0]])
    result = text_classification_result(output, LABELS, 2, "predicted_value", False)
    probabilities = softmax(output[0])
    assert result["predicted_value"] == "POSITIVE"
    assert result["prediction_probability"] == pytest.approx(probabilities[2])
    assert [c["class_name"] for c in result["top_classes"]] == ["POSITIVE", "NEUTRAL"]
    assert result["top_classes"][0]["class_score"] == result["top_classes"][0]["class_probability"]
    assert "is_truncated" not in result


def test_text_classification_without_top_classes_and_truncated() -> None:
    result = text_classification_result(np.array([[3.0, 0.0, 0.0]]), LABELS, 0, "label", True)
    assert result["label"] == "NEGATIVE"
    assert "top_classes" not in result
    assert result["is_truncated"] is True
    everything = text_classification_result(np.array([[3.0, 0.0, 0.0]]), LABELS, -1, "label", False)
    assert len(everything["top_classes"]) == 3


def test_text_classification_averages_window_probabilities() -> None:
    output = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = (softmax(output[0]) + softmax(output[1])) / 2
    result = text_classification_result(output, LABELS, 3, "v", False)
    assert [c["class_probability"] for c in result["top_classes"]] == pytest.approx(
        sorted(expected, reverse=True)
    )


def test_text_classification_label_count_mismatch() -> None:
    with pytest.raises(Conflict, match=r"Expected exactly \[3\] values"):
        text_classification_result(np.array([[1.0, 2.0]]), LABELS, 1, "v", False)


def test_zero_shot_single_label_softmax_over_entailment() -> None:
    entail, contra = nli_positions(["contradiction", "neutral", "Entailment"])
    assert (entail, contra) == (2, 0)
    output = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [3.0, 0.0, -1.0]])
    result = zero_shot_result(
        output, ["sport", "music", "news"], entail, contra, False, "predicted_value", False
    )
    expected = softmax(np.array([2.0, 1.0, -1.0]))
    assert result["predicted_value"] == "sport"
    assert [c["class_name"] for c in result["top_classes"]] == ["sport", "music", "news"]
    assert [c["class_probability"] for c in result["top_classes"]] == pytest.approx(list(expected))


def test_zero_shot_multi_label_is_per_label() -> None:
    output = np.array([[0.0, 0.0, 2.0], [1.0, 0.0, 1.0]])
    result = zero_shot_result(output, ["a", "b"], 2, 0, True, "v", False)
    scores = {c["class_name"]: c["class_probability"] for c in result["top_classes"]}
    assert scores["a"] == pytest.approx(softmax(np.array([2.0, 0.0]))[0])
    assert scores["b"] == pytest.approx(0.5)


def test_hypothesis_template() -> None:
    assert hypothesis("This example is {}.", "sport") == "This example is sport."
    assert hypothesis("{} or {}", "x") == "x or {}"
