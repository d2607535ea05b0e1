"""What every NLP task shares: the prepared document, the padded forward pass, output slicing.

A task's ``prepare`` turns one text into ``Prepared`` (its model rows plus what post-processing
needs); ``run`` makes ONE forward pass over the rows of every doc of a batch (padded to the
longest row) and hands each doc its slice of the output to the task's pure ``postprocess``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shared.errors import InferenceFailed
from shared.task_config import task_body, task_type, tokenization_settings
from workers.tokenization import NlpTokenizer, Tokenization, Window


@dataclass(frozen=True)
class Prepared:
    """One document ready for the model: its rows and everything post-processing needs."""

    text: str
    config: Mapping[str, Any]  # the task body of the effective (request-resolved) config
    tokenization: Tokenization
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[Window]:
        return self.tokenization.windows


class Task(Protocol):
    name: str

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared: ...

    def run(self, module: Any, batch: Sequence[Prepared]) -> list[dict[str, Any]]: ...


def request_truncation(config: Mapping[str, Any]) -> tuple[str, int]:
    """The (truncate, span) of an effective one-key config."""
    settings = tokenization_settings(config)
    return str(settings.get("truncate", "first")), int(settings.get("span", -1))


def effective_body(name: str, config: Mapping[str, Any]) -> Mapping[str, Any]:
    given = task_type(config)
    if given != name:
        raise InferenceFailed(f"task [{name}] was given a config for task [{given}]")
    return task_body(config)


def pad_rows(rows: Sequence[Window], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad rows to the longest one; position ids count on through the padding (as ES does)."""
    width = max((len(r) for r in rows), default=0)
    n = len(rows)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, width), dtype=np.int64)
    token_type_ids = np.zeros((n, width), dtype=np.int64)
    for i, row in enumerate(rows):
        length = len(row)
        input_ids[i, :length] = row.input_ids
        attention_mask[i, :length] = 1
        token_type_ids[i, :length] = row.token_type_ids
    position_ids = np.tile(np.arange(width, dtype=np.int64), (n, 1))
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "position_ids": position_ids,
    }


def forward(module: Any, rows: Sequence[Window], tokenizer: NlpTokenizer) -> np.ndarray:
    """One forward pass over ``rows``; returns the model's first output tensor as float32 numpy.

    Like ml-cpp, a tuple output is reduced to its first element. Post-processing does its
    arithmetic in float64 on the slices it needs (a fill_mask output is [rows, seq, vocab]).
    """
    import torch  # a worker-only dependency; keep post-processing importable without it

    arrays = pad_rows(rows, tokenizer.pad_id)
    inputs = [torch.from_numpy(arrays[name]) for name in tokenizer.model_inputs]
    with torch.inference_mode():
        output = module(*inputs)
    while isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(output, Mapping):
        output = next(iter(output.values()))
    return np.asarray(output.detach().to(torch.float32).cpu().numpy())


class BaseTask:
    """Shared ``prepare`` (one text) and ``run``: subclasses implement the pure ``postprocess``."""

    name: str = ""
    # Which axis of the model output indexes rows (question answering stacks start/end first).
    row_axis: int = 0

    def __init__(self, model_config: Mapping[str, Any], tokenizer: NlpTokenizer) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer

    def prepare(self, text: str, config: Mapping[str, Any]) -> Prepared:
        """One text, tokenized with the request's truncation and span (pair tasks override)."""
        body = effective_body(self.name, config)
        truncate, span = request_truncation(config)
        return Prepared(
            text=text, config=body, tokenization=self.tokenizer.tokenize(text, truncate=truncate, span=span)
        )

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def run(self, module: Any, batch: Sequence[Prepared]) -> list[dict[str, Any]]:
        rows = [row for prepared in batch for row in prepared.rows]
        if not rows:
            return []
        output = forward(module, rows, self.tokenizer)
        if self.row_axis:
            output = np.moveaxis(output, self.row_axis, 0)
        if output.shape[0] != len(rows):
            raise InferenceFailed(f"model output has [{output.shape[0]}] rows but [{len(rows)}] were sent")
        results = []
        start = 0
        for prepared in batch:
            count = len(prepared.rows)
            results.append(self.postprocess(prepared, output[start : start + count]))
            start += count
        return results


def with_truncation(result: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    if prepared.tokenization.truncated:
        result["is_truncated"] = True
    return result
