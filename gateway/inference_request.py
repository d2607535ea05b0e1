"""The ``POST _inference/...`` side, the way Elasticsearch 9's inference plugin does it (pure):

- ``parse_inference_request``: the body (``InferenceAction.Request``: its parser, then
  ``validate()`` for the endpoint's task type);
- ``render_*``: ES's result shapes built from ``_infer`` results (``TextEmbeddingFloatResults``,
  ``SparseEmbeddingResults``, ``RankedDocsResults``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import ActionRequestValidation, IllegalArgument, XContentParseError

REQUEST_FIELDS = ("input", "input_type", "task_settings", "query", "return_documents", "top_n", "timeout")
INPUT_TYPES = ("ingest", "search", "classification", "clustering", "internal_ingest", "internal_search")


@dataclass(frozen=True)
class InferenceRequest:
    inputs: list[str]
    query: str | None
    return_documents: bool | None
    top_n: int | None
    task_settings: dict[str, Any]
    timeout: Any
    input_type: str | None = None  # ``ingest`` goes to the bulk lane (``shared.queue.lane_for_input_type``)


def parse_inference_request(task_type: str, body: Mapping[str, Any]) -> InferenceRequest:
    """``InferenceAction.Request``: the parser, then ``validate()`` for the endpoint's task type."""
    parser = "cluster:internal/xpack/inference"
    for name in body:
        if name not in REQUEST_FIELDS:
            raise XContentParseError(f"[1:2] [{parser}] unknown field [{name}]")
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        inputs: list[str] | None = [raw_input]
    elif raw_input is None:
        inputs = None
    elif isinstance(raw_input, list) and all(isinstance(i, str) for i in raw_input):
        inputs = list(raw_input)
    else:
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [input]")
    query = body.get("query")
    if query is not None and not isinstance(query, str):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [query]")
    return_documents = body.get("return_documents")
    if return_documents is not None and not isinstance(return_documents, bool):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [return_documents]")
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int)):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [top_n]")
    task_settings = body.get("task_settings") or {}
    if not isinstance(task_settings, Mapping):
        raise XContentParseError(f"[1:2] [{parser}] failed to parse field [task_settings]")
    input_type = body.get("input_type")
    if input_type is not None and str(input_type).lower() not in INPUT_TYPES:
        raise IllegalArgument(f"No enum constant org.elasticsearch.inference.InputType.{str(input_type).upper()}")

    def invalid(message: str) -> ActionRequestValidation:
        return ActionRequestValidation([message])

    if inputs is None:
        raise invalid("Field [input] cannot be null")
    if not inputs:
        raise invalid("Field [input] cannot be an empty array")
    if task_type == "rerank":
        if query is None:
            raise invalid("Field [query] cannot be null for task type [rerank]")
        if not query:
            raise invalid("Field [query] cannot be empty for task type [rerank]")
    else:
        if return_documents is not None:
            raise invalid(f"Field [return_documents] cannot be specified for task type [{task_type}]")
        if top_n is not None:
            raise invalid(f"Field [top_n] cannot be specified for task type [{task_type}]")
        if query is not None:
            raise invalid(f"Field [query] cannot be specified for task type [{task_type}]")
    if task_type != "text_embedding" and input_type is not None and not str(input_type).lower().startswith("internal"):
        raise invalid(f"Field [input_type] cannot be specified for task type [{task_type}]")
    if task_type == "rerank" and top_n is not None and top_n < 1:
        raise invalid("Field [top_n] must be a positive integer")
    return InferenceRequest(
        inputs, query, return_documents, top_n, dict(task_settings), body.get("timeout"),
        str(input_type).lower() if input_type is not None else None,
    )  # fmt: skip


# ---- results -------------------------------------------------------------------------------------


def render_text_embedding(results: Sequence[Mapping[str, Any]], results_field: str) -> dict[str, Any]:
    return {"text_embedding": [{"embedding": r[results_field]} for r in results]}


def render_sparse_embedding(results: Sequence[Mapping[str, Any]], results_field: str) -> dict[str, Any]:
    return {
        "sparse_embedding": [
            {"is_truncated": bool(r.get("is_truncated", False)), "embedding": r[results_field]} for r in results
        ]
    }


def render_rerank(
    results: Sequence[Mapping[str, Any]], results_field: str, inputs: Sequence[str], *, return_documents: bool,
    top_n: int | None,
) -> dict[str, Any]:
    """``textSimilarityResultsToRankedDocs``: by score, highest first (ties keep input order);
    ``top_n`` keeps the first n (more than there are: all of them)."""
    ranked = sorted(
        ((i, float(r[results_field])) for i, r in enumerate(results)), key=lambda pair: (-pair[1], pair[0])
    )
    if top_n is not None:
        ranked = ranked[:top_n]
    docs: list[dict[str, Any]] = []
    for index, score in ranked:
        doc: dict[str, Any] = {"index": index, "relevance_score": score}
        if return_documents:
            doc["text"] = inputs[index]
        docs.append(doc)
    return {"rerank": docs}
