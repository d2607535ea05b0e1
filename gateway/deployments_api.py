"""Deployment handlers: start, stop, update, clear cache (spec §1, §2.1–2.3)."""

from __future__ import annotations

from aiohttp import web

from gateway.app_keys import CONTROL, PRODUCER, REDIS
from gateway.http import check_params, json_response, read_object
from gateway.inference_api import check_deployment_change
from gateway.start_params import EXTENSION_PARAMS, START_PARAMS, parse_start, parse_stop, parse_update
from shared import queue
from shared.errors import Conflict, deployment_not_found


async def start_deployment(request: web.Request) -> web.Response:
    check_params(request, (*START_PARAMS, *EXTENSION_PARAMS))
    body = await read_object(request, required=False)
    params = parse_start(request.match_info["model_id"], request.query, body)
    assignment = await request.app[CONTROL].start(params)
    await request.app[PRODUCER].watcher.refresh()  # an _infer right after the start must see its routes
    return json_response(request, {"assignment": assignment})


async def stop_deployment(request: web.Request) -> web.Response:
    check_params(request, ("allow_no_match", "force", "finish_pending_work", "timeout"))
    deployment_id = request.match_info["model_id"]
    body = await read_object(request, required=False)
    params = parse_stop(deployment_id, request.query, body)
    control = request.app[CONTROL]
    view = await request.app[PRODUCER].watcher.refresh()
    targets = [deployment_id] if deployment_id in view.deployments else view.by_model.get(deployment_id, [])
    if not targets:
        if params.allow_no_match:
            return json_response(request, {"stopped": True})
        raise deployment_not_found(deployment_id)
    for target in targets:
        await check_deployment_change(request, target, action="stop", force=params.force)
    for target in targets:
        await control.stop(target, finish_pending_work=params.finish_pending_work)
    await request.app[PRODUCER].watcher.refresh()
    return json_response(request, {"stopped": True})


async def update_deployment(request: web.Request) -> web.Response:
    check_params(request, ("number_of_allocations", "timeout"))
    body = await read_object(request, required=False)
    update = parse_update(request.query, body)
    await check_deployment_change(request, request.match_info["model_id"], action="update", force=False)
    assignment = await request.app[CONTROL].update(
        request.match_info["model_id"], update.number_of_allocations, update.adaptive_allocations
    )
    return json_response(request, {"assignment": assignment})


async def clear_deployment_cache(request: web.Request) -> web.Response:
    """Clears the cache on every node of the deployment; never goes through a queue."""
    check_params(request, ())
    deployment_id = request.match_info["model_id"]
    view = (await request.app[PRODUCER].watcher.refresh()).deployments.get(deployment_id)
    if view is None:
        raise deployment_not_found(deployment_id)
    if view.state == "stopping":
        raise Conflict(f"[{deployment_id}] is stopping or stopped due to [stop requested]")
    client = request.app[REDIS]
    for node in set(view.routes) | set(view.doc.get("targets", {})):
        await queue.arun(client, queue.clear(deployment_id, node))
    return json_response(request, {"cleared": True})
