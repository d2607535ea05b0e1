from __future__ import annotations

import json
from typing import Any

import pytest

from shared.errors import ActionRequestValidation, BadRequest, XContentParseError
from shared.task_config import (
    TASK_TYPES,
    TOKENIZER_TYPES,
    normalize_inference_config,
    read_input_text,
    resolve_request_config,
    task_type,
    tokenizer_type,
)

BERT_DEFAULTS = {
    "do_lower_case": False,
    "with_special_tokens": True,
    "max_sequence_length": 512,
    "truncate": "first",
    "span": -1,
}


def test_constants_list_every_task_and_tokenizer() -> None:
    assert set(TASK_TYPES) == {
        "ner",
        "text_classification",
        "zero_shot_classification",
        "fill_mask",
        "question_answering",
        "text_similarity",
        "text_embedding",
        "text_expansion",
        "pass_through",
    }
    assert {"bert", "mpnet", "roberta", "xlm_roberta"} <= set(TOKENIZER_TYPES)


def test_eland_text_embedding_config_gets_defaults() -> None:
    config = normalize_inference_config(
        {
            "text_embedding": {
                "embedding_size": 16,
                "tokenization": {"bert": {"do_lower_case": True, "max_sequence_length": 32}},
            }
        }
    )
    assert config == {
        "text_embedding": {
            "tokenization": {"bert": {**BERT_DEFAULTS, "do_lower_case": True, "max_sequence_length": 32}},
            "results_field": "predicted_value",
            "embedding_size": 16,
        }
    }
    assert task_type(config) == "text_embedding"
    assert tokenizer_type(config) == "bert"


def test_missing_tokenization_defaults_to_bert() -> None:
    config = normalize_inference_config({"pass_through": {}})
    assert config["pass_through"]["tokenization"] == {"bert": BERT_DEFAULTS}


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("fill_mask", {"num_top_classes": 5, "mask_token": "[MASK]"}),
        ("question_answering", {"num_top_classes": 0, "max_answer_length": 15}),
        ("text_similarity", {"span_score_combination_function": "max"}),
        (
            "ner",
            {
                "classification_labels": [
                    "O",
                    "B_MISC",
                    "I_MISC",
                    "B_PER",
                    "I_PER",
                    "B_ORG",
                    "I_ORG",
                    "B_LOC",
                    "I_LOC",
                ]
            },
        ),
    ],
)
def test_task_defaults(task: str, expected: dict[str, Any]) -> None:
    body = normalize_inference_config({task: {}})[task]
    for key, value in expected.items():
        assert body[key] == value


def test_zero_shot_defaults_and_label_rule() -> None:
    body = normalize_inference_config(
        {"zero_shot_classification": {"classification_labels": ["Entailment", "neutral", "contradiction"]}}
    )["zero_shot_classification"]
    assert body["hypothesis_template"] == "This example is {}."
    assert body["multi_label"] is False
    assert "labels" not in body
    with pytest.raises(ActionRequestValidation) as err:
        normalize_inference_config(
            {"zero_shot_classification": {"classification_labels": ["yes", "no", "maybe"]}}
        )
    assert "must contain exactly the three values [contradiction, entailment, neutral]" in err.value.reason


def test_roberta_and_fill_mask_tokenizer_specifics() -> None:
    config = normalize_inference_config(
        {"fill_mask": {"tokenization": {"roberta": {"add_prefix_space": True}}}}
    )
    body = config["fill_mask"]
    assert body["tokenization"]["roberta"]["add_prefix_space"] is True
    assert body["mask_token"] == "<mask>"
    with pytest.raises(ActionRequestValidation, match="Mask token requested was"):
        normalize_inference_config({"fill_mask": {"mask_token": "[MASK]", "tokenization": {"roberta": {}}}})


@pytest.mark.parametrize(
    ("tokenization", "message"),
    [
        ({"max_sequence_length": 0}, "[max_sequence_length] must be positive"),
        ({"span": -2, "truncate": "none"}, "[span] must be non-negative"),
        (
            {"span": 600, "truncate": "none"},
            "[span] provided [600] must not be greater than [max_sequence_length]",
        ),
        ({"span": 16}, "[span] must not be provided when [truncate] is not [none]"),
    ],
)
def test_tokenization_rules(tokenization: dict[str, Any], message: str) -> None:
    with pytest.raises(ActionRequestValidation) as err:
        normalize_inference_config({"ner": {"tokenization": {"bert": tokenization}}})
    assert message in err.value.reason
    assert err.value.status == 400


