"""Every task end to end against Hugging Face.

A tiny model (fixed seed) is traced with ``trace_hf_model``, reloaded with ``load_torchscript`` (validated, as a worker loads it) and
served through ``build_task(...).prepare/run``; the reference is computed here from the same
Hugging Face model called directly (its own tokenizer, its own forward pass), with Elasticsearch's
post-processing written out plainly in numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.errors import BadRequest
from shared.task_config import normalize_inference_config, resolve_request_config
from tests.tiny_models import build_tiny_model
from workers.runtime import load_torchscript

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "  Elastic is headquartered in Mountain View, said Café 😀 中文  ",
    "John Smith and Maria Garcia were in London.",
    "naïve résumé 東京",
    "a",
]
MAX_LEN = 64
SCORE_TOLERANCE = 1e-4


@dataclass
class Served:
    folder: Path
    config: dict[str, Any]
    task: Any
    module: Any
    upload: dict[str, Any]
    vocabulary: dict[str, Any]

    def infer(self, texts: Sequence[str], request: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        effective = resolve_request_config(self.config, request)
        return self.task.run(self.module, [self.task.prepare(text, effective) for text in texts])

    def infer_each(
        self, texts: Sequence[str], requests: Sequence[Mapping[str, Any] | None]
    ) -> list[dict[str, Any]]:
        return [self.infer([t], r)[0] for t, r in zip(texts, requests)]

    def infer_batch(
        self, texts: Sequence[str], requests: Sequence[Mapping[str, Any] | None]
    ) -> list[dict[str, Any]]:
        prepared = [
            self.task.prepare(t, resolve_request_config(self.config, r)) for t, r in zip(texts, requests)
        ]
        return self.task.run(self.module, prepared)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Served]]:
    from inferq.tracing import trace_hf_model
    from workers.tasks import build_task

    cache: dict[tuple[str, str, int], Served] = {}
    root = tmp_path_factory.mktemp("tiny")

    def make(task_type: str, tokenizer: str = "bert", max_len: int = MAX_LEN) -> Served:
        key = (task_type, tokenizer, max_len)
        if key not in cache:
            folder = build_tiny_model(task_type, root, tokenizer)
            traced = trace_hf_model(folder, task_type, max_sequence_length=max_len)
            config = normalize_inference_config(traced.config["inference_config"])
            module = load_torchscript(traced.torchscript)
            task = build_task(config, traced.vocabulary)
            cache[key] = Served(folder, config, task, module, traced.config, traced.vocabulary)
        return cache[key]

    yield make


def hf_tokenizer(folder: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def hf_model(folder: Path, auto_class: str) -> Any:
    return getattr(transformers, auto_class).from_pretrained(str(folder)).eval()


def forward(model: Any, encoded: Mapping[str, Any]) -> Any:
    with torch.no_grad():
        return model(**{k: v for k, v in encoded.items() if k != "offset_mapping"})


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- upload shape --------------------------------------------------------------------------------


def test_upload_config_mirrors_eland(serve: Callable[..., Served]) -> None:
    served = serve("ner")
    upload = served.upload
    assert upload["model_type"] == "pytorch"
    assert upload["input"] == {"field_names": ["text_field"]}
    assert upload["description"].endswith("for task type 'ner'")
    assert upload["inference_config"]["ner"]["classification_labels"] == [
        "O",
        "B_PER",
        "I_PER",
        "B_ORG",
        "I_ORG",
        "B_LOC",
        "I_LOC",
        "B_MISC",
        "I_MISC",
    ]
    assert upload["inference_config"]["ner"]["tokenization"] == {
        "bert": {"do_lower_case": True, "max_sequence_length": 64}
    }
    metadata = upload["metadata"]
    assert metadata["per_deployment_memory_bytes"] > 0
    assert metadata["per_allocation_memory_bytes"] >= 0
    qa = serve("question_answering").upload["inference_config"]["question_answering"]["tokenization"]["bert"]
    assert qa["truncate"] == "none" and 0 < qa["span"] <= qa["max_sequence_length"]
    similarity = serve("text_similarity").upload["inference_config"]["text_similarity"]["tokenization"][
        "bert"
    ]
    assert similarity["truncate"] == "second"
    roberta = serve("text_embedding", "roberta")
    assert set(roberta.vocabulary) == {"vocabulary", "merges"}
    assert (
        roberta.upload["inference_config"]["text_embedding"]["tokenization"]["roberta"]["add_prefix_space"]
        is False
    )
    xlmr = serve("text_embedding", "xlm_roberta")
    assert set(xlmr.vocabulary) == {"vocabulary", "scores"}
    assert len(xlmr.vocabulary["scores"]) == len(xlmr.vocabulary["vocabulary"])


def test_traced_forward_arity(serve: Callable[..., Served]) -> None:
    bert_args = [a.name for a in serve("pass_through").module.forward.schema.arguments][1:]
    roberta_args = [a.name for a in serve("pass_through", "roberta").module.forward.schema.arguments][1:]
    assert len(bert_args) == 4
    assert len(roberta_args) == 2


# ---- text_embedding / pass_through / text_expansion -------------------------------------------


@pytest.mark.parametrize("tokenizer", ["bert", "mpnet", "roberta", "xlm_roberta"])
def test_text_embedding_is_mean_pooled_like_sentence_transformers(
    serve: Callable[..., Served], tokenizer: str
) -> None:
    served = serve("text_embedding", tokenizer)
    results = served.infer(TEXTS)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModel")
    for text, result in zip(TEXTS, results):
        hidden = forward(model, tok(text, return_tensors="pt"))[0][0].numpy()
        np.testing.assert_allclose(result["predicted_value"], hidden.mean(axis=0), atol=SCORE_TOLERANCE)
        assert "is_truncated" not in result
    assert served.config["text_embedding"]["embedding_size"] == 32


def test_pass_through_is_the_raw_hidden_state(serve: Callable[..., Served]) -> None:
    served = serve("pass_through")
    results = served.infer(TEXTS)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModel")
    for text, result in zip(TEXTS, results):
        hidden = forward(model, tok(text, return_tensors="pt"))[0][0].numpy()
        np.testing.assert_allclose(np.array(result["predicted_value"]), hidden, atol=SCORE_TOLERANCE)


def test_text_expansion_weights_are_the_positive_first_token_logits(serve: Callable[..., Served]) -> None:
    served = serve("text_expansion")
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForMaskedLM")
    for text, result in zip(TEXTS, served.infer(TEXTS)):
        logits = forward(model, tok(text, return_tensors="pt"))[0][0, 0].numpy()
        expected = {
            tok.convert_ids_to_tokens(int(i)).replace(".", "__"): float(logits[i])
            for i in np.nonzero(logits > 0)[0]
        }
        weights = result["predicted_value"]
        assert set(weights) == set(expected)
        for token, weight in weights.items():
            assert weight == pytest.approx(expected[token], abs=SCORE_TOLERANCE)
        assert list(weights.values()) == sorted(weights.values(), reverse=True)


# ---- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["bert", "roberta", "xlm_roberta"])
def test_text_classification(serve: Callable[..., Served], tokenizer: str) -> None:
    served = serve("text_classification", tokenizer)
    labels = served.config["text_classification"]["classification_labels"]
    results = served.infer(TEXTS, {"text_classification": {"num_top_classes": 3}})
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForSequenceClassification")
    for text, result in zip(TEXTS, results):
        probabilities = np_softmax(forward(model, tok(text, return_tensors="pt"))[0][0].numpy())
        best = int(np.argmax(probabilities))
        assert result["predicted_value"] == labels[best] == model.config.id2label[best]
        assert result["prediction_probability"] == pytest.approx(probabilities[best], abs=SCORE_TOLERANCE)
        for entry in result["top_classes"]:
            assert entry["class_probability"] == pytest.approx(
                probabilities[labels.index(entry["class_name"])], abs=SCORE_TOLERANCE
            )


def test_text_classification_truncate_first(serve: Callable[..., Served]) -> None:
    served = serve("text_classification", "bert", 16)
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 4)
    (result,) = served.infer([text])
    assert result["is_truncated"] is True
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForSequenceClassification")
    probabilities = np_softmax(
        forward(model, tok(text, truncation=True, max_length=16, return_tensors="pt"))[0][0].numpy()
    )
    assert result["prediction_probability"] == pytest.approx(float(probabilities.max()), abs=SCORE_TOLERANCE)
    with pytest.raises(
        BadRequest,
        match=r"Input too large. The tokenized input length \[\d+\] exceeds the maximum sequence length \[16\]",
    ):
        served.infer([text], {"text_classification": {"tokenization": {"bert": {"truncate": "none"}}}})


def test_text_classification_averages_span_windows(serve: Callable[..., Served]) -> None:
    served = serve("text_classification", "bert", 16)
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 3)  # one token per word
    (result,) = served.infer(
        [text],
        {
            "text_classification": {
                "num_top_classes": -1,
                "tokenization": {"bert": {"truncate": "none", "span": 4}},
            }
        },
    )
    assert "is_truncated" not in result
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForSequenceClassification")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    room, span, start, probabilities = 14, 4, 0, []
    while True:
        end = min(start + room, len(ids))
        row = torch.tensor([[tok.cls_token_id, *ids[start:end], tok.sep_token_id]])
        probabilities.append(np_softmax(forward(model, {"input_ids": row})[0][0].numpy()))
        if end == len(ids):
            break
        start = end - span
    mean = np.mean(probabilities, axis=0)
    labels = served.config["text_classification"]["classification_labels"]
    assert result["predicted_value"] == labels[int(np.argmax(mean))]
    for entry in result["top_classes"]:
        assert entry["class_probability"] == pytest.approx(
            mean[labels.index(entry["class_name"])], abs=SCORE_TOLERANCE
        )


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_classification(serve: Callable[..., Served], multi_label: bool) -> None:
    served = serve("zero_shot_classification")
    labels = ["sport", "politics", "music", "science"]
    request = {"zero_shot_classification": {"labels": labels, "multi_label": multi_label}}
    results = served.infer(TEXTS, request)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForSequenceClassification")
    entail = model.config.label2id["entailment"]
    contra = model.config.label2id["contradiction"]
    for text, result in zip(TEXTS, results):
        logits = np.stack(
            [
                forward(model, tok(text, f"This example is {label}.", return_tensors="pt"))[0][0].numpy()
                for label in labels
            ]
        )
        if multi_label:
            scores = np.array([np_softmax(np.array([row[entail], row[contra]]))[0] for row in logits])
        else:
            scores = np_softmax(logits[:, entail])
        assert result["predicted_value"] == labels[int(np.argmax(scores))]
        assert [c["class_name"] for c in result["top_classes"]] == [
            labels[i] for i in np.argsort(-scores, kind="stable")
        ]
        for entry in result["top_classes"]:
            assert entry["class_probability"] == pytest.approx(
                scores[labels.index(entry["class_name"])], abs=SCORE_TOLERANCE
            )


# ---- fill_mask ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["bert", "roberta", "xlm_roberta"])
def test_fill_mask(serve: Callable[..., Served], tokenizer: str) -> None:
    served = serve("fill_mask", tokenizer)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForMaskedLM")
    mask = tok.mask_token
    texts = [f"  The capital of France is {mask}, café 😀 中文  ", f"{mask} is a city."]
    results = served.infer(texts, {"fill_mask": {"num_top_classes": 3}})
    for text, result in zip(texts, results):
        encoded = tok(text, return_tensors="pt")
        position = int((encoded["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])
        probabilities = np_softmax(forward(model, encoded)[0][0, position].numpy())
        order = np.argsort(-probabilities, kind="stable")[:3]
        expected_tokens = [tok.decode([int(i)]).strip() for i in order]
        if tokenizer == "bert":
            expected_tokens = [
                t.removeprefix("##") for t in tok.convert_ids_to_tokens([int(i) for i in order])
            ]
        assert result["predicted_value"] == expected_tokens[0]
        assert result["prediction_probability"] == pytest.approx(probabilities[order[0]], abs=SCORE_TOLERANCE)
        assert [c["class_name"] for c in result["top_classes"]] == expected_tokens
        assert result["predicted_value_sequence"] == text.replace(mask, expected_tokens[0])


def test_fill_mask_rejects_missing_or_double_masks(serve: Callable[..., Served]) -> None:
    from shared.errors import IllegalArgument

    served = serve("fill_mask")
    with pytest.raises(IllegalArgument, match="no \\[MASK\\] token could be found"):
        served.infer(["no mask here"])
    with pytest.raises(IllegalArgument, match="only one"):
        served.infer(["[MASK] and [MASK]"])


# ---- text_similarity ----------------------------------------------------------------------------


def test_text_similarity_and_truncate_second(serve: Callable[..., Served]) -> None:
    served = serve("text_similarity", "bert", 24)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForSequenceClassification")
    query = "the capital city"
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 3)
    texts = [*TEXTS[:3], long_text]
    results = served.infer(texts, {"text_similarity": {"text": query}})
    for text, result in zip(texts, results):
        encoded = tok(query, text, truncation="only_second", max_length=24, return_tensors="pt")
        score = float(forward(model, encoded)[0][0, 0])
        assert result["predicted_value"] == pytest.approx(score, abs=SCORE_TOLERANCE)
    assert results[-1]["is_truncated"] is True
    assert "is_truncated" not in results[0]


def test_text_similarity_span_max_and_mean(serve: Callable[..., Served]) -> None:
    served = serve("text_similarity", "bert", 24)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForSequenceClassification")
    query = "the capital"
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 3)
    q_ids = tok(query, add_special_tokens=False)["input_ids"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    room, span, start, scores = 24 - 3 - len(q_ids), 5, 0, []
    while True:
        end = min(start + room, len(ids))
        row = [tok.cls_token_id, *q_ids, tok.sep_token_id, *ids[start:end], tok.sep_token_id]
        types = [0] * (len(q_ids) + 2) + [1] * (end - start + 1)
        scores.append(
            float(
                forward(model, {"input_ids": torch.tensor([row]), "token_type_ids": torch.tensor([types])})[
                    0
                ][0, 0]
            )
        )
        if end == len(ids):
            break
        start = end - span
    assert len(scores) > 1
    for function, expected in (("max", max(scores)), ("mean", sum(scores) / len(scores))):
        request = {
            "text_similarity": {
                "text": query,
                "span_score_combination_function": function,
                "tokenization": {"bert": {"truncate": "none", "span": span}},
            }
        }
        (result,) = served.infer([text], request)
        assert result["predicted_value"] == pytest.approx(expected, abs=SCORE_TOLERANCE)


# ---- ner ----------------------------------------------------------------------------------------


def reference_entities(
    text: str,
    probabilities: np.ndarray,
    offsets: Sequence[tuple[int, int]],
    word_ids: Sequence[int | None],
    labels: Sequence[str],
    lower_case: bool,
) -> list[dict[str, Any]]:
    """Elasticsearch's NER grouping over per-token probabilities (special tokens have word id None)."""
    words: list[tuple[int, int, str, float]] = []  # start, end, label, score
    tokens = [
        i for i, w in enumerate(word_ids) if w is not None and text[offsets[i][0] : offsets[i][1]].strip()
    ]
    i = 0
    while i < len(tokens):
        j = i
        while (
            j + 1 < len(tokens)
            and tokens[j + 1] == tokens[j] + 1
            and word_ids[tokens[j + 1]] == word_ids[tokens[i]]
        ):
            j += 1
        mean = probabilities[tokens[i : j + 1]].mean(axis=0)
        best = int(np.argmax(mean))
        words.append((offsets[tokens[i]][0], offsets[tokens[j]][1], labels[best], float(mean[best])))
        i = j + 1
    entities = []
    i = 0
    while i < len(words):
        label = words[i][2]
        if label.upper() == "O":
            i += 1
            continue
        kind = label.upper()[2:]
        j, total = i + 1, words[i][3]
        while j < len(words) and words[j][2].upper()[0] != "B" and words[j][2].upper()[2:] == kind:
            total += words[j][3]
            j += 1
        start, end = words[i][0], words[j - 1][1]
        entities.append(
            {
                "entity": text[start:end].lower() if lower_case else text[start:end],
                "class_name": kind,
                "class_probability": total / (j - i),
                "start_pos": start,
                "end_pos": end,
            }
        )
        i = j
    return entities


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def assert_same_entities(actual: Sequence[Mapping[str, Any]], expected: Sequence[Mapping[str, Any]]) -> None:
    assert [(e["entity"], e["class_name"], e["start_pos"], e["end_pos"]) for e in actual] == [
        (e["entity"], e["class_name"], e["start_pos"], e["end_pos"]) for e in expected
    ]
    for a, e in zip(actual, expected):
        assert a["class_probability"] == pytest.approx(e["class_probability"], abs=SCORE_TOLERANCE)


