"""``_inference`` handlers: inference endpoints of the ``elasticsearch`` service in front of
trained-model deployments (Elasticsearch 9's inference API).

An endpoint either starts a deployment of its own (``service_settings.model_id``: deployment id
= inference id, started through the same parameters and control plane as ``_start``) or uses
an existing one (``service_settings.deployment_id``). Inference goes through the producer, so
it shares the queues, the cache and the results of ``_infer``; the results are reshaped into
ES's ``text_embedding`` / ``sparse_embedding`` / ``rerank`` bodies.

Keys: the endpoint documents and their id set (``gateway.inference_store``), read and written
here; deployments only through ``ControlPlane``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import inference_config as ic
from gateway import inference_request as ir
from gateway.adaptive_settings import parse_adaptive_allocations
from gateway.app_keys import CONTROL, MODELS, PRODUCER, REDIS, SETTINGS
from gateway.http import check_params, json_response, query_bool, read_object
from gateway.infer_api import check_limits
from gateway.inference_store import EndpointStore
from gateway.start_params import parse_start
from shared import task_config
from shared.cluster_view import DeploymentView
from shared.errors import (
    BadRequest,
    Conflict,
    IllegalArgument,
    NotFound,
    RequestTimeout,
    ResourceAlreadyExists,
    model_not_found,
)
from shared.queue import INTERACTIVE, lane_for_input_type
from shared.units import format_time_ms, parse_time_ms

DEFAULT_TIMEOUT_MS = 30_000.0  # PUT (start) and POST (inference), as Elasticsearch
EMBEDDING_PROBE = "how big"  # ES's getEmbeddingSize input


def endpoint_not_found(inference_id: str) -> NotFound:
    return NotFound(f"Inference endpoint not found [{inference_id}]")


def _ids(request: web.Request) -> tuple[str, str]:
    """(inference id, task type from the URL or ``any``)."""
    url_task = request.match_info.get("task_type")
    return request.match_info["inference_id"], ic.parse_task_type(url_task) if url_task else "any"


def _timeout_ms(request: web.Request, body_value: Any = None) -> float:
    raw = request.query.get("timeout", body_value)
    timeout_ms = parse_time_ms(raw, "timeout") if raw is not None else -1.0
    return timeout_ms if timeout_ms >= 0 else DEFAULT_TIMEOUT_MS


def _mismatch(requested: str, actual: str) -> BadRequest:
    return BadRequest(f"Requested task type [{requested}] does not match the inference endpoint's task type [{actual}]")


def _results_field(view: DeploymentView) -> str:
    return str(task_config.task_body(view.doc["inference_config"]).get("results_field") or "predicted_value")


async def _infer(
    request: web.Request,
    deployment_id: str,
    texts: list[str],
    override: dict[str, Any] | None,
    timeout_ms: float,
    lane: str = INTERACTIVE,
) -> tuple[list[dict[str, Any]], str]:
    """Texts through ``_infer``'s producer path: (result objects, their results field)."""
    producer = request.app[PRODUCER]
    view = await producer.resolve(deployment_id)
    field = (view.doc.get("field_names") or ["text_field"])[0]
    results = await producer.infer(
        deployment_id, [{field: t} for t in texts], inference_config=override, timeout_ms=timeout_ms, lane=lane
    )
    return [r.result() for r in results], _results_field(view)


# ---- PUT ---------------------------------------------------------------------------------------


