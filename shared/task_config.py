"""NLP task configuration: validation at model creation, per-request overrides, input reading.

Pure Python (the gateway imports it). A model's ``inference_config`` is a one-key object naming
the task: ``{"<task>": {"tokenization": {"<tokenizer>": {...}}, ...task fields}}``.

- ``normalize_inference_config`` validates what ``PUT _ml/trained_models/<id>`` receives and
  returns it with every default filled in (what GET shows and what workers build tasks from).
- ``resolve_request_config`` applies an ``_infer`` request's ``inference_config`` overrides and
  returns the effective config in the same one-key shape; it is deterministic and
  JSON-serializable (it goes into the cache key and over the wire to the worker).
- ``read_input_text`` reads the input string from a request doc.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from shared.errors import (
    BadRequest,
    ValidationCollector,
    XContentParseError,
    render_value,
)

TASK_TYPES: tuple[str, ...] = (
    "ner",
    "text_classification",
    "zero_shot_classification",
    "fill_mask",
    "question_answering",
    "text_similarity",
    "text_embedding",
    "text_expansion",
    "pass_through",
)

TOKENIZER_TYPES: tuple[str, ...] = ("bert", "bert_ja", "mpnet", "roberta", "xlm_roberta", "deberta_v2")

TRUNCATE_VALUES: tuple[str, ...] = ("first", "second", "none", "balanced")
SPAN_SCORE_COMBINATION_FUNCTIONS: tuple[str, ...] = ("max", "mean")
DEFAULT_RESULTS_FIELD = "predicted_value"
DEFAULT_HYPOTHESIS_TEMPLATE = "This example is {}."
DEFAULT_NER_LABELS: tuple[str, ...] = (
    "O",
    "B_MISC",
    "I_MISC",
    "B_PER",
    "I_PER",
    "B_ORG",
    "I_ORG",
    "B_LOC",
    "I_LOC",
)
ZERO_SHOT_REQUIRED_LABELS: tuple[str, ...] = ("contradiction", "entailment", "neutral")

MASK_TOKENS: dict[str, str] = {
    "bert": "[MASK]",
    "bert_ja": "[MASK]",
    "mpnet": "<mask>",
    "roberta": "<mask>",
    "xlm_roberta": "<mask>",
    "deberta_v2": "[MASK]",
}

_COMMON_TOKENIZATION_FIELDS = (
    "do_lower_case",
    "with_special_tokens",
    "max_sequence_length",
    "truncate",
    "span",
)
_TOKENIZATION_FIELDS: dict[str, tuple[str, ...]] = {
    "bert": _COMMON_TOKENIZATION_FIELDS,
    "bert_ja": _COMMON_TOKENIZATION_FIELDS,
    "mpnet": _COMMON_TOKENIZATION_FIELDS,
    "roberta": _COMMON_TOKENIZATION_FIELDS + ("add_prefix_space",),
    "xlm_roberta": _COMMON_TOKENIZATION_FIELDS,
    "deberta_v2": _COMMON_TOKENIZATION_FIELDS,
}

# Task fields a model config may hold (besides "tokenization" and "vocabulary").
_MODEL_TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "ner": ("classification_labels", "results_field"),
    "text_classification": ("classification_labels", "num_top_classes", "results_field"),
    "zero_shot_classification": (
        "classification_labels",
        "hypothesis_template",
        "multi_label",
        "labels",
        "results_field",
    ),
    "fill_mask": ("num_top_classes", "results_field", "mask_token"),
    "question_answering": ("num_top_classes", "max_answer_length", "results_field"),
    "text_similarity": ("span_score_combination_function", "results_field"),
    "text_embedding": ("embedding_size", "results_field"),
    "text_expansion": ("results_field",),
    "pass_through": ("results_field",),
}

# Task fields an _infer request may override (besides "tokenization").
_REQUEST_TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "ner": ("results_field",),
    "text_classification": ("num_top_classes", "results_field", "classification_labels"),
    "zero_shot_classification": ("labels", "multi_label", "results_field"),
    "fill_mask": ("num_top_classes", "results_field"),
    "question_answering": ("question", "num_top_classes", "max_answer_length", "results_field"),
    "text_similarity": ("text", "span_score_combination_function", "results_field"),
    "text_embedding": ("results_field",),
    "text_expansion": ("results_field",),
    "pass_through": ("results_field",),
}

_REQUEST_TOKENIZATION_FIELDS = ("truncate", "span")


# ---- small readers -----------------------------------------------------------------------------


def _unknown_field(parser: str, field: str) -> XContentParseError:
    return XContentParseError(f"[1:2] [{parser}] unknown field [{field}]")


def _one_key(obj: Any, what: str) -> tuple[str, Any]:
    if not isinstance(obj, Mapping) or len(obj) != 1:
        raise XContentParseError(f"[1:2] [{what}] expected exactly one named object")
    ((name, value),) = obj.items()
    return str(name), value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect_int(parser: str, field: str, value: Any) -> int:
    if not _is_int(value):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [{field}]")
    return int(value)


def _expect_bool(parser: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [{field}]")
    return value


def _expect_str(parser: str, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [{field}]")
    return value


def _expect_str_list(parser: str, field: str, value: Any) -> list[str]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(isinstance(v, str) for v in value)
    ):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [{field}]")
    return [str(v) for v in value]


def task_type(config: Mapping[str, Any]) -> str:
    """The task name of a (normalized or raw) one-key inference config."""
    name, _ = _one_key(config, "inference_config")
    return name


def task_body(config: Mapping[str, Any]) -> Mapping[str, Any]:
    _, body = _one_key(config, "inference_config")
    return body if isinstance(body, Mapping) else {}


def tokenizer_type(config: Mapping[str, Any]) -> str:
    """The tokenizer name of a normalized inference config."""
    tokenization = task_body(config).get("tokenization") or {"bert": {}}
    name, _ = _one_key(tokenization, "tokenization")
    return name


def tokenization_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The tokenizer's settings (all defaults filled) of a normalized inference config."""
    tokenization = task_body(config).get("tokenization") or {"bert": {}}
    _, settings = _one_key(tokenization, "tokenization")
    return dict(settings)