def test_validation_messages_are_gathered() -> None:
    with pytest.raises(ActionRequestValidation) as err:
        normalize_inference_config(
            {
                "question_answering": {
                    "num_top_classes": -1,
                    "max_answer_length": 0,
                    "tokenization": {"bert": {"max_sequence_length": -5}},
                }
            }
        )
    assert len(err.value.messages) == 3
    assert err.value.reason.startswith("Validation Failed: 1: ")


def test_fill_mask_and_zero_shot_reject_span() -> None:
    with pytest.raises(ActionRequestValidation, match="does not support windowing"):
        normalize_inference_config({"fill_mask": {"tokenization": {"bert": {"truncate": "none", "span": 8}}}})


@pytest.mark.parametrize(
    "config",
    [
        {"ner": {}, "fill_mask": {}},
        {"sentiment": {}},
        {"ner": {"bogus": 1}},
        {"ner": {"tokenization": {"bert": {"bogus": 1}}}},
        {"ner": {"tokenization": {"gpt": {}}}},
        {"ner": {"tokenization": {"bert": {"truncate": "middle"}}}},
        {"ner": {"tokenization": {"bert": {"max_sequence_length": "long"}}}},
        {"question_answering": {"question": "why?"}},
        {"text_embedding": {"tokenization": {"bert": {"add_prefix_space": True}}}},
    ],
)
def test_unknown_or_malformed_fields_are_parse_errors(config: dict[str, Any]) -> None:
    with pytest.raises(XContentParseError) as err:
        normalize_inference_config(config)
    assert err.value.status == 400
    assert err.value.error_type == "x_content_parse_exception"


def test_vocabulary_on_creation_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"illegal setting \[vocabulary\] on inference model creation"):
        normalize_inference_config({"ner": {"vocabulary": {"index": "x"}}})


def test_text_classification_needs_two_labels() -> None:
    with pytest.raises(ActionRequestValidation, match="requires at least 2"):
        normalize_inference_config({"text_classification": {"classification_labels": ["only"]}})


def test_ner_labels_must_be_iob() -> None:
    with pytest.raises(ActionRequestValidation, match="is not an entity I-O-B tag"):
        normalize_inference_config({"ner": {"classification_labels": ["O", "PERSON"]}})


# ---- request overrides -------------------------------------------------------------------------