async def put_endpoint(request: web.Request) -> web.Response:
    check_params(request, ("timeout",))
    inference_id, url_task = _ids(request)
    body = await read_object(request, required=True)
    timeout_ms = _timeout_ms(request)
    parsed = ic.parse_endpoint(inference_id, url_task, body)
    store = EndpointStore(request.app[REDIS])
    if await store.get(inference_id) is not None:
        raise ResourceAlreadyExists(f"Inference endpoint [{inference_id}] already exists")
    producer = request.app[PRODUCER]
    view = await producer.watcher.refresh()
    if inference_id in view.deployments or inference_id in view.by_model:
        raise BadRequest(
            f"Inference endpoint IDs must be unique. Requested inference endpoint ID [{inference_id}] matches existing "
            "trained model ID(s) but must not."
        )
    settings = parsed.settings
    created = settings.deployment_id is None
    if settings.deployment_id is not None:
        deployment = view.deployments.get(settings.deployment_id)
        if deployment is None:
            raise NotFound(f"Cannot find deployment [{settings.deployment_id}]", error_type="status_exception")
        if settings.model_id is not None and view.model_id(settings.model_id) != deployment.model_id:
            raise BadRequest(
                f"Deployment [{settings.deployment_id}] uses model [{deployment.model_id}] which does not match the "
                f"model [{settings.model_id}] in the request."
            )
        ic.model_task_type(deployment.model_id, deployment.doc["inference_config"], parsed.task_type)
        params = deployment.doc["task_parameters"]
        deployment_id, model_id = deployment.deployment_id, deployment.model_id
        num_allocations: int | None = int(params["number_of_allocations"])
        num_threads = int(params["threads_per_allocation"])
    else:
        assert settings.model_id is not None and settings.num_threads is not None  # parse_endpoint checked
        model_id = settings.model_id
        resolved = view.model_id(model_id)
        if model_id in ic.BUILT_IN_MODELS or not await request.app[MODELS].exists(resolved):
            if model_id in ic.BUILT_IN_MODELS:
                raise IllegalArgument(
                    "Error parsing request config, model id does not match any models available on this platform. "
                    f"Was [{model_id}]. You may need to load it into the cluster using eland."
                )
            raise model_not_found(model_id)
        config = await request.app[MODELS].get_config(resolved)
        ic.model_task_type(model_id, config["inference_config"], parsed.task_type)
        deployment_id, num_allocations, num_threads = inference_id, settings.num_allocations, settings.num_threads
        start_body: dict[str, Any] = {
            "deployment_id": inference_id,
            "threads_per_allocation": num_threads,
            "wait_for": "started",
            "timeout": format_time_ms(timeout_ms),
        }
        if settings.num_allocations is not None:
            start_body["number_of_allocations"] = settings.num_allocations
        if settings.adaptive_allocations is not None:
            start_body["adaptive_allocations"] = settings.adaptive_allocations
        try:
            await request.app[CONTROL].start(parse_start(resolved, {}, start_body))
        except RequestTimeout:  # started but not in time: ES stops what it started for the endpoint
            await request.app[CONTROL].stop(inference_id, finish_pending_work=False)
            raise
        await producer.watcher.refresh()
    try:
        dimensions = None
        if parsed.task_type == "text_embedding":
            results, field = await _infer(request, deployment_id, [EMBEDDING_PROBE], None, timeout_ms)
            dimensions = len(results[0][field])
        doc: dict[str, Any] = {
            "inference_id": inference_id,
            "task_type": parsed.task_type,
            "service": ic.SERVICE,
            "service_settings": ic.render_service_settings(
                settings, parsed.task_type, model_id=settings.model_id or model_id, num_allocations=num_allocations,
                num_threads=num_threads, deployment_id=settings.deployment_id, dimensions=dimensions,
            ),
            "_deployment_id": deployment_id,
            "_created_deployment": created,
        }  # fmt: skip
        if parsed.task_settings is not None:
            doc["task_settings"] = parsed.task_settings
        if parsed.chunking_settings is not None:
            doc["chunking_settings"] = parsed.chunking_settings
        await store.create(doc)
    except Exception:
        if created:  # ES stops a deployment it started for an endpoint that was not stored
            await request.app[CONTROL].stop(deployment_id, finish_pending_work=False)
            await producer.watcher.refresh()
        raise
    return json_response(request, ic.public_view(doc))


# ---- GET ---------------------------------------------------------------------------------------


