"""Trace a local Hugging Face model the way eland does, for upload to inferq.

``trace_hf_model(model_dir, task_type)`` returns the TorchScript bytes, the body for
``PUT _ml/trained_models/<id>`` and the vocabulary document, as ``eland_import_hub_model``
would produce them:

- the traced forward takes ``(input_ids, attention_mask, token_type_ids, position_ids)`` for
  BERT-family tokenizers, ``(input_ids, attention_mask)`` for MPNet/RoBERTa/XLM-R and
  ``(input_ids, attention_mask, token_type_ids)`` for DeBERTa-v2;
- question answering returns ``stack([start_logits, end_logits])`` ([2, batch, seq]);
- text_embedding runs the sentence-transformers modules after the transformer (pooling, dense,
  normalize); a plain Hugging Face folder gets mean pooling, as sentence-transformers does;
- every other task returns the model's first output.

Nothing here runs at import time; torch, transformers and sentence-transformers are imported
lazily so that importing ``workers`` stays cheap.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.task_config import TASK_TYPES

_REASONABLE_MAX_LENGTH = 8192

# Tokenizer class name prefix → inferq tokenizer type (eland's SUPPORTED_TOKENIZERS).
_TOKENIZER_KINDS: tuple[tuple[str, str], ...] = (
    ("BertJapanese", "bert_ja"),
    ("XLMRoberta", "xlm_roberta"),
    ("DebertaV2", "deberta_v2"),
    ("MPNet", "mpnet"),
    ("Roberta", "roberta"),
    ("Bart", "roberta"),
    ("DistilBert", "bert"),
    ("Bert", "bert"),
    ("Electra", "bert"),
    ("MobileBert", "bert"),
    ("SqueezeBert", "bert"),
    ("RetriBert", "bert"),
    ("DPRContextEncoder", "bert"),
    ("DPRQuestionEncoder", "bert"),
)

_MODEL_INPUT_COUNT = {"bert": 4, "bert_ja": 4, "mpnet": 2, "roberta": 2, "xlm_roberta": 2, "deberta_v2": 3}


@dataclass(frozen=True)
class TracedModel:
    torchscript: bytes
    config: dict[str, Any]
    vocabulary: dict[str, Any]


def tokenizer_kind(tokenizer: Any) -> str:
    name = type(tokenizer).__name__
    for prefix, kind in _TOKENIZER_KINDS:
        if name.startswith(prefix):
            return kind
    raise TypeError(f"Tokenizer type {name} not supported")


def export_vocabulary(tokenizer: Any) -> dict[str, Any]:
    """The vocabulary document eland uploads: tokens by id, plus BPE merges or Unigram scores."""
    vocab_items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    vocabulary = [token for token, _ in vocab_items]
    doc: dict[str, Any] = {"vocabulary": vocabulary}
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model", {})
    if model.get("type") == "BPE" and model.get("merges"):
        doc["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if model.get("type") == "Unigram":
        by_token = {piece: float(score) for piece, score in model.get("vocab", [])}
        doc["scores"] = [by_token.get(token, 0.0) for token in vocabulary]
    return doc


def _max_sequence_length(tokenizer: Any, kind: str) -> int:
    max_len = getattr(tokenizer, "model_max_length", None)
    if max_len is not None and max_len <= _REASONABLE_MAX_LENGTH:
        return int(max_len)
    if kind == "bert":
        return 512
    raise ValueError("Cannot determine model max input length")


def _tokenization_config(tokenizer: Any, kind: str, max_len: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if kind in ("bert", "bert_ja", "mpnet", "deberta_v2"):
        do_lower_case = getattr(tokenizer, "do_lower_case", None)
        if do_lower_case is None and kind in ("bert", "mpnet"):
            do_lower_case = _backend_lowercases(tokenizer)
        if do_lower_case is not None:
            body["do_lower_case"] = bool(do_lower_case)
    if kind == "roberta":
        add_prefix_space = getattr(tokenizer, "add_prefix_space", None)
        if add_prefix_space is not None:
            body["add_prefix_space"] = bool(add_prefix_space)
    body["max_sequence_length"] = max_len
    return {kind: body}


def _backend_lowercases(tokenizer: Any) -> bool | None:
    normalizer = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
    if "lowercase" in normalizer:
        return bool(normalizer["lowercase"])
    return None


def _classification_labels(model_config: Any) -> list[str] | None:
    id2label = getattr(model_config, "id2label", None) or {}
    if not id2label:
        return None
    labels = [label for _, label in sorted(((int(k), v) for k, v in id2label.items()))]
    # eland turns I-PER into I_PER (Java enum friendly)
    return [str(label).replace("-", "_") for label in labels]


def _build_wrapper(model_dir: Path, task_type: str, kind: str) -> Any:
    import torch
    import transformers
    from torch import nn

    loaders = {
        "fill_mask": transformers.AutoModelForMaskedLM,
        "text_expansion": transformers.AutoModelForMaskedLM,
        "ner": transformers.AutoModelForTokenClassification,
        "text_classification": transformers.AutoModelForSequenceClassification,
        "zero_shot_classification": transformers.AutoModelForSequenceClassification,
        "text_similarity": transformers.AutoModelForSequenceClassification,
        "question_answering": transformers.AutoModelForQuestionAnswering,
        "pass_through": transformers.AutoModel,
        "text_embedding": transformers.AutoModel,
    }
    hf_model = loaders[task_type].from_pretrained(str(model_dir), torchscript=True)
    hf_model.eval()
    params = set(inspect.signature(hf_model.forward).parameters)

    head: Any = None
    if task_type == "text_embedding":
        if hasattr(hf_model, "pooler"):
            hf_model.pooler = None
        head = _sentence_transformer_head(model_dir, int(hf_model.config.hidden_size))

    class TracedWrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf_model = hf_model
            self.head = head
            self.config = hf_model.config

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None and "token_type_ids" in params:
                inputs["token_type_ids"] = token_type_ids
            if position_ids is not None and "position_ids" in params:
                inputs["position_ids"] = position_ids
            output = self.hf_model(**inputs)
            if task_type == "question_answering":
                return torch.stack([output[0], output[1]], dim=0)
            if self.head is not None:
                features = {
                    "input_ids": input_ids,
                    "attention_mask": attention_mask,
                    "token_embeddings": output[0],
                }
                for module in self.head:
                    features = module(features)
                embedding: torch.Tensor = features["sentence_embedding"]
                return embedding
            first: torch.Tensor = output[0]
            return first

    wrapper = TracedWrapper()
    wrapper.eval()
    return wrapper


def _sentence_transformer_head(model_dir: Path, hidden_size: int) -> Any:
    """The sentence-transformers modules after the transformer (pooling, dense, normalize...)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from torch import nn

    if (model_dir / "modules.json").exists():
        st_model = SentenceTransformer(str(model_dir), device="cpu")
        modules = list(st_model.children())
        if not modules or not isinstance(modules[0], Transformer):
            raise TypeError("the first sentence-transformers module must be a Transformer")
        head = nn.ModuleList(modules[1:])
    else:
        head = nn.ModuleList([Pooling(hidden_size, pooling_mode="mean")])
    head.eval()
    return head