# ---- tokenization ------------------------------------------------------------------------------


def _parse_tokenization(raw: Any, errors: ValidationCollector) -> dict[str, Any]:
    if raw is None:
        raw = {"bert": {}}
    name, body = _one_key(raw, "tokenization")
    if name not in TOKENIZER_TYPES:
        raise XContentParseError(f"[1:2] [tokenization] unknown tokenization type [{name}]")
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise XContentParseError(f"[1:2] [{name}_tokenization] expected an object")
    parser = f"{name}_tokenization"
    allowed = _TOKENIZATION_FIELDS[name]
    for field in body:
        if field not in allowed:
            raise _unknown_field(parser, str(field))

    do_lower_case = False
    if body.get("do_lower_case") is not None:
        do_lower_case = _expect_bool(parser, "do_lower_case", body["do_lower_case"])
    with_special_tokens = True
    if body.get("with_special_tokens") is not None:
        with_special_tokens = _expect_bool(parser, "with_special_tokens", body["with_special_tokens"])
    max_sequence_length = 512
    if body.get("max_sequence_length") is not None:
        max_sequence_length = _expect_int(parser, "max_sequence_length", body["max_sequence_length"])
    truncate_given = body.get("truncate")
    truncate = "first"
    if truncate_given is not None:
        truncate = _expect_str(parser, "truncate", truncate_given).lower()
        if truncate not in TRUNCATE_VALUES:
            raise XContentParseError(
                f"[1:2] [{parser}] failed to parse field [truncate]: No enum constant for [{truncate_given}]"
            )
    span = -1
    if body.get("span") is not None:
        span = _expect_int(parser, "span", body["span"])

    if max_sequence_length <= 0:
        errors.add("[max_sequence_length] must be positive")
    if span < 0 and span != -1:
        errors.add(
            "[span] must be non-negative to indicate span length or -1 to indicate no windowing should occur"
        )
    if max_sequence_length > 0 and span > max_sequence_length:
        errors.add(
            f"[span] provided [{span}] must not be greater than [max_sequence_length] "
            f"provided [{max_sequence_length}]"
        )
    if span != -1 and truncate != "none":
        errors.add("[span] must not be provided when [truncate] is not [none]")
    if name in ("roberta", "xlm_roberta") and do_lower_case:
        errors.add(f"unable to set [do_lower_case] to [true] for {name} tokenizer")

    settings: dict[str, Any] = {
        "do_lower_case": do_lower_case,
        "with_special_tokens": with_special_tokens,
        "max_sequence_length": max_sequence_length,
        "truncate": truncate,
        "span": span,
    }
    if name == "roberta":
        add_prefix_space = False
        if body.get("add_prefix_space") is not None:
            add_prefix_space = _expect_bool(parser, "add_prefix_space", body["add_prefix_space"])
        settings["add_prefix_space"] = add_prefix_space
    return {name: settings}


# ---- model config ------------------------------------------------------------------------------