async def get_endpoints(request: web.Request) -> web.Response:
    check_params(request, ())
    inference_id = request.match_info.get("inference_id", "_all")
    url_task = request.match_info.get("task_type")
    task_type = ic.parse_task_type(url_task) if url_task else "any"
    store = EndpointStore(request.app[REDIS])
    if inference_id in ("_all", "*"):
        docs = [d for d in await store.all() if task_type in ("any", d["task_type"])]
    else:
        found = await store.get(inference_id)
        if found is None:
            raise endpoint_not_found(inference_id)
        if task_type not in ("any", found["task_type"]):
            raise _mismatch(task_type, found["task_type"])
        docs = [found]
    view = request.app[PRODUCER].watcher.view
    rendered = []
    for doc in docs:
        public = ic.public_view(doc)
        deployment = view.deployments.get(str(doc.get("_deployment_id")))
        if deployment is not None and "num_allocations" in public["service_settings"]:
            # as ES's updateModelsWithDynamicFields: the deployment's current allocation count
            public["service_settings"] = dict(public["service_settings"]) | {
                "num_allocations": int(deployment.doc["task_parameters"]["number_of_allocations"])
            }
        rendered.append(public)
    return json_response(request, {"endpoints": rendered})


# ---- DELETE ------------------------------------------------------------------------------------


async def delete_endpoint(request: web.Request) -> web.Response:
    check_params(request, ("dry_run", "force"))
    inference_id, task_type = _ids(request)
    dry_run = query_bool(request, "dry_run", False)
    query_bool(request, "force", False)  # force skips the pipeline / semantic_text checks; inferq has neither
    store = EndpointStore(request.app[REDIS])
    doc = await store.get(inference_id)
    if doc is None:
        raise endpoint_not_found(inference_id)
    if task_type not in ("any", doc["task_type"]):
        raise _mismatch(task_type, doc["task_type"])
    if dry_run:
        return json_response(request, {"acknowledged": False, "pipelines": [], "indexes": []})
    if doc.get("_created_deployment"):
        deployment_id = str(doc["_deployment_id"])
        producer = request.app[PRODUCER]
        if deployment_id in (await producer.watcher.refresh()).deployments:
            await request.app[CONTROL].stop(deployment_id, finish_pending_work=False)
            await producer.watcher.refresh()
    await store.delete(inference_id)
    return json_response(request, {"acknowledged": True, "pipelines": [], "indexes": []})


# ---- _update -----------------------------------------------------------------------------------


async def update_endpoint(request: web.Request) -> web.Response:
    check_params(request, ())
    inference_id, url_task = _ids(request)
    body = await read_object(request, required=True)
    for name in body:
        if name not in ("service_settings", "task_settings", "task_type"):
            raise BadRequest(f"Configuration contains settings [{ic.java_map({name: body[name]})}] unknown to the [{ic.SERVICE}] service")
    store = EndpointStore(request.app[REDIS])
    doc = await store.get(inference_id)
    if doc is None:
        raise NotFound(f"The inference endpoint [{inference_id}] does not exist and cannot be updated")
    task_type = ic.resolve_task_type(url_task, body.get("task_type")) if (
        url_task != "any" or body.get("task_type") is not None
    ) else doc["task_type"]  # fmt: skip
    if task_type != doc["task_type"]:
        raise BadRequest("Task type must match the task type of the existing endpoint")
    allocations, adaptive = ic.parse_update_service_settings(body.get("service_settings"))
    updated = dict(doc)
    if body.get("task_settings") is not None:
        if not isinstance(body["task_settings"], dict):
            raise BadRequest(
                f"field [task_settings] is not of the expected type. The value [{body['task_settings']}] cannot be "
                "converted to a [Map]"
            )
        if doc["task_type"] != "rerank":
            raise BadRequest(
                f"Configuration contains settings [{ic.java_map(body['task_settings'])}] unknown to the [{ic.SERVICE}] service"
            )
        merged = dict(doc.get("task_settings") or {}) | dict(body["task_settings"])
        updated["task_settings"] = ic.parse_rerank_task_settings(merged)
    if allocations is not None or adaptive is not None:
        deployment_id = str(doc["_deployment_id"])
        if deployment_id != inference_id or not doc.get("_created_deployment"):
            creator = await store.get(deployment_id)
            if creator is not None and creator.get("_created_deployment"):
                raise Conflict(
                    f"Cannot update inference endpoint [{inference_id}] for model deployment [{deployment_id}] as it was "
                    "created by another inference endpoint. The model can only be updated using inference endpoint id "
                    f"[{deployment_id}]."
                )
            raise Conflict(
                f"Cannot update inference endpoint [{inference_id}] using model deployment [{deployment_id}]. The model "
                "deployment must be updated through the trained models API."
            )
        service_settings = dict(doc["service_settings"])
        # as ES's updateInClusterEndpoint: one deployment update with both settings
        adaptive_update = parse_adaptive_allocations(adaptive) if adaptive is not None else None
        await request.app[CONTROL].update(deployment_id, allocations, adaptive_update)
        await request.app[PRODUCER].watcher.refresh()
        if allocations is not None:
            service_settings["num_allocations"] = allocations
        if adaptive is not None:
            service_settings["adaptive_allocations"] = adaptive
        updated["service_settings"] = ic.order_service_settings(service_settings)
    if updated != doc:
        await store.replace(updated)
    return json_response(request, ic.public_view(updated))