def _example_inputs(tokenizer: Any, kind: str, task_type: str, max_len: int) -> tuple[Any, ...]:
    import torch

    if task_type in ("zero_shot_classification", "text_similarity", "question_answering"):
        encoded = tokenizer(
            "What is the meaning of life?",
            "The meaning of life, according to the hitchikers guide, is 42.",
            return_tensors="pt",
            truncation=True,
            max_length=max_len,
        )
    else:
        encoded = tokenizer(
            "This is an example sentence.", return_tensors="pt", truncation=True, max_length=max_len
        )
    input_ids = encoded["input_ids"]
    attention_mask = encoded["attention_mask"]
    count = _MODEL_INPUT_COUNT[kind]
    if count == 2:
        return (input_ids, attention_mask)
    token_type_ids = encoded.get("token_type_ids")
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    if count == 3:
        return (input_ids, attention_mask, token_type_ids)
    position_ids = torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0)
    return (input_ids, attention_mask, token_type_ids, position_ids)


def _random_inputs(tokenizer: Any, kind: str, max_len: int) -> tuple[Any, ...]:
    import torch

    vocab = list(tokenizer.get_vocab().keys())
    rng = random.Random(0)
    text = " ".join(rng.choices(vocab, k=max_len))
    encoded = tokenizer(text, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    count = _MODEL_INPUT_COUNT[kind]
    if count == 2:
        return (input_ids, attention_mask)
    token_type_ids = torch.zeros_like(input_ids)
    if count == 3:
        return (input_ids, attention_mask, token_type_ids)
    return (input_ids, attention_mask, token_type_ids, torch.arange(input_ids.size(1)).unsqueeze(0))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null: torch's profiler prints ``USDT: profiler_start/stop``
    from C++ on every run, whatever ``KINETO_LOG_LEVEL`` says."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """What tracing always says and never matters: torch's TracerWarnings (eland's traces have
    them too) and transformers' ``loss_type=None`` notice (a training setting, read when
    ``torch.jit`` walks the model's attributes)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()  # type: ignore[no-untyped-call]
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            import torch

            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)  # type: ignore[no-untyped-call]