@pytest.mark.parametrize("tokenizer", ["bert", "roberta", "xlm_roberta"])
def test_ner(serve: Callable[..., Served], tokenizer: str) -> None:
    served = serve("ner", tokenizer)
    labels = served.config["ner"]["classification_labels"]
    lower_case = served.config["ner"]["tokenization"][tokenizer]["do_lower_case"]
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForTokenClassification")
    results = served.infer(TEXTS)
    for text, result in zip(TEXTS, results):
        encoded = tok(text, return_offsets_mapping=True, return_tensors="pt")
        probabilities = np_softmax(forward(model, encoded)[0][0].numpy())
        offsets = [(int(o[0]), int(o[1])) for o in encoded["offset_mapping"][0]]
        if tokenizer == "xlm_roberta":  # ES reports sentencepiece offsets without the "▁" space; HF keeps it
            offsets = [strip_span(text, s, e) for s, e in offsets]
        expected = reference_entities(text, probabilities, offsets, encoded.word_ids(), labels, lower_case)
        assert_same_entities(result["entities"], expected)
        for entity in result["entities"]:
            assert text[entity["start_pos"] : entity["end_pos"]].lower() == entity["entity"].lower()
            assert entity["entity"] == entity["entity"].strip()
        assert (
            result["predicted_value"]
            .replace("[", "")
            .startswith(text[: max(0, text.find("[") if "[" in text else 0)])
        )


