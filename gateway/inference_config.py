"""Inference endpoint settings, the way Elasticsearch 9's inference plugin parses
them (pure: no I/O).

- ``parse_endpoint``: the body of ``PUT _inference[/<task_type>]/<id>`` for the ``elasticsearch``
  service (``TransportPutInferenceModelAction`` + ``ElasticsearchInternalService``), checked
  against the model's task; errors are the plugin's (``status_exception`` 400s for the
  service checks, ``validation_exception`` for the settings, ``illegal_argument_exception`` for
  a missing ``model_id``).
- ``parse_chunking``: ``chunking_settings`` (``ChunkingSettingsBuilder``): ``sentence`` (the
  default, 250 words, overlap 1), ``word`` and ``none``.
- ``render_service_settings`` / ``public_view``: an endpoint as ``ModelConfigurations`` renders it.

The ``POST`` side (request body, result shapes) is ``gateway.inference_request``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.adaptive_settings import AdaptiveAllocations
from shared.errors import (
    ActionRequestValidation,
    BadRequest,
    IllegalArgument,
    InferqError,
    ValidationCollector,
)
from shared.model_store import MODEL_ID_RE

SERVICE = "elasticsearch"
# Elasticsearch's TaskType enum (rest names); the elasticsearch service serves the first three
TASK_TYPES = ("text_embedding", "sparse_embedding", "rerank")
KNOWN_TASK_TYPES = (*TASK_TYPES, "completion", "chat_completion", "embedding", "any")
# the trained model's inference config -> the endpoint task type it serves
MODEL_TASK_TYPES = {"text_embedding": "text_embedding", "text_expansion": "sparse_embedding", "text_similarity": "rerank"}
RESERVED_IDS = (".elser-2-elasticsearch", ".multilingual-e5-small-elasticsearch", ".rerank-v1-elasticsearch")
BUILT_IN_MODELS = (
    ".elser_model_1", ".elser_model_2", ".elser_model_2_linux-x86_64",
    ".multilingual-e5-small", ".multilingual-e5-small_linux-x86_64", ".rerank-v1",
)  # fmt: skip
SIMILARITIES = ("cosine", "dot_product", "l2_norm")
ELEMENT_TYPES = ("byte", "float")
DEFAULT_CHUNKING = {"strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1}


class ValidationFailed(InferqError):
    """Elasticsearch's ``ValidationException``: 400 ``validation_exception``."""

    status = 400
    error_type = "validation_exception"

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__("Validation Failed: " + "".join(f"{i}: {m};" for i, m in enumerate(messages, start=1)))


def java_map(value: Mapping[str, Any]) -> str:
    """A map as Java's ``Map.toString`` prints it (ES puts it into some messages)."""
    return "{" + ", ".join(f"{k}={_java_value(v)}" for k, v in value.items()) + "}"


