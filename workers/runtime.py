"""A deployment's model on one node: the TorchScript module and its task, loaded once.

Definitions come from Redis (no shared filesystem between nodes) and are kept on local disk
under their content hash, so a restart or a second deployment of the same definition loads
from disk. Every allocation of the deployment on this node uses this one copy (the allocation
threads share the module and the task: no per-request model or tokenizer lookup), warmed up
with a few forward passes before the first allocation starts.
"""

from __future__ import annotations

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

from shared.model_store import read_definition, read_vocabulary
from workers.tasks import Task, build_task
from workers.tasks.base import forward

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    module: torch.jit.ScriptModule
    task: Task
    sha256: str


def _local_copy(client: redis.Redis, model_id: str, sha256: str, model_dir: str) -> Path:
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha256}.pt"
    if path.exists():
        return path
    data = read_definition(client, model_id, sha256)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
    return path


def load_model(client: redis.Redis, doc: dict[str, Any], model_dir: str) -> LoadedModel:
    model_id, sha256 = str(doc["model_id"]), str(doc["model_sha256"])
    if model_dir:
        path = _local_copy(client, model_id, sha256, model_dir)
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.jit.load(io.BytesIO(read_definition(client, model_id, sha256)), map_location="cpu")
    module.eval()
    vocabulary = read_vocabulary(client, model_id)
    task = build_task(doc["inference_config"], vocabulary)
    warm_up(module, task)
    log.info("loaded model %s (%s) for %s", model_id, sha256[:12], doc["deployment_id"])
    return LoadedModel(module=module, task=task, sha256=sha256)


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