def test_ner_entities_past_the_first_window(serve: Callable[..., Served]) -> None:
    served = serve("ner", "bert", 16)
    labels = served.config["ner"]["classification_labels"]
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForTokenClassification")
    text = " John Smith was in London and Maria Garcia was in Berlin, as Tokyo and new york with the elastic company "
    span = 4
    request = {"ner": {"tokenization": {"bert": {"truncate": "none", "span": span}}}}
    (result,) = served.infer([text], request)
    assert "is_truncated" not in result
    # reference windows: every word here is one token, so windows are plain token slices
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], [tuple(o) for o in encoded["offset_mapping"]]
    assert encoded.word_ids() == list(range(len(ids)))
    room, start, windows = 14, 0, []
    while True:
        end = min(start + room, len(ids))
        row = torch.tensor([[tok.cls_token_id, *ids[start:end], tok.sep_token_id]])
        windows.append((start, end, np_softmax(forward(model, {"input_ids": row})[0][0].numpy())[1:-1]))
        if end == len(ids):
            break
        start = end - span
    assert len(windows) >= 2
    chosen: list[np.ndarray] = []
    for token in range(len(ids)):
        best, best_margin = None, -1.0
        for w, (start, end, probs) in enumerate(windows):
            if start <= token < end:
                left = token - start if w > 0 else float("inf")
                right = end - 1 - token if w < len(windows) - 1 else float("inf")
                if min(left, right) > best_margin:
                    best, best_margin = probs[token - start], min(left, right)
        assert best is not None
        chosen.append(best)
    expected = reference_entities(text, np.array(chosen), offsets, list(range(len(ids))), labels, True)
    assert_same_entities(result["entities"], expected)
    first_window_end = offsets[windows[0][1] - 1][1]
    assert any(e["start_pos"] >= first_window_end for e in result["entities"])