def _is_iob_tag(label: str) -> bool:
    upper = label.upper()
    return upper == "O" or (len(upper) > 2 and upper[:2] in ("B_", "B-", "I_", "I-"))


def normalize_inference_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a model's ``inference_config`` (PUT time) and fill in every default."""
    if not isinstance(config, Mapping) or len(config) == 0:
        raise XContentParseError("[1:2] [inference_config] expected exactly one named object")
    if len(config) != 1:
        raise XContentParseError(
            "[1:2] [inference_config] expected exactly one task, found " + str(sorted(config))
        )
    name, body = next(iter(config.items()))
    if name not in TASK_TYPES:
        raise XContentParseError(f"[1:2] [inference_config] unknown field [{name}]")
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise XContentParseError(f"[1:2] [{name}] expected an object")
    if "vocabulary" in body:
        raise BadRequest("illegal setting [vocabulary] on inference model creation")
    allowed = _MODEL_TASK_FIELDS[name] + ("tokenization",)
    for field in body:
        if field not in allowed:
            raise _unknown_field(name, str(field))

    errors = ValidationCollector()
    tokenization = _parse_tokenization(body.get("tokenization"), errors)
    tok_name, tok = next(iter(tokenization.items()))
    out: dict[str, Any] = {"tokenization": tokenization}

    results_field = DEFAULT_RESULTS_FIELD
    if body.get("results_field") is not None:
        results_field = _expect_str(name, "results_field", body["results_field"])
    out["results_field"] = results_field

    if name == "ner":
        labels = list(DEFAULT_NER_LABELS)
        if body.get("classification_labels") is not None:
            labels = _expect_str_list(name, "classification_labels", body["classification_labels"])
        bad = [label for label in labels if not _is_iob_tag(label)]
        for label in bad:
            errors.add(f"the classification label [{label}] is not an entity I-O-B tag")
        out["classification_labels"] = labels
    elif name == "text_classification":
        labels_raw = body.get("classification_labels")
        labels_list = (
            _expect_str_list(name, "classification_labels", labels_raw) if labels_raw is not None else None
        )
        if labels_list is None or len(labels_list) < 2:
            errors.add(
                "[text_classification] requires at least 2 [classification_labels]; provided "
                + ("null" if labels_list is None else "[" + ", ".join(labels_list) + "]")
            )
        out["classification_labels"] = labels_list or []
        num_top = 0
        if body.get("num_top_classes") is not None:
            num_top = _expect_int(name, "num_top_classes", body["num_top_classes"])
        out["num_top_classes"] = num_top
    elif name == "zero_shot_classification":
        labels_raw = body.get("classification_labels")
        if labels_raw is None:
            errors.add("[classification_labels] must not be null")
            cls_labels: list[str] = []
        else:
            cls_labels = _expect_str_list(name, "classification_labels", labels_raw)
            required = "[" + ", ".join(ZERO_SHOT_REQUIRED_LABELS) + "]"
            if len(cls_labels) != 3:
                errors.add(f"[classification_labels] must contain exactly the three values {required}")
            else:
                bad = [c.lower() for c in cls_labels if c.lower() not in ZERO_SHOT_REQUIRED_LABELS]
                if bad or len({c.lower() for c in cls_labels}) != 3:
                    errors.add(
                        f"[classification_labels] must contain exactly the three values {required}. "
                        f"Invalid labels [{', '.join(bad)}]"
                    )
        out["classification_labels"] = cls_labels
        multi_label = False
        if body.get("multi_label") is not None:
            multi_label = _expect_bool(name, "multi_label", body["multi_label"])
        out["multi_label"] = multi_label
        template = DEFAULT_HYPOTHESIS_TEMPLATE
        if body.get("hypothesis_template") is not None:
            template = _expect_str(name, "hypothesis_template", body["hypothesis_template"])
        out["hypothesis_template"] = template
        if body.get("labels") is not None:
            zs_labels = _expect_str_list(name, "labels", body["labels"])
            if not zs_labels:
                errors.add("[labels] must not be empty")
            out["labels"] = zs_labels
        if tok["span"] != -1:
            errors.add(
                f"[zero_shot_classification] does not support windowing long text sequences; "
                f"configured span [{tok['span']}]"
            )
    elif name == "fill_mask":
        num_top = 5
        if body.get("num_top_classes") is not None:
            num_top = _expect_int(name, "num_top_classes", body["num_top_classes"])
        out["num_top_classes"] = num_top
        expected_mask = MASK_TOKENS[tok_name]
        if body.get("mask_token") is not None:
            mask = _expect_str(name, "mask_token", body["mask_token"])
            if mask != expected_mask:
                errors.add(f"Mask token requested was [{mask}] but must be [{expected_mask}] for this model")
        out["mask_token"] = expected_mask
        if tok["span"] != -1:
            errors.add(
                f"[fill_mask] does not support windowing long text sequences; configured span [{tok['span']}]"
            )
    elif name == "question_answering":
        num_top = 0
        if body.get("num_top_classes") is not None:
            num_top = _expect_int(name, "num_top_classes", body["num_top_classes"])
        max_answer_length = 15
        if body.get("max_answer_length") is not None:
            max_answer_length = _expect_int(name, "max_answer_length", body["max_answer_length"])
        if num_top < 0:
            errors.add(f"[num_top_classes] must be greater than or equal to [0]; provided [{num_top}]")
        if max_answer_length <= 0:
            errors.add(f"[max_answer_length] must be greater than [0]; provided [{max_answer_length}]")
        out["num_top_classes"] = num_top
        out["max_answer_length"] = max_answer_length
    elif name == "text_similarity":
        function = "max"
        if body.get("span_score_combination_function") is not None:
            function = _expect_str(
                name, "span_score_combination_function", body["span_score_combination_function"]
            ).lower()
            if function not in SPAN_SCORE_COMBINATION_FUNCTIONS:
                raise XContentParseError(
                    f"[1:2] [{name}] failed to parse field [span_score_combination_function]"
                )
        out["span_score_combination_function"] = function
    elif name == "text_embedding" and body.get("embedding_size") is not None:
        size = _expect_int(name, "embedding_size", body["embedding_size"])
        if size <= 0:
            errors.add(f"[embedding_size] must be a number greater than 0; configured size [{size}]")
        out["embedding_size"] = size

    errors.raise_if_any()
    return {name: out}


