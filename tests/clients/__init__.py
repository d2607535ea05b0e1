"""The real clients (elasticsearch-py 8.x and 9.x, eland), installed per test session, and the
driver scripts that run them against a cluster in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# the documents every driver infers (the tests compare them with a reference deployment)
SAMPLE_TEXTS = ("the quick brown fox", "a queue of documents", "the quick brown fox")
# what the inference driver reranks, and against which query
RERANK_QUERY = "where is the fox?"
RERANK_DOCS = ("the fox is in the wood", "nothing to see", "the quick brown fox")


def write_model_files(traced: Any, folder: Path) -> Path:
    """A traced model as the files eland uploads: model.pt, config.json, vocabulary.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(traced.torchscript)
    (folder / "config.json").write_text(json.dumps(traced.config))
    (folder / "vocabulary.json").write_text(json.dumps(traced.vocabulary))
    return folder