# ---- question_answering -------------------------------------------------------------------------


def reference_answers(
    context: str,
    windows: Sequence[tuple[np.ndarray, np.ndarray, int, int, list[tuple[int, int]]]],
    top: int,
    max_answer_length: int,
) -> list[tuple[float, int, int]]:
    """(score, start_char, end_char) best first, from (start logits, end logits, context start, length, offsets)."""
    candidates: list[tuple[float, int, int]] = []
    for starts, ends, context_start, length, offsets in windows:
        allowed = np.array([i == 0 or context_start <= i < length - 1 for i in range(length)])
        p_start = np_softmax(np.where(allowed, starts[:length], -10000.0))
        p_end = np_softmax(np.where(allowed, ends[:length], -10000.0))
        p_start[0] = p_end[0] = 0.0
        for i in range(context_start, length - 1):
            for j in range(i, min(i + max_answer_length, length - 1)):
                candidates.append(
                    (
                        float(p_start[i] * p_end[j]),
                        offsets[i - context_start][0],
                        offsets[j - context_start][1],
                    )
                )
    candidates.sort(key=lambda c: -c[0])
    return candidates[:top]


def hf_qa_window(
    model: Any, tok: Any, question: str, context: str, encoded: Any, index: int = 0
) -> tuple[np.ndarray, np.ndarray, int, int, list[tuple[int, int]]]:
    sequence_ids = encoded.sequence_ids(index)
    row = {
        k: torch.tensor([encoded[k][index]])
        for k in ("input_ids", "attention_mask", "token_type_ids")
        if k in encoded
    }
    output = forward(model, row)
    context_start = sequence_ids.index(1)
    offsets = [tuple(o) for o, s in zip(encoded["offset_mapping"][index], sequence_ids) if s == 1]
    return (
        output.start_logits[0].numpy(),
        output.end_logits[0].numpy(),
        context_start,
        len(sequence_ids),
        offsets,
    )


