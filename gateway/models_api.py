"""Model CRUD handlers: config, definition parts, vocabulary, GET and DELETE (spec §4)."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from aiohttp import web

from gateway.app_keys import CONTROL, MODELS, PRODUCER, REDIS
from gateway.http import (
    check_fields,
    check_params,
    json_response,
    parse_int,
    query_bool,
    query_int,
    read_object,
)
from gateway.inference_store import AliasStore, aliases_of
from shared import task_config
from shared.errors import (
    ActionRequestValidation,
    BadRequest,
    Conflict,
    ValidationCollector,
    model_not_found,
)
from shared.model_store import MAX_DEFINITION_BYTES, MAX_ID_LENGTH, valid_id
from shared.units import parse_time_ms

VERSION = "9.2.0"
NATIVE_INDEX = ".ml-inference-native-000002"
PUT_FIELDS = (
    "model_id",
    "model_type",
    "inference_config",
    "input",
    "description",
    "tags",
    "metadata",
    "model_size_bytes",
    "platform_architecture",
    "prefix_strings",
    "definition",
    "compressed_definition",
    "estimated_operations",
    "default_field_map",
    "location",
)
ILLEGAL_AT_CREATION = ("version", "created_by", "create_time", "license_level", "model_package")
INCLUDE_VALUES = (
    "definition", "definition_status", "feature_importance_baseline", "hyperparameters", "total_feature_importance",
)  # fmt: skip
GENERATED_FIELDS = ("created_by", "version", "create_time", "model_size_bytes", "estimated_operations", "license_level")


def _validate_new_config(model_id: str, body: dict[str, Any]) -> None:
    errors = ValidationCollector()
    if not valid_id(model_id):
        errors.add(
            f"Invalid model_id; '{model_id}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or "
            "underscores; must start and end with alphanumeric"
            if len(model_id) <= MAX_ID_LENGTH
            else f"model_id [{model_id}] is too long; must not be longer than {MAX_ID_LENGTH}"
        )
    if "definition" not in body and "compressed_definition" not in body and "model_type" not in body:
        errors.add("[model_type] must be set if [definition] is not defined.")
    if body.get("inference_config") is None:
        errors.add("[inference_config] must not be null.")
    for name in ILLEGAL_AT_CREATION:
        if name in body:
            errors.add(f"illegal to set [{name}] at inference model creation")
    metadata = body.get("metadata") or {}
    for name in ("total_feature_importance", "model_aliases"):
        if isinstance(metadata, dict) and name in metadata:
            errors.add(f"illegal to set [metadata.{name}] at inference model creation")
    for tag in body.get("tags") or []:
        if tag == model_id:
            errors.add("none of the tags must equal the model_id")
    errors.raise_if_any()


async def put_model(request: web.Request) -> web.Response:
    check_params(request, ("defer_definition_decompression", "wait_for_completion"))
    model_id = request.match_info["model_id"]
    body = await read_object(request, required=True)
    for name in body:
        if name not in PUT_FIELDS and name not in ILLEGAL_AT_CREATION:
            check_fields({name: None}, PUT_FIELDS, "trained_model_config")
    if "model_id" in body and body["model_id"] != model_id:
        raise BadRequest(
            f"Inconsistent model_id; '{body['model_id']}' specified in the body differs from '{model_id}' "
            "specified as a URL argument"
        )
    _validate_new_config(model_id, body)
    if body.get("model_type", "pytorch") != "pytorch":
        raise BadRequest(f"model_type [{body.get('model_type')}] is not supported; only [pytorch] models can be stored")
    inference_config = task_config.normalize_inference_config(body["inference_config"])
    task = task_config.task_type(inference_config)
    inference_config[task]["vocabulary"] = {"index": NATIVE_INDEX}
    config: dict[str, Any] = {
        "model_type": "pytorch",
        "created_by": "api_user",
        "version": "12.0.0",
        "create_time": int(time.time() * 1000),
        "model_size_bytes": int(body.get("model_size_bytes", 0)),
        "estimated_operations": int(body.get("estimated_operations", 0)),
        "license_level": "platinum",
        "tags": list(body.get("tags") or []),
        "input": body.get("input") or {"field_names": ["text_field"]},
        "inference_config": inference_config,
        "location": {"index": {"name": NATIVE_INDEX}},
    }
    for optional in ("description", "metadata", "platform_architecture", "prefix_strings"):
        if body.get(optional) is not None:
            config[optional] = body[optional]
    stored = await request.app[MODELS].create(model_id, config)
    return json_response(request, render_config(stored, exclude_generated=False, definition_status=None))


def render_config(stored: dict[str, Any], *, exclude_generated: bool, definition_status: bool | None) -> dict[str, Any]:
    config = {k: v for k, v in stored.items() if not k.startswith("_")}
    ordered: dict[str, Any] = {"model_id": config.pop("model_id")}
    ordered.update(config)
    if exclude_generated:
        for name in GENERATED_FIELDS:
            ordered.pop(name, None)
    if definition_status is not None:
        ordered["fully_defined"] = definition_status
    return ordered


async def get_models(request: web.Request) -> web.Response:
    check_params(
        request,
        ("allow_no_match", "decompress_definition", "exclude_generated", "from", "size", "include",
         "tags", "include_model_definition"),
    )
    store = request.app[MODELS]
    aliases = await AliasStore(request.app[REDIS]).all()
    expression = resolve_aliases(request.match_info.get("model_id", "_all"), aliases)
    allow_no_match = query_bool(request, "allow_no_match", True)
    include = parse_include(request.query.get("include", ""))
    if query_bool(request, "include_model_definition", False):  # the deprecated spelling of include=definition
        include.add("definition")
    ids = await store.match(expression, allow_no_match=allow_no_match)
    if "definition" in include and len(ids) > 1:
        raise BadRequest("Getting model definition is not supported when getting more than one model")
    if "definition" in include:
        raise BadRequest(
            "[include=definition] is not supported: inferq keeps PyTorch definitions as the raw parts they were "
            "uploaded in"
        )
    tags = [t for t in request.query.get("tags", "").split(",") if t]
    start, size = query_int(request, "from", 0), query_int(request, "size", 100)
    exclude_generated = query_bool(request, "exclude_generated", False)
    configs: list[dict[str, Any]] = []
    for model_id in ids:
        try:
            stored = await store.get_config(model_id)
        except Exception:
            continue  # deleted meanwhile
        if tags and not set(tags).issubset(stored.get("tags") or []):
            continue
        status = None
        if "definition_status" in include:
            definition = await store.definition_status(model_id)
            status = bool(definition and definition.complete)
        model_aliases = aliases_of(aliases, model_id)
        if model_aliases:  # as ES: the aliases pointing at the model, in its metadata
            stored = stored | {"metadata": dict(stored.get("metadata") or {}) | {"model_aliases": model_aliases}}
        configs.append(render_config(stored, exclude_generated=exclude_generated, definition_status=status))
    if not configs and not allow_no_match and expression not in ("_all", "*"):
        raise model_not_found(expression)
    page = configs[start : start + size]
    return json_response(request, {"count": len(configs), "trained_model_configs": page})


def resolve_aliases(expression: str, aliases: dict[str, str]) -> str:
    """A model id expression with every model alias replaced by its model id."""
    return ",".join(aliases.get(t.strip(), t.strip()) for t in expression.split(",")) if aliases else expression


def parse_include(raw: str) -> set[str]:
    """``include``: Elasticsearch 9's values; anything else is its 400."""
    include = {i.strip() for i in raw.split(",") if i.strip()}
    unknown = sorted(include - set(INCLUDE_VALUES))
    if unknown:
        raise BadRequest(
            f"unknown [include] parameters [{', '.join(unknown)}]. Valid options are [{', '.join(INCLUDE_VALUES)}]"
        )
    return include


