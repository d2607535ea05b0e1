"""Model aliases: ``PUT`` / ``DELETE _ml/trained_models/<model_id>/model_aliases/<model_alias>``,
with Elasticsearch's rules (``PutTrainedModelAliasAction``, ``TransportPutTrainedModelAliasAction``,
``TransportDeleteTrainedModelAliasAction``).

An alias names one model; ``_infer``, ``_stats``, ``GET`` and inference endpoints accept it
wherever they accept a model id (resolved from the cluster view). Keys: the hash
``inferq:model_aliases`` through ``gateway.inference_store.AliasStore``.
"""

from __future__ import annotations

import re

from aiohttp import web

from gateway.app_keys import MODELS, PRODUCER, REDIS
from gateway.assignment import allocation_state
from gateway.http import check_params, json_response, query_bool
from gateway.inference_store import AliasStore
from shared.cluster_view import ClusterView
from shared.errors import ActionRequestValidation, BadRequest, Conflict, NotFound, model_not_found

# like a model id, but an alias cannot end with a number (ES keeps those for generated names)
ALIAS_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_\-\.]*[a-z])?$")


def validate_alias(model_alias: str, model_id: str) -> None:
    messages = []
    if model_alias == model_id:
        messages.append(f"model_alias [{model_alias}] cannot equal model_id [{model_id}]")
    if ALIAS_RE.match(model_alias) is None:
        messages.append(
            f"Invalid model_alias; '{model_alias}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or "
            "underscores; must start with alphanumeric and cannot end with numbers"
        )
    if messages:
        raise ActionRequestValidation(messages)


def _deployment_states(view: ClusterView, model_id: str) -> list[str]:
    return [
        allocation_state(view.deployments[d].doc, view.deployments[d].routes) for d in view.by_model.get(model_id, [])
    ]


async def put_alias(request: web.Request) -> web.Response:
    check_params(request, ("reassign",))
    model_id, model_alias = request.match_info["model_id"], request.match_info["model_alias"]
    reassign = query_bool(request, "reassign", False)
    validate_alias(model_alias, model_id)
    aliases = AliasStore(request.app[REDIS])
    models = request.app[MODELS]
    old_model_id = await aliases.get(model_alias)
    if old_model_id is not None and not reassign:
        raise BadRequest(
            f"cannot assign model_alias [{model_alias}] to model_id [{model_id}] as model_alias already refers to "
            f"[{old_model_id}]. Set parameter [reassign] to [true] if model_alias should be reassigned."
        )
    if await models.exists(model_alias):
        raise BadRequest("model_alias cannot be the same as an existing trained model_id")
    if not await models.exists(model_id):
        raise model_not_found(model_id)
    new_model = await models.get_config(model_id)
    if old_model_id is not None and await models.exists(old_model_id):
        old_model = await models.get_config(old_model_id)
        new_task = next(iter(new_model.get("inference_config") or {}), None)
        old_task = next(iter(old_model.get("inference_config") or {}), None)
        if new_task is not None and old_task is not None and new_task != old_task:
            raise BadRequest(
                f"cannot reassign model_alias [{model_alias}] to model [{model_id}] with inference config type "
                f"[{new_task}] from model [{old_model_id}] with type [{old_task}]"
            )
        if new_model.get("model_type") != old_model.get("model_type"):
            raise BadRequest(
                f"cannot reassign model_alias [{model_alias}] to model [{model_id}] with type "
                f"[{new_model.get('model_type') or 'tree_ensemble'}] from model [{old_model_id}] with type "
                f"[{old_model.get('model_type') or 'tree_ensemble'}]"
            )
        view = await request.app[PRODUCER].watcher.refresh()
        old_states, new_states = _deployment_states(view, old_model_id), _deployment_states(view, model_id)
        if old_states:
            if not new_states:
                raise BadRequest(
                    f"cannot reassign model_alias [{model_alias}] to model [{model_id}] from model [{old_model_id}] as "
                    "it is not yet deployed"
                )
            if any(s in ("started", "fully_allocated") for s in old_states) and any(
                s == "starting" for s in new_states
            ):
                raise BadRequest(
                    f"cannot reassign model_alias [{model_alias}] to model [{model_id}]  from model [{old_model_id}] as "
                    "it is not yet allocated to any nodes"
                )
    if not await aliases.put(model_alias, model_id, only_new=old_model_id is None):
        current = await aliases.get(model_alias)
        raise BadRequest(
            f"cannot assign model_alias [{model_alias}] to model_id [{model_id}] as model_alias already refers to "
            f"[{current}]. Set parameter [reassign] to [true] if model_alias should be reassigned."
        )
    await request.app[PRODUCER].watcher.refresh()
    return json_response(request, {"acknowledged": True})


async def delete_alias(request: web.Request) -> web.Response:
    check_params(request, ())
    model_id, model_alias = request.match_info["model_id"], request.match_info["model_alias"]
    aliases = AliasStore(request.app[REDIS])
    referenced = await aliases.get(model_alias)
    if referenced is None:
        raise NotFound(f"model_alias [{model_alias}] could not be found", error_type="status_exception")
    if referenced != model_id:
        raise Conflict(f"model_alias [{model_alias}] does not refer to provided model_id [{model_id}]")
    await aliases.delete(model_alias)
    await request.app[PRODUCER].watcher.refresh()
    return json_response(request, {"acknowledged": True})