def _memory_metadata(wrapper: Any, tokenizer: Any, kind: str, max_len: int) -> dict[str, int]:
    """eland's per-deployment (weights) and per-allocation (profiled transient) memory."""
    import torch

    per_deployment = sum(p.nelement() * p.element_size() for p in wrapper.parameters()) + sum(
        b.nelement() * b.element_size() for b in wrapper.buffers()
    )
    per_allocation = 0
    try:
        from torch.profiler import ProfilerActivity, profile

        inputs = _random_inputs(tokenizer, kind, max_len)
        with _stderr_silenced(), torch.inference_mode():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                wrapper(*inputs)
        per_allocation = int(prof.key_averages().total_average().cpu_memory_usage)
    except Exception:  # noqa: BLE001 - the estimate is advisory; never fail an upload on it
        per_allocation = 0
    return {
        "per_deployment_memory_bytes": int(per_deployment),
        "per_allocation_memory_bytes": max(per_allocation, 0),
    }


TRACING_STEPS = ("tokenizer", "model", "trace", "freeze", "save", "memory")


def trace_hf_model(
    model_dir: str | Path,
    task_type: str,
    *,
    max_sequence_length: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> TracedModel:
    """Trace ``model_dir`` for ``task_type`` as eland does; see the module docstring.

    ``progress`` is called with each name of ``TRACING_STEPS`` as that step begins."""
    with _quiet_tracing():
        return _trace(Path(model_dir), task_type, max_sequence_length, progress or (lambda step: None))


def _trace(
    model_dir: Path, task_type: str, max_sequence_length: int | None, progress: Callable[[str], None]
) -> TracedModel:
    import torch
    import transformers

    task_type = task_type.replace("-", "_")
    if task_type not in TASK_TYPES:
        raise ValueError(
            f"Task {task_type} is not supported, must be one of: {', '.join(sorted(TASK_TYPES))}"
        )
    progress("tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)  # type: ignore[no-untyped-call]
    kind = tokenizer_kind(tokenizer)
    max_len = max_sequence_length or _max_sequence_length(tokenizer, kind)

    progress("model")
    wrapper = _build_wrapper(model_dir, task_type, kind)
    example = _example_inputs(tokenizer, kind, task_type, max_len)
    with torch.no_grad():
        progress("trace")
        traced = torch.jit.trace(wrapper, example_inputs=example)  # type: ignore[no-untyped-call]
        progress("freeze")
        traced = torch.jit.freeze(traced.eval())
        sample = wrapper(*example)
    progress("save")
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)

    tokenization = _tokenization_config(tokenizer, kind, max_len)
    tok_body = tokenization[kind]
    if task_type == "question_answering":
        # eland's SQuAD defaults (386 / 128 / none); an explicit max length keeps the span inside it.
        if max_sequence_length is None:
            tok_body["max_sequence_length"] = 386
        tok_body["span"] = min(128, tok_body["max_sequence_length"] // 2)
        tok_body["truncate"] = "none"
    if task_type == "text_similarity":
        tok_body["truncate"] = "second"

    task_config: dict[str, Any] = {"tokenization": tokenization}
    if task_type in ("ner", "text_classification", "zero_shot_classification"):
        labels = _classification_labels(wrapper.config)
        if labels:
            task_config["classification_labels"] = labels
    if task_type == "text_embedding":
        task_config["embedding_size"] = int(sample.size(-1))

    progress("memory")
    config = {
        "description": f"Model {model_dir} for task type '{task_type}'",
        "model_type": "pytorch",
        "inference_config": {task_type: task_config},
        "input": {"field_names": ["text_field"]},
        "metadata": _memory_metadata(wrapper, tokenizer, kind, tok_body["max_sequence_length"]),
    }
    return TracedModel(torchscript=buffer.getvalue(), config=config, vocabulary=export_vocabulary(tokenizer))