# ---- request overrides -------------------------------------------------------------------------


def resolve_request_config(
    model_config: Mapping[str, Any],
    request_inference_config: Mapping[str, Any] | None,
    *,
    model_id: str | None = None,
) -> dict[str, Any]:
    """Apply an ``_infer`` request's ``inference_config`` to the model's normalized config.

    Returns the effective config (one-key shape, every field filled, JSON-serializable).
    """
    name = task_type(model_config)
    effective: dict[str, Any] = copy.deepcopy(dict(task_body(model_config)))
    update: Mapping[str, Any] = {}
    if request_inference_config:
        if not isinstance(request_inference_config, Mapping) or len(request_inference_config) != 1:
            raise XContentParseError("[1:2] [inference_config] expected exactly one named object")
        req_name, req_body = next(iter(request_inference_config.items()))
        if req_name not in TASK_TYPES:
            raise XContentParseError(f"[1:2] [inference_config] unknown field [{req_name}]")
        if req_name != name:
            raise BadRequest(
                f"Trained model [{model_id or name}] is configured for task [{name}] "
                f"but called with task [{req_name}]"
            )
        if req_body is None:
            req_body = {}
        if not isinstance(req_body, Mapping):
            raise XContentParseError(f"[1:2] [{req_name}] expected an object")
        update = req_body

    allowed = _REQUEST_TASK_FIELDS[name] + ("tokenization",)
    for field in update:
        if field not in allowed:
            raise _unknown_field(name, str(field))

    errors = ValidationCollector()
    if update.get("tokenization") is not None:
        tok_name, tok_update = _one_key(update["tokenization"], "tokenization")
        model_tok_name, model_tok = next(iter(effective["tokenization"].items()))
        if tok_name not in TOKENIZER_TYPES:
            raise XContentParseError(f"[1:2] [tokenization] unknown tokenization type [{tok_name}]")
        if tok_name != model_tok_name:
            raise BadRequest(
                f"Provided tokenization type [{tok_name}] does not match the model's tokenization "
                f"type [{model_tok_name}]"
            )
        if not isinstance(tok_update, Mapping):
            raise XContentParseError(f"[1:2] [{tok_name}_tokenization_update] expected an object")
        for field in tok_update:
            if field not in _REQUEST_TOKENIZATION_FIELDS:
                raise _unknown_field(f"{tok_name}_tokenization_update", str(field))
        merged = dict(model_tok)
        parser = f"{tok_name}_tokenization_update"
        if tok_update.get("truncate") is not None:
            truncate_raw = tok_update["truncate"]
            truncate = _expect_str(parser, "truncate", truncate_raw).lower()
            if truncate not in TRUNCATE_VALUES:
                raise XContentParseError(
                    f"[1:2] [{parser}] failed to parse field [truncate]: No enum constant for [{truncate_raw}]"
                )
            merged["truncate"] = truncate
            if tok_update.get("span") is None and truncate != "none":
                # A new truncate without a span resets windowing (as Elasticsearch's update does).
                merged["span"] = -1
        if tok_update.get("span") is not None:
            merged["span"] = _expect_int(parser, "span", tok_update["span"])
        span = merged["span"]
        if span < 0 and span != -1:
            errors.add(
                "[span] must be non-negative to indicate span length or -1 to indicate no windowing should occur"
            )
        if span > merged["max_sequence_length"]:
            errors.add(
                f"[span] provided [{span}] must not be greater than [max_sequence_length] "
                f"provided [{merged['max_sequence_length']}]"
            )
        if span != -1 and merged["truncate"] != "none":
            errors.add("[span] must not be provided when [truncate] is not [none]")
        if span != -1 and name in ("fill_mask", "zero_shot_classification"):
            errors.add(f"[{name}] does not support windowing long text sequences; configured span [{span}]")
        effective["tokenization"] = {tok_name: merged}

    if update.get("results_field") is not None:
        effective["results_field"] = _expect_str(name, "results_field", update["results_field"])

    if (
        name in ("text_classification", "fill_mask", "question_answering")
        and update.get("num_top_classes") is not None
    ):
        effective["num_top_classes"] = _expect_int(name, "num_top_classes", update["num_top_classes"])
    if name == "text_classification" and update.get("classification_labels") is not None:
        labels = _expect_str_list(name, "classification_labels", update["classification_labels"])
        defined = len(effective.get("classification_labels", []))
        if len(labels) != defined:
            raise BadRequest(
                f"The number of [classification_labels] the model is defined with [{defined}] "
                f"does not match the number in the update [{len(labels)}]"
            )
        effective["classification_labels"] = labels
    if name == "zero_shot_classification":
        if update.get("labels") is not None:
            labels = _expect_str_list(name, "labels", update["labels"])
            if not labels:
                errors.add("[labels] must not be empty")
            effective["labels"] = labels
        if update.get("multi_label") is not None:
            effective["multi_label"] = _expect_bool(name, "multi_label", update["multi_label"])
        if not effective.get("labels"):
            errors.add("zero_shot_classification requires non-empty [labels]")
    if name == "question_answering":
        if update.get("max_answer_length") is not None:
            effective["max_answer_length"] = _expect_int(
                name, "max_answer_length", update["max_answer_length"]
            )
        question = update.get("question")
        if question is None:
            errors.add("[question] must not be null")
        else:
            effective["question"] = _expect_str(name, "question", question)
        if effective["num_top_classes"] < 0:
            errors.add(
                f"[num_top_classes] must be greater than or equal to [0]; provided [{effective['num_top_classes']}]"
            )
        if effective["max_answer_length"] <= 0:
            errors.add(
                f"[max_answer_length] must be greater than [0]; provided [{effective['max_answer_length']}]"
            )
    if name == "text_similarity":
        if update.get("span_score_combination_function") is not None:
            function = _expect_str(
                name, "span_score_combination_function", update["span_score_combination_function"]
            ).lower()
            if function not in SPAN_SCORE_COMBINATION_FUNCTIONS:
                raise XContentParseError(
                    f"[1:2] [{name}] failed to parse field [span_score_combination_function]"
                )
            effective["span_score_combination_function"] = function
        text = update.get("text")
        if text is None:
            errors.add("[text] must not be null")
        else:
            effective["text"] = _expect_str(name, "text", text)

    errors.raise_if_any()
    return {name: effective}


# ---- input -------------------------------------------------------------------------------------


_MISSING = object()


def _lookup(doc: Mapping[str, Any], path: str) -> Any:
    if path in doc:
        return doc[path]
    # Dotted paths: try every split of the path into nested keys, longest key first.
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in doc and isinstance(doc[head], Mapping):
            found = _lookup(doc[head], ".".join(parts[i:]))
            if found is not _MISSING:
                return found
    return _MISSING


def read_input_text(doc: Mapping[str, Any], field_names: Sequence[str]) -> str:
    """The input string of an ``_infer`` doc, read from ``field_names[0]`` (dotted paths allowed)."""
    field = field_names[0] if field_names else "text_field"
    value = _lookup(doc, field) if isinstance(doc, Mapping) else _MISSING
    if value is _MISSING:
        raise BadRequest(f"Input field [{field}] does not exist in the source document")
    if not isinstance(value, str):
        raise BadRequest(f"Input value [{render_value(value)}] for field [{field}] must be a string")
    return value