# ---- POST (inference) --------------------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    check_params(request, ("timeout",))
    inference_id, url_task = _ids(request)
    store = EndpointStore(request.app[REDIS])
    doc = await store.get(inference_id)
    if doc is None:
        raise endpoint_not_found(inference_id)
    task_type = str(doc["task_type"])
    if url_task not in ("any", task_type):
        raise BadRequest(
            f"Incompatible task_type, the requested type [{url_task}] does not match the model type [{task_type}]"
        )
    body = await read_object(request, required=True)
    parsed = ir.parse_inference_request(task_type, body)
    check_limits(request.app[SETTINGS], [{"input": t} for t in parsed.inputs])  # _infer's limits
    check_limits(request.app[SETTINGS], [{"query": parsed.query or ""}])
    timeout_ms = _timeout_ms(request, parsed.timeout)
    deployment_id = str(doc["_deployment_id"])
    if task_type == "rerank":
        override = {"text_similarity": {"text": parsed.query}}
        results, field = await _infer(
            request, deployment_id, parsed.inputs, override, timeout_ms, lane_for_input_type(parsed.input_type)
        )
        settings = ic.parse_rerank_task_settings(dict(doc.get("task_settings") or {}) | parsed.task_settings)
        return_documents = settings["return_documents"] if parsed.return_documents is None else parsed.return_documents
        payload = ir.render_rerank(results, field, parsed.inputs, return_documents=return_documents, top_n=parsed.top_n)
    else:
        if parsed.task_settings:
            raise BadRequest(
                f"Configuration contains settings [{ic.java_map(parsed.task_settings)}] unknown to the [{ic.SERVICE}] "
                "service"
            )
        results, field = await _infer(
            request, deployment_id, parsed.inputs, None, timeout_ms, lane_for_input_type(parsed.input_type)
        )
        render = ir.render_text_embedding if task_type == "text_embedding" else ir.render_sparse_embedding
        payload = render(results, field)
    return json_response(request, payload)


# ---- the ML side: deployments an endpoint depends on -------------------------------------------


async def endpoints_using(request: web.Request, deployment_id: str) -> list[dict[str, Any]]:
    """Endpoints whose inference runs on ``deployment_id`` (stop and update check these)."""
    return [d for d in await EndpointStore(request.app[REDIS]).all() if d.get("_deployment_id") == deployment_id]


async def check_deployment_change(request: web.Request, deployment_id: str, *, action: str, force: bool) -> None:
    """Elasticsearch 9: a deployment created by an endpoint is changed through the inference
    API, and one an endpoint uses is not stopped without ``force``."""
    if force:
        return
    users = await endpoints_using(request, deployment_id)
    creator = next((d for d in users if d.get("_created_deployment")), None)
    if action == "update" and creator is not None:
        raise Conflict(
            f"Cannot update deployment [{deployment_id}] as it was created by inference endpoint "
            f"[{creator['inference_id']}]. This model deployment must be updated through the inference API."
        )
    if action == "stop" and creator is not None:
        raise Conflict(
            f"Cannot stop deployment [{deployment_id}] as it was created by inference endpoint "
            f"[{creator['inference_id']}]; use force to stop the deployment"
        )
    if action == "stop" and users:
        raise Conflict(
            f"Cannot stop deployment [{deployment_id}] as it is used by inference endpoint "
            f"[{users[0]['inference_id']}]; use force to stop the deployment"
        )

