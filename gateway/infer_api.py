"""``_infer``: decode, hand to the producer, splice the worker-encoded results (spec §2.4)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.app_keys import PRODUCER, SETTINGS
from gateway.http import check_params, raw_json_response, read_object
from shared.errors import BadRequest, TooLarge, ValidationError, XContentParseError
from shared.producer import DEFAULT_TIMEOUT_MS
from shared.settings import GatewaySettings
from shared.units import parse_time_ms


def _parse(request: web.Request, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None, float]:
    for name in body:
        if name not in ("docs", "inference_config", "timeout"):
            raise XContentParseError(f"[1:2] [infer_trained_model] unknown field [{name}]")
    docs = body.get("docs")
    if docs is None:
        raise BadRequest("[docs] must not be null.", error_type="action_request_validation_exception")
    if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
        raise XContentParseError("[docs] must be an array of objects")
    if not docs:
        raise BadRequest("Validation Failed: 1: at least one document is required;", error_type="action_request_validation_exception")
    check_limits(request.app[SETTINGS], docs)
    inference_config = body.get("inference_config")
    if inference_config is not None and not isinstance(inference_config, dict):
        raise XContentParseError("[inference_config] must be an object")
    raw_timeout = body.get("timeout", request.query.get("timeout"))
    timeout_ms = parse_time_ms(raw_timeout, "timeout") if raw_timeout is not None else DEFAULT_TIMEOUT_MS
    return docs, inference_config, timeout_ms


def check_limits(settings: GatewaySettings, docs: list[dict[str, Any]]) -> None:
    """Documents per request (400) and UTF-8 bytes per text (413), both documented limits."""
    if len(docs) > settings.max_docs_per_request:
        raise BadRequest(
            f"Validation Failed: 1: at most [{settings.max_docs_per_request}] documents are allowed per request;",
            error_type="action_request_validation_exception",
        )
    limit = settings.max_text_bytes
    for doc in docs:
        for value in doc.values():
            if isinstance(value, str) and len(value) * 4 > limit and len(value.encode("utf-8", "replace")) > limit:
                raise TooLarge(f"a document's text is longer than [{limit}] bytes")


async def infer(request: web.Request) -> web.Response:
    check_params(request, ("timeout",))
    body = await read_object(request, required=False)
    if not body:
        raise BadRequest("requires body")
    docs, inference_config, timeout_ms = _parse(request, body)
    results = await request.app[PRODUCER].infer(
        request.match_info["model_id"], docs, inference_config=inference_config, timeout_ms=timeout_ms
    )
    payload = b'{"inference_results":[' + b",".join(r.result_json for r in results) + b"]}"
    return raw_json_response(request, payload)


async def infer_deployment_legacy(request: web.Request) -> web.Response:
    """The deprecated ``deployment/_infer``: exactly one doc, the result returned flat."""
    check_params(request, ("timeout",))
    body = await read_object(request, required=False)
    if not body:
        raise BadRequest("requires body")
    docs, inference_config, timeout_ms = _parse(request, body)
    if len(docs) != 1:
        raise ValidationError("multiple documents are not supported")
    results = await request.app[PRODUCER].infer(
        request.match_info["model_id"], docs, inference_config=inference_config, timeout_ms=timeout_ms
    )
    return raw_json_response(request, results[0].result_json)