@pytest.mark.parametrize("tokenizer", ["bert", "roberta", "xlm_roberta"])
def test_question_answering(serve: Callable[..., Served], tokenizer: str) -> None:
    served = serve("question_answering", tokenizer)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForQuestionAnswering")
    question = "Where is Elastic headquartered?"
    request = {"question_answering": {"question": question, "num_top_classes": 3, "max_answer_length": 5}}
    results = served.infer(TEXTS[:3], request)
    for context, result in zip(TEXTS[:3], results):
        encoded = tok(question, context, return_offsets_mapping=True)
        window = hf_qa_window(model, tok, question, context, encoded_batch(encoded))
        if tokenizer == "xlm_roberta":  # ES reports sentencepiece offsets without the "▁" space; HF keeps it
            window = (*window[:4], [strip_span(context, s, e) for s, e in window[4]])
        expected = reference_answers(context, [window], 3, 5)
        assert [(t["start_offset"], t["end_offset"]) for t in result["top_classes"]] == [
            (s, e) for _, s, e in expected
        ]
        for entry, (score, start, end) in zip(result["top_classes"], expected):
            assert entry["score"] == pytest.approx(score, abs=SCORE_TOLERANCE)
            assert entry["answer"] == context[start:end]
        assert result["predicted_value"] == result["top_classes"][0]["answer"]
        assert result["prediction_probability"] == pytest.approx(expected[0][0], abs=SCORE_TOLERANCE)


