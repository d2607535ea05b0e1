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


# ---- reading a driver's run: {"steps": {name: {"status", "body"} | {"error": {...}}}} ----------


def ok(run: dict[str, Any], step: str) -> Any:
    """The body of a step that must have answered 200."""
    entry = run["steps"][step]
    assert entry.get("status") == 200, f"{step}: {entry}"
    return entry["body"]


def error(run: dict[str, Any], step: str) -> dict[str, Any]:
    """What the client raised for a step that must have failed."""
    entry = run["steps"][step]
    assert "error" in entry, f"{step} did not fail: {entry}"
    failure: dict[str, Any] = entry["error"]
    return failure


def assert_client_error(failure: dict[str, Any], exception: str, status: int, error_type: str, reason_part: str) -> None:
    """The client raised its own exception class for an Elasticsearch-shaped error body."""
    assert failure["class"] == exception and "ApiError" in failure["mro"]
    assert failure["status"] == status and failure["body"]["status"] == status
    assert failure["body"]["error"]["type"] == error_type
    assert reason_part in failure["body"]["error"]["reason"]