def _java_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return java_map(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_java_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


def unsupported_task_type(task_type: str) -> BadRequest:
    return BadRequest(f"The [{SERVICE}] service does not support task type [{task_type}]")


def parse_task_type(name: str) -> str:
    """A task type from a URL or a body (``TaskType.fromStringOrStatusException``)."""
    lowered = name.lower()
    if lowered not in KNOWN_TASK_TYPES:
        raise BadRequest(f"Unknown task_type [{name}]")
    return lowered


def resolve_task_type(url_task_type: str, body_task_type: Any) -> str:
    """``ServiceUtils.resolveTaskType``: ``any`` means the URL named none."""
    if body_task_type is None:
        if url_task_type == "any":
            raise BadRequest("model is missing required setting [task_type]")
        return url_task_type
    parsed = parse_task_type(str(body_task_type))
    if parsed == "any":
        raise BadRequest("task_type [any] is not valid type for inference")
    if url_task_type not in ("any", parsed):
        raise BadRequest(
            f"Cannot resolve conflicting task_type parameter in the request URL [{url_task_type}] and the request "
            f"body [{body_task_type}]"
        )
    return parsed


def model_task_type(model_id: str, inference_config: Mapping[str, Any], task_type: str) -> None:
    """``throwIfUnsupportedTaskType``: the model's task must be the endpoint's."""
    name = next(iter(inference_config), "")
    served = MODEL_TASK_TYPES.get(name)
    if served is None:
        raise BadRequest(f"Deployed model [{model_id}] has type [{name}] which does not map to any supported task types")
    if served != task_type:
        raise BadRequest(
            f"Deployed model [{model_id}] with type [{name}] does not match the requested task type [{task_type}]"
        )


# ---- service settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSettings:
    model_id: str | None
    deployment_id: str | None
    num_allocations: int | None
    num_threads: int | None
    adaptive_allocations: dict[str, Any] | None
    similarity: str | None
    element_type: str | None


def _positive_int(
    settings: dict[str, Any], name: str, errors: list[str], *, required: bool, section: str = "service_settings"
) -> int | None:
    """A positive integer setting of ``section``, with Elasticsearch's messages."""
    value = settings.pop(name, None)
    if value is None:
        if required:
            errors.append(f"[{section}] does not contain the required setting [{name}]")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(
            f"field [{name}] is not of the expected type. The value [{_java_value(value)}] cannot be converted to a "
            "[Integer]"
        )
        return None
    if value <= 0:
        errors.append(f"[{section}] Invalid value [{value}]. [{name}] must be a positive integer")
        return None
    return value


def _optional_str(settings: dict[str, Any], name: str, errors: list[str]) -> str | None:
    value = settings.pop(name, None)
    if value is None:
        return None
    if not isinstance(value, str):
        errors.append(
            f"field [{name}] is not of the expected type. The value [{_java_value(value)}] cannot be converted to a "
            "[String]"
        )
        return None
    if not value:
        errors.append(f"[service_settings] Invalid value empty string. [{name}] must be a non-empty string")
        return None
    return value


def _adaptive(settings: dict[str, Any], errors: list[str]) -> dict[str, Any] | None:
    """``removeAsAdaptiveAllocationsSettings``: the object is kept as given (after type checks)
    and handed to the deployment start unchanged."""
    raw = settings.pop("adaptive_allocations", None)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise BadRequest(
            f"field [adaptive_allocations] is not of the expected type. The value [{_java_value(raw)}] cannot be "
            "converted to a [Map]"
        )
    adaptive: dict[str, Any] = {}
    expected = {"enabled": bool, "min_number_of_allocations": int, "max_number_of_allocations": int}
    for name, value in raw.items():
        kind = expected.get(name)
        if kind is None:
            errors.append(f"[adaptive_allocations] does not allow the setting [{name}]")
        elif value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            errors.append(
                f"field [{name}] is not of the expected type. The value [{_java_value(value)}] cannot be converted to "
                f"a [{kind.__name__.replace('bool', 'Boolean').replace('int', 'Integer')}]"
            )
        else:
            adaptive[name] = value
    bounds = ValidationCollector()  # the bounds rules are the deployment's own (AdaptiveAllocationsSettings.validate)
    AdaptiveAllocations(
        enabled=adaptive.get("enabled"),
        min_number_of_allocations=adaptive.get("min_number_of_allocations"),
        max_number_of_allocations=adaptive.get("max_number_of_allocations"),
    ).validate(bounds)
    errors.extend(bounds.messages)
    return adaptive


def _enum(settings: dict[str, Any], name: str, values: Sequence[str], errors: list[str]) -> str | None:
    value = settings.pop(name, None)
    if value is None:
        return None
    text = str(value).lower()
    if text not in values:
        errors.append(
            f"[service_settings] Invalid value [{value}] received. [{name}] must be one of [{', '.join(sorted(values))}]"
        )
        return None
    return text


def parse_service_settings(raw: Any, task_type: str, *, from_deployment: bool) -> ServiceSettings:
    """``ElasticsearchInternalServiceSettings.fromRequestMap`` (+ the text embedding fields).
    Unknown settings left over are a 400 naming them, as ``throwIfNotEmptyMap`` does."""
    if not isinstance(raw, Mapping):
        raise BadRequest(f"field [service_settings] is not of the expected type. The value [{raw}] cannot be converted to a [Map]")
    settings = dict(raw)
    errors: list[str] = []
    num_allocations = _positive_int(settings, "num_allocations", errors, required=False)
    num_threads = _positive_int(settings, "num_threads", errors, required=not from_deployment)
    adaptive = _adaptive(settings, errors)
    model_id = _optional_str(settings, "model_id", errors)
    if num_allocations is None and adaptive is None and not from_deployment and "num_allocations" not in raw:
        errors.append(
            "[service_settings] does not contain one of the required settings [num_allocations, adaptive_allocations]"
        )
    deployment_id = _optional_str(settings, "deployment_id", errors)
    similarity = element_type = None
    if task_type == "text_embedding":
        similarity = _enum(settings, "similarity", SIMILARITIES, errors)
        element_type = _enum(settings, "element_type", ELEMENT_TYPES, errors)
    if errors:
        raise ValidationFailed(errors)
    if settings:
        raise BadRequest(f"Configuration contains settings [{java_map(settings)}] unknown to the [{SERVICE}] service")
    return ServiceSettings(model_id, deployment_id, num_allocations, num_threads, adaptive, similarity, element_type)


def parse_rerank_task_settings(raw: Any) -> dict[str, Any]:
    """``RerankTaskSettings``: ``return_documents`` (default true), nothing else."""
    settings = dict(raw) if isinstance(raw, Mapping) else {}
    value = settings.pop("return_documents", None)
    if value is not None and not isinstance(value, bool):
        raise ValidationFailed([
            f"field [return_documents] is not of the expected type. The value [{_java_value(value)}] cannot be "
            "converted to a [Boolean]"
        ])
    if settings:
        raise BadRequest(f"Configuration contains settings [{java_map(settings)}] unknown to the [{SERVICE}] service")
    return {"return_documents": True if value is None else value}


# ---- chunking settings -----------------------------------------------------------------------


def _chunk_int(settings: dict[str, Any], name: str, errors: list[str]) -> int | None:
    return _positive_int(settings, name, errors, required=True, section="chunking_settings")


def parse_chunking(raw: Any) -> dict[str, Any]:
    """``ChunkingSettingsBuilder.fromMap``: empty or absent is the sentence default."""
    if raw is None or (isinstance(raw, Mapping) and not raw):
        return dict(DEFAULT_CHUNKING)
    if not isinstance(raw, Mapping):
        raise BadRequest(f"field [chunking_settings] is not of the expected type. The value [{raw}] cannot be converted to a [Map]")
    if "strategy" not in raw:
        raise IllegalArgument("Can't generate Chunker without ChunkingStrategy provided")
    strategy = str(raw["strategy"])
    settings = {k: v for k, v in raw.items() if k != "strategy"}
    errors: list[str] = []
    if strategy == "none":
        if settings:
            errors.append(f"None chunking settings can not have the following settings: [{', '.join(settings)}]")
        if errors:
            raise ValidationFailed(errors)
        return {"strategy": "none"}
    if strategy == "sentence":
        unknown = [k for k in settings if k not in ("max_chunk_size", "sentence_overlap")]
        if unknown:
            errors.append(f"Sentence based chunking settings can not have the following settings: [{', '.join(unknown)}]")
        size = _chunk_int(settings, "max_chunk_size", errors)
        if size is not None and size < 20:
            errors.append(f"[chunking_settings] Invalid value [{size}]. [max_chunk_size] must be a greater than or equal to [20]")
        overlap = settings.pop("sentence_overlap", 1)
        if isinstance(overlap, bool) or not isinstance(overlap, int):
            errors.append(
                f"field [sentence_overlap] is not of the expected type. The value [{_java_value(overlap)}] cannot be "
                "converted to a [Integer]"
            )
        elif overlap not in (0, 1):
            errors.append(f"sentence_overlap[{overlap}] must be either 0 or 1")
        if errors:
            raise ValidationFailed(errors)
        return {"strategy": "sentence", "max_chunk_size": size, "sentence_overlap": overlap}
    if strategy == "word":
        unknown = [k for k in settings if k not in ("max_chunk_size", "overlap")]
        if unknown:
            errors.append(f"Word based chunking settings can not have the following settings: [{', '.join(unknown)}]")
        size = _chunk_int(settings, "max_chunk_size", errors)
        if size is not None and not 10 <= size <= 300:
            bound = "greater than or equal to [10]" if size < 10 else "less than or equal to [300]"
            errors.append(f"[chunking_settings] Invalid value [{size}]. [max_chunk_size] must be a {bound}")
            size = None
        word_overlap = _chunk_int(settings, "overlap", errors) if size is not None else None
        if size is not None and word_overlap is not None and word_overlap > size // 2:
            errors.append(
                f"[chunking_settings] Invalid value [{word_overlap}]. [overlap] must be a less than or equal to [{size // 2}]"
            )
        if errors:
            raise ValidationFailed(errors)
        return {"strategy": "word", "max_chunk_size": size, "overlap": word_overlap}
    raise IllegalArgument(f"Invalid chunkingStrategy {strategy}")


# ---- the PUT body --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointRequest:
    """A parsed ``PUT _inference`` body (before the model and deployment checks)."""

    inference_id: str
    task_type: str
    settings: ServiceSettings
    task_settings: dict[str, Any] | None
    chunking_settings: dict[str, Any] | None


def parse_endpoint(inference_id: str, url_task_type: str, body: Mapping[str, Any]) -> EndpointRequest:
    if inference_id in RESERVED_IDS:
        raise BadRequest(
            f"[{inference_id}] is a reserved inference ID. Cannot create a new inference endpoint with a reserved ID."
        )
    if MODEL_ID_RE.match(inference_id) is None:
        raise ActionRequestValidation([
            f"Invalid inference_id; '{inference_id}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or "
            "underscores; must start and end with alphanumeric"
        ])
    config = dict(body)
    task_type = resolve_task_type(url_task_type, config.pop("task_type", None))
    service = config.pop("service", None)
    if service is None:
        raise BadRequest("Inference endpoint configuration is missing the [service] setting")
    if service != SERVICE:
        raise BadRequest(f"Unknown service [{service}]")
    if task_type not in TASK_TYPES:
        raise unsupported_task_type(task_type)
    if config.get("service_settings") is None:
        raise BadRequest("Missing required field [service_settings]")
    raw_settings = config.pop("service_settings")
    raw_task_settings = config.pop("task_settings", None) or {}
    chunking = None
    if task_type in ("text_embedding", "sparse_embedding"):
        chunking = parse_chunking(config.pop("chunking_settings", None))
    if config:
        raise BadRequest(f"Configuration contains settings [{java_map(config)}] unknown to the [{SERVICE}] service")
    if not isinstance(raw_settings, Mapping):
        raise BadRequest(f"field [service_settings] is not of the expected type. The value [{raw_settings}] cannot be converted to a [Map]")
    from_deployment = raw_settings.get("deployment_id") is not None
    if not from_deployment and raw_settings.get("model_id") is None:
        raise IllegalArgument("Error parsing service settings, model_id must be provided")
    settings = parse_service_settings(raw_settings, task_type, from_deployment=from_deployment)
    task_settings: dict[str, Any] | None = None
    if task_type == "rerank":
        task_settings = parse_rerank_task_settings(raw_task_settings)
    elif raw_task_settings:
        if not isinstance(raw_task_settings, Mapping):
            raise BadRequest("field [task_settings] is not of the expected type")
        raise BadRequest(
            f"Configuration contains settings [{java_map(raw_task_settings)}] unknown to the [{SERVICE}] service"
        )
    return EndpointRequest(inference_id, task_type, settings, task_settings, chunking)


def render_service_settings(
    settings: ServiceSettings,
    task_type: str,
    *,
    model_id: str,
    num_allocations: int | None,
    num_threads: int,
    deployment_id: str | None,
    dimensions: int | None,
) -> dict[str, Any]:
    """``addInternalSettingsToXContent``'s order: num_allocations, num_threads, model_id,
    adaptive_allocations, deployment_id; text embedding adds dimensions, similarity, element_type."""
    out: dict[str, Any] = {}
    if num_allocations is not None:
        out["num_allocations"] = num_allocations
    out["num_threads"] = num_threads
    out["model_id"] = model_id
    if settings.adaptive_allocations is not None:
        out["adaptive_allocations"] = settings.adaptive_allocations
    if deployment_id is not None:
        out["deployment_id"] = deployment_id
    if task_type == "text_embedding":
        if dimensions is not None:
            out["dimensions"] = dimensions
        out["similarity"] = settings.similarity or "cosine"
        out["element_type"] = settings.element_type or "float"
    return out


SETTINGS_ORDER = (
    "num_allocations", "num_threads", "model_id", "adaptive_allocations", "deployment_id",
    "dimensions", "similarity", "element_type",
)  # fmt: skip


def order_service_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings in ``render_service_settings``' order (after an update changed some)."""
    ordered = {name: settings[name] for name in SETTINGS_ORDER if name in settings}
    return ordered | {k: v for k, v in settings.items() if k not in SETTINGS_ORDER}


def parse_update_service_settings(raw: Any) -> tuple[int | None, dict[str, Any] | None]:
    """What ``_update`` may change in an ``elasticsearch`` endpoint's service settings:
    ``num_allocations`` and ``adaptive_allocations``."""
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping):
        raise BadRequest(f"field [service_settings] is not of the expected type. The value [{raw}] cannot be converted to a [Map]")
    settings = dict(raw)
    errors: list[str] = []
    allocations = _positive_int(settings, "num_allocations", errors, required=False)
    adaptive = _adaptive(settings, errors)
    if errors:
        raise ValidationFailed(errors)
    if settings:
        raise BadRequest(f"Configuration contains settings [{java_map(settings)}] unknown to the [{SERVICE}] service")
    return allocations, adaptive


def public_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An endpoint as ``ModelConfigurations`` renders it (no private ``_`` fields)."""
    out: dict[str, Any] = {
        "inference_id": doc["inference_id"],
        "task_type": doc["task_type"],
        "service": doc["service"],
        "service_settings": doc["service_settings"],
    }
    if doc.get("task_settings"):
        out["task_settings"] = doc["task_settings"]
    if doc.get("chunking_settings") is not None:
        out["chunking_settings"] = doc["chunking_settings"]
    return out