def _model(task: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return normalize_inference_config({task: body or {}})


def test_no_request_config_returns_model_config_copy() -> None:
    model = _model("text_embedding")
    effective = resolve_request_config(model, None)
    assert effective == model
    effective["text_embedding"]["results_field"] = "x"
    assert model["text_embedding"]["results_field"] == "predicted_value"


def test_overrides_results_field_and_tokenization() -> None:
    model = _model("ner", {"tokenization": {"bert": {"max_sequence_length": 128}}})
    effective = resolve_request_config(
        model, {"ner": {"results_field": "out", "tokenization": {"bert": {"truncate": "none", "span": 32}}}}
    )
    body = effective["ner"]
    assert body["results_field"] == "out"
    assert body["tokenization"]["bert"] == {
        **BERT_DEFAULTS,
        "max_sequence_length": 128,
        "truncate": "none",
        "span": 32,
    }
    json.dumps(effective, sort_keys=True)  # JSON-serializable


def test_request_tokenization_only_truncate_and_span() -> None:
    model = _model("ner")
    with pytest.raises(XContentParseError, match=r"unknown field \[max_sequence_length\]"):
        resolve_request_config(model, {"ner": {"tokenization": {"bert": {"max_sequence_length": 5}}}})
    with pytest.raises(BadRequest, match="does not match"):
        resolve_request_config(model, {"ner": {"tokenization": {"roberta": {"truncate": "none"}}}})
    with pytest.raises(ActionRequestValidation, match=r"\[span\] must not be provided"):
        resolve_request_config(model, {"ner": {"tokenization": {"bert": {"span": 5}}}})


def test_task_mismatch_names_both_tasks() -> None:
    with pytest.raises(BadRequest) as err:
        resolve_request_config(_model("ner"), {"fill_mask": {}}, model_id="my-model")
    assert (
        err.value.reason
        == "Trained model [my-model] is configured for task [ner] but called with task [fill_mask]"
    )
    assert err.value.status == 400


def test_task_fields_not_allowed_in_request() -> None:
    with pytest.raises(XContentParseError):
        resolve_request_config(_model("ner"), {"ner": {"classification_labels": ["O"]}})
    with pytest.raises(XContentParseError):
        resolve_request_config(_model("fill_mask"), {"fill_mask": {"mask_token": "[MASK]"}})


def test_question_answering_requires_question() -> None:
    model = _model("question_answering")
    with pytest.raises(ActionRequestValidation, match=r"\[question\] must not be null"):
        resolve_request_config(model, None)
    effective = resolve_request_config(
        model, {"question_answering": {"question": "Who?", "num_top_classes": 3, "max_answer_length": 4}}
    )
    assert effective["question_answering"]["question"] == "Who?"
    assert effective["question_answering"]["num_top_classes"] == 3
    assert effective["question_answering"]["max_answer_length"] == 4


def test_text_similarity_requires_text() -> None:
    model = _model("text_similarity")
    with pytest.raises(ActionRequestValidation, match=r"\[text\] must not be null"):
        resolve_request_config(model, {"text_similarity": {}})
    effective = resolve_request_config(
        model, {"text_similarity": {"text": "query", "span_score_combination_function": "MEAN"}}
    )
    assert effective["text_similarity"]["span_score_combination_function"] == "mean"


def test_zero_shot_labels_required_unless_model_has_them() -> None:
    labels = ["entailment", "neutral", "contradiction"]
    bare = _model("zero_shot_classification", {"classification_labels": labels})
    with pytest.raises(ActionRequestValidation, match=r"requires non-empty \[labels\]"):
        resolve_request_config(bare, None)
    effective = resolve_request_config(
        bare, {"zero_shot_classification": {"labels": ["a", "b"], "multi_label": True}}
    )
    assert effective["zero_shot_classification"]["labels"] == ["a", "b"]
    assert effective["zero_shot_classification"]["multi_label"] is True
    with_labels = _model("zero_shot_classification", {"classification_labels": labels, "labels": ["x", "y"]})
    assert resolve_request_config(with_labels, None)["zero_shot_classification"]["labels"] == ["x", "y"]


def test_resolution_is_deterministic() -> None:
    model = _model("fill_mask")
    first = json.dumps(resolve_request_config(model, {"fill_mask": {"num_top_classes": 2}}), sort_keys=True)
    second = json.dumps(resolve_request_config(model, {"fill_mask": {"num_top_classes": 2}}), sort_keys=True)
    assert first == second


# ---- input -------------------------------------------------------------------------------------


def test_read_input_text() -> None:
    assert read_input_text({"text_field": "hi"}, ["text_field"]) == "hi"
    assert read_input_text({"a": {"b": {"c": "deep"}}}, ["a.b.c"]) == "deep"
    assert read_input_text({"a.b": "flat"}, ["a.b"]) == "flat"
    assert read_input_text({"a": {"b.c": "mixed"}}, ["a.b.c"]) == "mixed"


def test_read_input_text_errors() -> None:
    with pytest.raises(BadRequest) as err:
        read_input_text({"other": "x"}, ["text_field"])
    assert err.value.reason == "Input field [text_field] does not exist in the source document"
    assert err.value.status == 400
    with pytest.raises(BadRequest) as err:
        read_input_text({"text_field": 42}, ["text_field"])
    assert err.value.reason == "Input value [42] for field [text_field] must be a string"


def test_text_classification_label_override_must_keep_the_count() -> None:
    model = _model("text_classification", {"classification_labels": ["a", "b"]})
    effective = resolve_request_config(model, {"text_classification": {"classification_labels": ["x", "y"]}})
    assert effective["text_classification"]["classification_labels"] == ["x", "y"]
    with pytest.raises(BadRequest, match=r"defined with \[2\] does not match the number in the update \[3\]"):
        resolve_request_config(model, {"text_classification": {"classification_labels": ["x", "y", "z"]}})
