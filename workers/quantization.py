"""Opt-in int8 inference for one deployment (``inferq_quantization=int8``, an inferq extension).

Uploaded models are TorchScript (eland traces them; ours are frozen), so eager
``torch.ao.quantization.quantize_dynamic`` cannot see their ``nn.Linear`` modules. Graph-mode
dynamic quantization (``quantize_dynamic_jit``) can: every ``aten::linear`` with a constant
weight becomes ``quantized::linear_dynamic`` (int8 weights per output channel, activations
quantized per call).

All linears in int8 is fast but not always faithful: in all-MiniLM-L6-v2 the feed-forward
layers see activations with outliers and the embeddings drift (cosine ~0.97 to fp32). So
the worker checks: it runs a fixed set of texts (``CHECK_TEXTS``) through the fp32 and the
quantized module and, while the lowest cosine between their outputs is under
``MIN_COSINE``, puts one group of linears back in fp32 (grouped by weight shape: the
down-projections first, then the up-projections, then the rest). A model for which no group
of linears can stay int8 is served in fp32.

The decision is cached per model next to its fp32 copy (``<sha256>.int8.json``: the groups kept
in fp32 and the measured cosine), so a restart or a second deployment quantizes in one pass,
without the search. No Redis keys: the definition comes from ``workers.runtime``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.tasks import Task
from workers.tasks.base import forward

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8")
MIN_COSINE = 0.99
CHECK_TEXTS = (
    "hello world",
    "how do I reset my password",
    "cheap flights to lisbon in may",
    "The quick brown fox jumps over the lazy dog.",
    "Elasticsearch is a distributed search and analytics engine built on Apache Lucene.",
    "A queue of requests waits in Redis until a worker takes a batch of them off the list.",
    "She sold the old house by the river and moved to a small flat near the station, "
    "where the trains woke her every morning at six.",
    "Rising interest rates slowed the housing market, while energy prices fell for the third "
    "month in a row and unemployment stayed close to its lowest level in fifty years.",
    "The museum's new wing holds paintings from the early twentieth century, among them "
    "several landscapes that had not been shown in public since they were painted. Critics "
    "praised the lighting; visitors complained about the queues at the entrance.",
    "Transformers process every token of a sequence in parallel: each layer mixes information "
    "across positions with attention and then transforms every position on its own with a "
    "feed-forward network, whose hidden layer is usually four times as wide as the model.",
)


@dataclass(frozen=True)
class QuantizationReport:
    scheme: str  # "int8" or "none" (nothing could stay int8)
    linears: int  # aten::linear ops in the model
    int8_linears: int  # of which run in int8
    fp32_groups: list[str]  # weight shapes "out x in" kept in fp32
    min_cosine: float  # lowest cosine to fp32 over CHECK_TEXTS
    mean_cosine: float
    seconds: float


def quantize_int8(module: torch.jit.ScriptModule, task: Task, *, min_cosine: float = MIN_COSINE) -> tuple[torch.jit.ScriptModule, QuantizationReport]:
    """``module`` with as many linears as possible in int8 while the lowest cosine to the
    fp32 outputs on ``CHECK_TEXTS`` stays at least ``min_cosine`` (``module`` itself and scheme
    "none" when no group can)."""
    started = time.perf_counter()
    reference = _outputs(module, task)
    weights = _linear_weights(module)
    order = _revert_order(weights)
    fp32_groups: list[tuple[int, int]] = []
    for step in range(len(order) + 1):
        fp32_groups = order[:step]
        kept = set(fp32_groups)
        if all(tuple(w.shape) in kept for w, _ in weights):
            break
        candidate = _quantized(module, weights, kept)
        cosines = _cosines(reference, _outputs(candidate, task))
        if min(cosines) >= min_cosine:
            int8 = sum(1 for w, _ in weights if tuple(w.shape) not in kept)
            report = QuantizationReport("int8", len(weights), int8, [f"{o}x{i}" for o, i in fp32_groups],
                                        round(min(cosines), 5), round(float(np.mean(cosines)), 5),
                                        round(time.perf_counter() - started, 2))  # fmt: skip
            return candidate, report
    report = QuantizationReport("none", len(weights), 0, [f"{o}x{i}" for o, i in order], 1.0, 1.0,
                                round(time.perf_counter() - started, 2))  # fmt: skip
    return module, report


def load_or_quantize(
    module: torch.jit.ScriptModule, task: Task, report_path: Path | None
) -> tuple[torch.jit.ScriptModule, QuantizationReport]:
    """``module`` quantized as the cached report at ``report_path`` (``<sha256>.int8.json``) says,
    or searched now (``quantize_int8``) and the report cached there.

    Only the decision is cached, not the quantized archive: the module always comes from the
    fp32 definition that ``workers.runtime.load_torchscript`` validated (the one loader; an int8
    archive holds custom classes its checks refuse), and re-deriving it from the report is one
    quantization pass, without the accuracy search's forward passes."""
    if report_path is not None and report_path.exists():
        report = QuantizationReport(**json.loads(report_path.read_text()))
        weights = _linear_weights(module)
        if report.linears == len(weights):
            if report.scheme == "none":
                return module, report
            fp32 = {(int(o), int(i)) for o, i in (group.split("x") for group in report.fp32_groups)}
            return _quantized(module, weights, fp32), report
        log.warning("cached quantization report %s does not fit this model; searching again", report_path.name)
    quantized, report = quantize_int8(module, task)
    if report_path is not None:
        _write_atomically(report_path, json.dumps(asdict(report)).encode())
    return quantized, report


