"""int8 quantization of a deployment's model (``inferq_quantization=int8``): graph-mode dynamic
quantization of the uploaded TorchScript, linears put back in fp32 until the outputs stay within
0.99 cosine of fp32, cached per model. all-MiniLM-L6-v2 from the gt package, no cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.start_params import parse_start
from shared import task_config
from shared.errors import IllegalArgument
from workers.quantization import CHECK_TEXTS, MIN_COSINE, cosines_to_fp32, load_or_quantize
from workers.runtime import load_torchscript
from workers.tasks import build_task

pytestmark = pytest.mark.slow  # tracing and quantizing MiniLM: ~30 s of CPU

OTHER_TEXTS = ("a short query", "what is the capital of france", "int8 weights, fp32 activations, dynamic scales " * 8)


def kinds(module: torch.jit.ScriptModule) -> list[str]:
    return [node.kind() for node in module.graph.findAllNodes("quantized::linear_dynamic")] + [
        node.kind() for node in module.graph.findAllNodes("aten::linear")
    ]


def test_minilm_in_int8_stays_within_the_cosine_floor_and_is_cached(minilm_traced: Any, tmp_path: Path) -> None:
    fp32 = load_torchscript(minilm_traced.torchscript)
    task = build_task(task_config.normalize_inference_config(minilm_traced.config["inference_config"]), minilm_traced.vocabulary)
    report_path = tmp_path / "model.int8.json"

    quantized, report = load_or_quantize(fp32, task, report_path)

    assert report.scheme == "int8"
    assert 0 < report.int8_linears < report.linears  # the feed-forward layers lose too much in int8
    assert report.min_cosine >= MIN_COSINE
    assert kinds(quantized).count("quantized::linear_dynamic") == report.int8_linears
    assert min(cosines_to_fp32(fp32, quantized, task, CHECK_TEXTS + OTHER_TEXTS)) >= MIN_COSINE
    assert report_path.exists()

    cached, cached_report = load_or_quantize(fp32, task, report_path)  # from the report: no search
    assert cached_report == report
    assert kinds(cached) == kinds(quantized)
    assert cosines_to_fp32(quantized, cached, task) == pytest.approx([1.0] * len(CHECK_TEXTS), abs=1e-6)


def test_the_start_parameter() -> None:
    assert parse_start("m", {}, {}).quantization == "none"
    assert parse_start("m", {"inferq_quantization": "INT8"}, {}).quantization == "int8"
    assert parse_start("m", {}, {"inferq_quantization": "none"}).quantization == "none"
    with pytest.raises(IllegalArgument, match=r"\[inferq_quantization\] must be one of"):
        parse_start("m", {"inferq_quantization": "int4"}, {})
