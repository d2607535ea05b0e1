"""Parameters of start / update / stop, from the query string and the JSON body (pure).

A parameter may come from either place; the same name with different values in both is a
400. Validation failures are gathered into one ``action_request_validation_exception`` with
Elasticsearch's exact messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.adaptive_settings import AdaptiveAllocations, check_exclusive, parse_adaptive_allocations
from gateway.http import parse_bool, parse_int
from shared.errors import BadRequest, IllegalArgument, ValidationCollector, XContentParseError
from shared.model_store import valid_id
from shared.units import parse_byte_size, parse_time_ms

DEFAULT_QUEUE_CAPACITY = 10_000  # Elasticsearch 9
MAX_QUEUE_CAPACITY = 100_000
DEFAULT_START_TIMEOUT_MS = 30_000.0
WAIT_FOR_VALUES = ("starting", "started", "fully_allocated")
PRIORITIES = ("normal", "low")
# inferq extensions (not Elasticsearch's): inferq_quantization=int8 serves the deployment with
# int8 linear layers where they stay within 0.99 cosine of fp32 (workers/quantization.py)
QUANTIZATIONS = ("none", "int8")
EXTENSION_PARAMS = ("inferq_quantization",)

START_PARAMS = (
    "deployment_id",
    "number_of_allocations",
    "threads_per_allocation",
    "queue_capacity",
    "cache_size",
    "timeout",
    "wait_for",
    "priority",
    "model_threads",
    "inference_threads",
)
START_BODY_FIELDS = (*START_PARAMS, *EXTENSION_PARAMS, "model_id", "adaptive_allocations")


@dataclass(frozen=True)
class StartParams:
    model_id: str
    deployment_id: str
    number_of_allocations: int
    threads_per_allocation: int
    queue_capacity: int
    cache_size_bytes: int | None  # None: default to the model's size
    cache_size_text: str | None
    timeout_ms: float
    wait_for: str
    priority: str
    adaptive_allocations: AdaptiveAllocations | None = None
    quantization: str = "none"


def merge_params(
    query: Mapping[str, str], body: Mapping[str, Any], names: tuple[str, ...]
) -> dict[str, Any]:
    """One value per name from query and body; a differing duplicate is a 400."""
    merged: dict[str, Any] = {}
    for name in names:
        in_query, in_body = name in query, name in body
        if in_query and in_body and str(query[name]).lower() != str(body[name]).lower():
            raise BadRequest(
                f"The parameter {name} in the body is different from the parameter {name} in the query"
            )
        if in_body:
            merged[name] = body[name]
        elif in_query:
            merged[name] = query[name]
    return merged


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def parse_start(model_id: str, query: Mapping[str, str], body: Mapping[str, Any]) -> StartParams:
    for name in body:
        if name not in START_BODY_FIELDS:
            raise XContentParseError(f"[1:2] [start_trained_model_deployment] unknown field [{name}]")
    if "model_id" in body and body["model_id"] != model_id:
        raise BadRequest(f"Inconsistent model_id; '{body['model_id']}' specified in the body differs from '{model_id}' specified as a URL argument")
    raw = merge_params(query, body, (*START_PARAMS, *EXTENSION_PARAMS))
    if "number_of_allocations" not in raw and "model_threads" in raw:
        raw["number_of_allocations"] = raw["model_threads"]
    if "threads_per_allocation" not in raw and "inference_threads" in raw:
        raw["threads_per_allocation"] = raw["inference_threads"]

    wait_for = str(raw.get("wait_for", "started")).lower()
    if wait_for not in WAIT_FOR_VALUES:
        raise IllegalArgument(
            "No enum constant org.elasticsearch.xpack.core.ml.inference.assignment.AllocationStatus.State."
            + str(raw.get("wait_for")).upper()
        )
    priority = str(raw.get("priority", "normal")).lower()
    if priority not in PRIORITIES:
        raise IllegalArgument(f"No enum constant org.elasticsearch.xpack.core.ml.inference.assignment.Priority.{priority.upper()}")
    quantization = str(raw.get("inferq_quantization", "none")).lower()
    if quantization not in QUANTIZATIONS:
        raise IllegalArgument(f"[inferq_quantization] must be one of {list(QUANTIZATIONS)}, got [{raw['inferq_quantization']}]")
    timeout_ms = parse_time_ms(raw["timeout"], "timeout") if "timeout" in raw else DEFAULT_START_TIMEOUT_MS
    cache_size_bytes: int | None = None
    cache_text: str | None = None
    if "cache_size" in raw:
        cache_size_bytes = parse_byte_size(raw["cache_size"], "cache_size")
        cache_text = f"{cache_size_bytes}b"

    adaptive = (
        parse_adaptive_allocations(body["adaptive_allocations"]).without_unset()
        if body.get("adaptive_allocations") is not None
        else None
    )
    count_given = "number_of_allocations" in raw
    default_count = adaptive.initial_allocations if adaptive is not None and adaptive.is_enabled else 1
    allocations = parse_int(raw.get("number_of_allocations", default_count), "number_of_allocations")
    threads = parse_int(raw.get("threads_per_allocation", 1), "threads_per_allocation")
    capacity = parse_int(raw.get("queue_capacity", DEFAULT_QUEUE_CAPACITY), "queue_capacity")

    deployment_id = str(raw.get("deployment_id") or model_id)
    errors = ValidationCollector()
    errors.check(
        valid_id(deployment_id),
        f"Invalid deployment_id; '{deployment_id}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or "
        "underscores; must start and end with alphanumeric",
    )
    errors.check(allocations >= 1, "[number_of_allocations] must be a positive integer")
    check_exclusive(adaptive, count_given, errors)
    if adaptive is not None:
        adaptive.validate(errors)
    errors.check(
        _power_of_two(threads) and threads <= 32,
        "[threads_per_allocation] must be a power of 2 less than or equal to 32",
    )
    errors.check(capacity >= 1, "[queue_capacity] must be a positive integer")
    errors.check(capacity <= MAX_QUEUE_CAPACITY, f"[queue_capacity] must be less than {MAX_QUEUE_CAPACITY}")
    errors.check(timeout_ms > 0, "[timeout] must be positive")
    if priority == "low":
        errors.check(allocations == 1, "[number_of_allocations] must be 1 when [priority] is low")
        errors.check(threads == 1, "[threads_per_allocation] must be 1 when [priority] is low")
    errors.raise_if_any()

    return StartParams(
        model_id=model_id,
        deployment_id=deployment_id,
        number_of_allocations=allocations,
        threads_per_allocation=threads,
        queue_capacity=capacity,
        cache_size_bytes=cache_size_bytes,
        cache_size_text=cache_text,
        timeout_ms=timeout_ms,
        wait_for=wait_for,
        priority=priority,
        adaptive_allocations=adaptive,
        quantization=quantization,
    )


@dataclass(frozen=True)
class StopParams:
    allow_no_match: bool
    force: bool
    finish_pending_work: bool


STOP_PARAMS = ("allow_no_match", "force", "finish_pending_work")


def parse_stop(deployment_id: str, query: Mapping[str, str], body: Mapping[str, Any]) -> StopParams:
    for name in body:
        if name not in (*STOP_PARAMS, "id", "model_id", "timeout"):
            raise XContentParseError(f"[1:2] [stop_trained_model_deployment] unknown field [{name}]")
    for id_field in ("id", "model_id"):
        if id_field in body and body[id_field] != deployment_id:
            raise BadRequest(f"Inconsistent {id_field}; '{body[id_field]}' specified in the body differs from '{deployment_id}' specified as a URL argument")
    raw = merge_params(query, body, STOP_PARAMS)
    return StopParams(
        allow_no_match=parse_bool(raw.get("allow_no_match", True), "allow_no_match"),
        force=parse_bool(raw.get("force", False), "force"),
        finish_pending_work=parse_bool(raw.get("finish_pending_work", False), "finish_pending_work"),
    )


@dataclass(frozen=True)
class UpdateParams:
    number_of_allocations: int | None
    # None: not in the request; ``adaptive_settings.RESET``: an explicit null (remove them)
    adaptive_allocations: AdaptiveAllocations | None


def parse_update(query: Mapping[str, str], body: Mapping[str, Any]) -> UpdateParams:
    for name in body:
        if name not in ("number_of_allocations", "adaptive_allocations", "timeout"):
            raise XContentParseError(f"[1:2] [update_trained_model_deployment] unknown field [{name}]")
    raw = merge_params(query, body, ("number_of_allocations",))
    adaptive = parse_adaptive_allocations(body["adaptive_allocations"]) if "adaptive_allocations" in body else None
    if "number_of_allocations" not in raw:
        return UpdateParams(None, adaptive)
    allocations = parse_int(raw["number_of_allocations"], "number_of_allocations")
    errors = ValidationCollector()
    errors.check(allocations >= 1, "[number_of_allocations] must be a positive integer")
    check_exclusive(adaptive, True, errors)
    errors.raise_if_any()
    return UpdateParams(allocations, adaptive)