def encoded_batch(encoded: Any) -> Any:
    """A single (unbatched) encoding viewed as a batch of one, as overflowing encodings are."""
    batch = {k: [v] for k, v in encoded.items()}
    return type(encoded)(batch, encoding=encoded.encodings)


def test_question_answering_over_span_windows(serve: Callable[..., Served]) -> None:
    served = serve("question_answering", "bert", 24)
    tok, model = hf_tokenizer(served.folder), hf_model(served.folder, "AutoModelForQuestionAnswering")
    question = "where is the city"
    context = " the capital of france is paris and the capital of spain is berlin as tokyo is in new york and london is in the city of the company "
    span = 6
    assert tok(context, add_special_tokens=False).word_ids() == list(range(len(context.split())))
    request = {
        "question_answering": {
            "question": question,
            "num_top_classes": 10,
            "max_answer_length": 3,
            "tokenization": {"bert": {"truncate": "none", "span": span}},
        }
    }
    (result,) = served.infer([context], request)
    # Hugging Face's own overflow windows equal Elasticsearch's when every word is one token.
    encoded = tok(
        question,
        context,
        truncation="only_second",
        max_length=24,
        stride=span,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    count = len(encoded["input_ids"])
    assert count >= 2
    windows = [hf_qa_window(model, tok, question, context, encoded, i) for i in range(count)]
    expected = reference_answers(context, windows, 10, 3)
    assert [(t["start_offset"], t["end_offset"]) for t in result["top_classes"]] == [
        (s, e) for _, s, e in expected
    ]
    for entry, (score, _, _) in zip(result["top_classes"], expected):
        assert entry["score"] == pytest.approx(score, abs=SCORE_TOLERANCE)
    first_window_end = windows[0][4][-1][1]
    assert any(t["start_offset"] >= first_window_end for t in result["top_classes"])


# ---- batching -----------------------------------------------------------------------------------


def assert_results_close(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_results_close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_results_close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-5)
    else:
        assert a == b


def test_batch_equals_one_by_one_ner(serve: Callable[..., Served]) -> None:
    served = serve("ner", "bert", 16)
    long_text = " ".join(["John Smith was in London and Maria Garcia in Berlin"] * 3)
    texts = [TEXTS[0], "a", long_text, long_text, TEXTS[2]]
    requests = [
        None,
        {"ner": {"results_field": "tags"}},
        {"ner": {"tokenization": {"bert": {"truncate": "none", "span": 3}}}},
        None,  # truncated
        {"ner": {"tokenization": {"bert": {"truncate": "none", "span": 0}}}},
    ]
    batched = served.infer_batch(texts, requests)
    assert_results_close(batched, served.infer_each(texts, requests))
    assert "tags" in batched[1] and batched[3]["is_truncated"] is True


def test_batch_equals_one_by_one_question_answering(serve: Callable[..., Served]) -> None:
    served = serve("question_answering", "bert", 24)
    context = " the capital of france is paris and the capital of spain is madrid while tokyo is in japan "
    texts = [context, "  Café 😀 中文  ", context]
    requests = [
        {"question_answering": {"question": "where?", "num_top_classes": 2}},
        {"question_answering": {"question": "what is the capital of france", "max_answer_length": 2}},
        {
            "question_answering": {
                "question": "which city",
                "num_top_classes": 4,
                "tokenization": {"bert": {"truncate": "none", "span": 3}},
            }
        },
    ]
    assert_results_close(served.infer_batch(texts, requests), served.infer_each(texts, requests))


def test_batch_equals_one_by_one_classification(serve: Callable[..., Served]) -> None:
    served = serve("zero_shot_classification", "roberta")
    texts = [TEXTS[0], TEXTS[3], TEXTS[1]]
    requests: list[Mapping[str, Any] | None] = [
        {"zero_shot_classification": {"labels": ["sport", "music"]}},
        {"zero_shot_classification": {"labels": ["a", "b", "c"], "multi_label": True}},
        {"zero_shot_classification": {"labels": ["news"]}},
    ]
    assert_results_close(served.infer_batch(texts, requests), served.infer_each(texts, requests))
    embedding = serve("text_embedding", "xlm_roberta")
    requests_e: list[Mapping[str, Any] | None] = [
        None,
        {"text_embedding": {"results_field": "vector"}},
        None,
        None,
    ]
    assert_results_close(embedding.infer_batch(TEXTS, requests_e), embedding.infer_each(TEXTS, requests_e))


MIXED_LENGTHS = [
    "a",
    "John Smith and Maria Garcia were in London.",
    " ".join(["the capital of france is paris and the capital of spain is madrid"] * 8),  # truncated
    "naïve résumé 東京 😀",
]
EVERY_TASK: dict[str, Mapping[str, Any] | None] = {
    "text_embedding": None,
    "text_expansion": None,
    "pass_through": None,
    "ner": None,
    "text_classification": {"text_classification": {"num_top_classes": 2}},
    "zero_shot_classification": {"zero_shot_classification": {"labels": ["sport", "music", "news"]}},
    "fill_mask": {"fill_mask": {"num_top_classes": 3}},
    "question_answering": {"question_answering": {"question": "which city?", "num_top_classes": 2}},
    "text_similarity": {"text_similarity": {"text": "a city in europe"}},
}


@pytest.mark.parametrize("task_type", sorted(EVERY_TASK))
def test_a_padded_batch_of_mixed_lengths_equals_one_by_one(serve: Callable[..., Served], task_type: str) -> None:
    """Every task: short, long (truncated) and multi-byte texts padded into one forward pass
    give what each gives alone (padding must never leak into a result)."""
    served = serve(task_type, "bert")
    texts = [f"[MASK] {t}" for t in MIXED_LENGTHS] if task_type == "fill_mask" else MIXED_LENGTHS
    requests = [EVERY_TASK[task_type]] * len(texts)
    assert_results_close(served.infer_batch(texts, requests), served.infer_each(texts, requests))


# ---- the real MiniLM ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_path: Path, minilm_traced: Any) -> Served:
    """The real all-MiniLM-L6-v2, traced once per session (``minilm_traced`` in conftest)."""
    from workers.tasks import build_task

    config = normalize_inference_config(minilm_traced.config["inference_config"])
    module = load_torchscript(minilm_traced.torchscript)
    task = build_task(config, minilm_traced.vocabulary)
    return Served(minilm_path, config, task, module, minilm_traced.config, minilm_traced.vocabulary)


def test_minilm_matches_sentence_transformers(minilm: Served) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = sentence_transformers.SentenceTransformer(str(minilm.folder), device="cpu")
    texts = [*TEXTS, "The quick brown fox jumps over the lazy dog. " * 4, "Ünïcödé façade — “quotes” ½"]
    expected = model.encode(texts)
    results = minilm.infer(texts)  # one padded batch of mixed lengths
    for result, reference in zip(results, expected):
        vector = np.array(result["predicted_value"])
        cosine = float(vector @ reference / (np.linalg.norm(vector) * np.linalg.norm(reference)))
        assert cosine >= 0.9999
        assert len(vector) == 384
    assert minilm.upload["inference_config"]["text_embedding"]["embedding_size"] == 384
    assert minilm.upload["inference_config"]["text_embedding"]["tokenization"] == {
        "bert": {"do_lower_case": True, "max_sequence_length": 512}
    }
