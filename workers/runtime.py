"""A deployment's model on one node: the TorchScript module and its task, loaded once.

Definitions come from Redis (no shared filesystem between nodes) and are kept on local disk
under their content hash, so a restart or a second deployment of the same definition loads
from disk. Every allocation of the deployment on this node uses this one copy (the allocation
threads share the module and the task: no per-request model or tokenizer lookup), warmed up
with a few forward passes before the first allocation starts.

This is the one place a worker turns bytes into a TorchScript module (``load_torchscript``):
the archive is validated without running it (``shared.model_validation``) before
``torch.jit.load`` sees it, from the very bytes that were validated (never re-read from disk),
and the loaded module's inlined graphs are checked against the same allowlist before its first
forward pass (ml-cpp's check, a second layer). The worker writes only under ``model_dir``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import torch

from shared.errors import BadRequest
from shared.model_store import read_definition, read_vocabulary
from shared.model_validation import Allowlist, default_allowlist, validate_archive
from workers.tasks import Task, build_task
from workers.tasks.base import forward

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    module: torch.jit.ScriptModule
    task: Task
    sha256: str


def definition_bytes(client: redis.Redis, model_id: str, sha256: str, model_dir: str) -> bytes:
    """The definition, from the local copy when its content hash still matches, else from Redis
    (then kept locally, written only under ``model_dir``)."""
    if not model_dir:
        return read_definition(client, model_id, sha256)
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{sha256}.pt"
    if path.exists():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
        log.warning("local copy %s does not match its hash; fetching it again", path.name)
    data = read_definition(client, model_id, sha256)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
    return data


def _graph_kinds(block: Any, found: set[str]) -> None:
    for node in block.nodes():
        found.add(node.kind())
        for inner in node.blocks():
            _graph_kinds(inner, found)


def check_graph(module: torch.jit.ScriptModule, allowlist: Allowlist | None = None) -> None:
    """Every node of every method's inlined graph, in every submodule, is an allowed operation."""
    allowlist = allowlist or default_allowlist()
    found: dict[str, str] = {}
    for name, submodule in module.named_modules():
        for method in submodule._c._method_names():
            kinds: set[str] = set()
            _graph_kinds(submodule._c._get_method(method).inlined_graph, kinds)
            for kind in kinds:
                found.setdefault(kind, f"{name or 'model'}.{method}")
    refusal = allowlist.refusal(found)
    if refusal is not None:
        raise refusal


def load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    """Validate, then load, then check the graph: the only ``torch.jit.load`` of a definition."""
    validate_archive(data)
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise BadRequest(f"model definition is not a loadable TorchScript archive: {exc}".split("\n")[0]) from exc
    check_graph(module)
    module.eval()
    return module


def load_model(client: redis.Redis, doc: dict[str, Any], model_dir: str) -> LoadedModel:
    """The deployment's model, in int8 when it was started with ``inferq_quantization=int8``."""
    model_id, sha256 = str(doc["model_id"]), str(doc["model_sha256"])
    module = load_torchscript(definition_bytes(client, model_id, sha256, model_dir))
    vocabulary = read_vocabulary(client, model_id)
    task = build_task(doc["inference_config"], vocabulary)
    if doc.get("quantization", "none") == "int8":
        module = _quantized(module, task, Path(model_dir) / f"{sha256}.int8.json" if model_dir else None)
    warm_up(module, task)
    log.info("loaded model %s (%s) for %s", model_id, sha256[:12], doc["deployment_id"])
    return LoadedModel(module=module, task=task, sha256=sha256)


def _quantized(module: torch.jit.ScriptModule, task: Task, report_path: Path | None) -> torch.jit.ScriptModule:
    """int8 linears where they keep the outputs within ``MIN_COSINE`` of fp32 (``workers.quantization``);
    a model that cannot be quantized is served as it is."""
    from workers.quantization import load_or_quantize

    try:
        quantized, report = load_or_quantize(module, task, report_path)
    except Exception as exc:
        log.warning("int8 quantization failed, serving fp32: %s: %s", type(exc).__name__, exc)
        return module
    log.info("quantization: %s", report)
    return quantized


WARM_UP_TEXTS = ("warm up", "warm up the model before the first request comes in")


def warm_up(module: torch.jit.ScriptModule, task: Task) -> None:
    """A few forward passes before the first request, so it does not pay TorchScript's
    profiling runs (the first two calls of a module profile and optimize its graph: hundreds
    of ms). Rows come straight from the tokenizer, so no task-specific input is needed; a model
    that fails here is left to fail on its requests, as it would have without a warm-up."""
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is None:
        return
    started = time.perf_counter()
    try:
        rows = [tokenizer.tokenize(text).windows[0] for text in WARM_UP_TEXTS]
        for batch in ([rows[0]], [rows[0]], rows):
            forward(module, batch, tokenizer)
    except Exception as exc:
        log.warning("warm-up forward failed: %s", exc)
        return
    log.info("warm-up: %.0f ms", (time.perf_counter() - started) * 1000)