def cosines_to_fp32(fp32: torch.jit.ScriptModule, other: torch.jit.ScriptModule, task: Task, texts: Sequence[str] = CHECK_TEXTS) -> list[float]:
    """Per text, the cosine between the two modules' outputs (the benchmark's accuracy check)."""
    return _cosines(_outputs(fp32, task, texts), _outputs(other, task, texts))


# ---- graph surgery -----------------------------------------------------------------------------


def _linear_weights(module: torch.jit.ScriptModule) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every ``aten::linear`` of the forward graph, in graph order."""
    found: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    clone = _clone(module)  # held: its graph dies with it
    for node in clone.graph.findAllNodes("aten::linear"):  # type: ignore[attr-defined]
        found.append((_value(node.inputsAt(1)), _value(node.inputsAt(2))))
    return found


def _value(value: Any) -> Any:
    """A constant input's tensor; for an attribute (an unfrozen module), the attribute fetched."""
    ivalue = value.toIValue()
    if ivalue is None and value.node().kind() != "prim::Constant":
        raise TypeError("only models with constant linear weights can be quantized")
    return ivalue


def _revert_order(weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list[tuple[int, int]]:
    """Weight shapes (out, in) in the order they go back to fp32: down-projections (in > out),
    then up-projections, then square ones; larger first within each."""
    shapes = {(int(w.shape[0]), int(w.shape[1])) for w, _ in weights if w.dim() == 2}

    def rank(shape: tuple[int, int]) -> tuple[int, int]:
        out_features, in_features = shape
        kind = 0 if in_features > out_features else 1 if out_features > in_features else 2
        return kind, -out_features * in_features

    return sorted(shapes, key=rank)


def _quantized(
    module: torch.jit.ScriptModule, weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]], fp32: set[tuple[int, int]]
) -> torch.jit.ScriptModule:
    """All linears dynamically quantized, then those whose weight shape is in ``fp32`` put back."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic_jit

    quantized = quantize_dynamic_jit(_clone(module), {"": per_channel_dynamic_qconfig})
    graph = quantized.graph
    nodes = list(graph.findAllNodes("quantized::linear_dynamic"))
    if len(nodes) != len(weights):
        raise TypeError(f"quantized {len(nodes)} of {len(weights)} linears")
    for node, (weight, bias) in zip(nodes, weights, strict=True):
        if tuple(weight.shape) not in fp32:
            continue
        with graph.insert_point_guard(node):
            linear = graph.insertNode(graph.create("aten::linear", [node.inputsAt(0), graph.insertConstant(weight), graph.insertConstant(bias)]))
        linear.output().setType(node.output().type())
        node.output().replaceAllUsesWith(linear.output())
        node.destroy()
    torch._C._jit_pass_dce(graph)
    return quantized


def _clone(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A fresh, frozen copy of the (validated) fp32 module, through the one loader."""
    from workers.runtime import load_torchscript

    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    clone = load_torchscript(buffer.getvalue())
    try:
        return torch.jit.freeze(clone)  # weights become constants (eland's traces keep attributes)
    except RuntimeError:
        return clone


# ---- accuracy ----------------------------------------------------------------------------------


def _outputs(module: torch.jit.ScriptModule, task: Task, texts: Sequence[str] = CHECK_TEXTS) -> list[np.ndarray]:
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is None:
        raise TypeError("only models with a tokenizer can be quantized")
    with torch.jit.optimized_execution(False):  # no profiling runs: each module runs these texts once
        return [forward(module, [tokenizer.tokenize(text).windows[0]], tokenizer).reshape(-1) for text in texts]


def _cosines(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> list[float]:
    out = []
    for a, b in zip(reference, other, strict=True):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        denominator = float(np.linalg.norm(a64) * np.linalg.norm(b64))
        out.append(float(a64 @ b64) / denominator if denominator else 1.0)
    return out


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)