async def put_definition_part(request: web.Request) -> web.Response:
    check_params(request, ())
    model_id = request.match_info["model_id"]
    part = parse_int(request.match_info["part"], "part")
    body = await read_object(request, required=True)
    check_fields(body, ("definition", "total_definition_length", "total_parts"), "put_trained_model_definition_part")
    errors = ValidationCollector()
    for name in ("definition", "total_definition_length", "total_parts"):
        if body.get(name) is None:
            errors.add(f"[{name}] must not be null.")
    total_parts = parse_int(body.get("total_parts", 0), "total_parts")
    total_length = parse_int(body.get("total_definition_length", 0), "total_definition_length")
    errors.check(part >= 0, "[part] must be greater or equal to 0")
    errors.check(total_parts > 0, "[total_parts] must be greater than 0")
    errors.check(total_parts <= 10_000, "[total_parts] must be less than or equal to 10000")
    errors.check(total_length > 0, "[total_definition_length] must be greater than 0")
    errors.check(
        total_length <= MAX_DEFINITION_BYTES,
        f"[total_definition_length] must be less than or equal to {MAX_DEFINITION_BYTES}",
    )
    errors.check(part < total_parts or total_parts <= 0, "[part] must be less than total_parts")
    errors.raise_if_any()
    try:
        data = base64.b64decode(str(body["definition"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"[definition] is not valid base64: {exc}") from exc
    store = request.app[MODELS]
    if not await store.exists(model_id):
        raise model_not_found(model_id)
    await store.put_part(model_id, part, data, total_parts, total_length)
    status = await store.definition_status(model_id)
    if status is not None and status.complete:  # the last part: validate before anything can load it
        await store.checked_definition(model_id, status)
    return json_response(request, {"acknowledged": True})


async def put_vocabulary(request: web.Request) -> web.Response:
    check_params(request, ())
    model_id = request.match_info["model_id"]
    body = await read_object(request, required=True)
    check_fields(body, ("vocabulary", "merges", "scores"), "put_trained_model_vocabulary")
    vocabulary = body.get("vocabulary")
    errors = ValidationCollector()
    errors.check(isinstance(vocabulary, list) and len(vocabulary) > 0, "[vocabulary] must not be empty")
    scores = body.get("scores")
    if scores is not None and isinstance(vocabulary, list):
        errors.check(isinstance(scores, list) and len(scores) == len(vocabulary), "[scores] must have same length as [vocabulary]")
    errors.raise_if_any()
    if not all(isinstance(v, str) for v in vocabulary or []):
        raise ActionRequestValidation(["[vocabulary] must contain only strings"])
    store = request.app[MODELS]
    if not await store.exists(model_id):
        raise model_not_found(model_id)
    await store.put_vocabulary(model_id, {k: v for k, v in body.items() if v is not None})
    return json_response(request, {"acknowledged": True})


async def delete_model(request: web.Request) -> web.Response:
    check_params(request, ("force", "timeout"))
    model_id = request.match_info["model_id"]
    force = query_bool(request, "force", False)
    timeout_ms = parse_time_ms(request.query["timeout"], "timeout") if "timeout" in request.query else -1.0
    timeout_ms = timeout_ms if timeout_ms >= 0 else 30_000.0
    store = request.app[MODELS]
    if not await store.exists(model_id):
        raise model_not_found(model_id)
    view = await request.app[PRODUCER].watcher.refresh()
    deployments = view.by_model.get(model_id, [])
    if deployments and not force:
        raise Conflict(f"Cannot delete model [{model_id}] as it is currently deployed; use force to delete the model")
    for deployment_id in deployments:  # ``timeout``: how long each stop waits for its nodes
        await request.app[CONTROL].stop(deployment_id, finish_pending_work=False, timeout_s=timeout_ms / 1000)
    await store.delete(model_id)
    alias_store = AliasStore(request.app[REDIS])
    await alias_store.delete(*aliases_of(await alias_store.all(), model_id))  # ES drops a model's aliases with it
    return json_response(request, {"acknowledged": True})
