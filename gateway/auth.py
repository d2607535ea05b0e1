"""Optional API-key authentication with cluster privileges, and the ``_security`` endpoints.

With ``INFERQ_AUTH=on`` every request except ``GET /`` needs ``Authorization: ApiKey
base64(id:key)`` (or ``Basic`` for the bootstrap user ``elastic`` with the bootstrap secret).
Each route maps to the Elasticsearch action name it stands for, and the key's privileges must
allow that action (``gateway.api_keys``). Missing or bad credentials are a 401
``security_exception`` with ``WWW-Authenticate``; a missing privilege is a 403.

Verified keys are cached in-process for one second, so the hot path costs at most one
Redis round trip (an HGET on ``keys.API_KEYS``) per key per second, and usually none. An
invalidated key stops working at once on the gateway that invalidated it, and within one
second on every other gateway. The bootstrap key cannot be invalidated over the API (the
answer says so in ``error_details``): it is the operator's way back in; restarting with another
``INFERQ_BOOTSTRAP_API_KEY`` replaces it (the old one is invalidated then).

With auth off the middleware is not installed at all, and the ``_security`` endpoints answer
as Elasticsearch does when security is disabled.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import api_keys
from gateway.api_keys import ApiKeyRecord, ApiKeyStore, BadCredentials, Credentials
from gateway.app_keys import REDIS, SETTINGS
from gateway.http import Handler, check_fields, check_params, json_response, parse_bool, read_object
from shared.errors import (
    ActionRequestValidation,
    AuthenticationRequired,
    Forbidden,
    IllegalArgument,
    InferqError,
)
from shared.units import parse_time_ms

log = logging.getLogger(__name__)

API_KEY_STORE = web.AppKey("api_key_store", ApiKeyStore)

ML = "/_ml/trained_models"
INFERENCE = "/_inference"
SECURITY_API_KEY = "/_security/api_key"
AUTHENTICATE = "/_security/_authenticate"
HAS_PRIVILEGES = "/_security/user/_has_privileges"

# (method, route template) -> the Elasticsearch action the route performs (spec §8)
ROUTE_ACTIONS: dict[tuple[str, str], str] = {
    ("GET", ML): "cluster:monitor/xpack/ml/inference/get",
    ("GET", ML + "/"): "cluster:monitor/xpack/ml/inference/get",
    ("GET", ML + "/{model_id}"): "cluster:monitor/xpack/ml/inference/get",
    ("GET", ML + "/_stats"): "cluster:monitor/xpack/ml/inference/stats/get",
    ("GET", "/_ml/info"): "cluster:monitor/xpack/ml/info/get",
    ("GET", ML + "/{model_id}/_stats"): "cluster:monitor/xpack/ml/inference/stats/get",
    ("PUT", ML + "/{model_id}"): "cluster:admin/xpack/ml/inference/put",
    ("DELETE", ML + "/{model_id}"): "cluster:admin/xpack/ml/inference/delete",
    ("PUT", ML + "/{model_id}/definition/{part}"): "cluster:admin/xpack/ml/trained_models/part/put",
    ("PUT", ML + "/{model_id}/vocabulary"): "cluster:admin/xpack/ml/trained_models/vocabulary/put",
    ("POST", ML + "/{model_id}/deployment/_start"): "cluster:admin/xpack/ml/trained_models/deployment/start",
    ("POST", ML + "/{model_id}/deployment/_stop"): "cluster:admin/xpack/ml/trained_models/deployment/stop",
    ("POST", ML + "/{model_id}/deployment/_update"): "cluster:admin/xpack/ml/trained_models/deployment/update",
    ("POST", ML + "/{model_id}/deployment/cache/_clear"): "cluster:admin/xpack/ml/trained_models/deployment/clear_cache",
    ("POST", ML + "/{model_id}/_infer"): "cluster:monitor/xpack/ml/inference/infer",
    ("POST", ML + "/{model_id}/deployment/_infer"): "cluster:monitor/xpack/ml/trained_models/deployment/infer",
    ("PUT", ML + "/{model_id}/model_aliases/{model_alias}"): "cluster:admin/xpack/ml/inference/model_aliases/put",
    ("DELETE", ML + "/{model_id}/model_aliases/{model_alias}"): "cluster:admin/xpack/ml/inference/model_aliases/delete",
    ("GET", INFERENCE): "cluster:monitor/xpack/inference/get",
    ("GET", INFERENCE + "/{inference_id}"): "cluster:monitor/xpack/inference/get",
    ("GET", INFERENCE + "/{task_type}/{inference_id}"): "cluster:monitor/xpack/inference/get",
    ("PUT", INFERENCE + "/{inference_id}"): "cluster:admin/xpack/inference/put",
    ("PUT", INFERENCE + "/{task_type}/{inference_id}"): "cluster:admin/xpack/inference/put",
    ("PUT", INFERENCE + "/{inference_id}/_update"): "cluster:admin/xpack/inference/update",
    ("PUT", INFERENCE + "/{task_type}/{inference_id}/_update"): "cluster:admin/xpack/inference/update",
    ("DELETE", INFERENCE + "/{inference_id}"): "cluster:admin/xpack/inference/delete",
    ("DELETE", INFERENCE + "/{task_type}/{inference_id}"): "cluster:admin/xpack/inference/delete",
    ("POST", INFERENCE + "/{inference_id}"): "cluster:monitor/xpack/inference/post",
    ("POST", INFERENCE + "/{task_type}/{inference_id}"): "cluster:monitor/xpack/inference/post",
    ("POST", SECURITY_API_KEY): "cluster:admin/xpack/security/api_key/create",
    ("PUT", SECURITY_API_KEY): "cluster:admin/xpack/security/api_key/create",
    ("GET", SECURITY_API_KEY): "cluster:admin/xpack/security/api_key/get",
    ("DELETE", SECURITY_API_KEY): "cluster:admin/xpack/security/api_key/invalidate",
    ("GET", "/metrics"): "cluster:monitor/xpack/ml/inference/stats/get",  # as _stats
    ("GET", "/_status/data"): "cluster:monitor/xpack/ml/inference/stats/get",
}
# the status page's files load without a key (the page then asks for one)
OPEN_ROUTES = frozenset({("GET", "/"), ("GET", "/_status"), ("GET", "/_status/status.js"), ("GET", "/_status/status.css")})
AUTHENTICATED_ONLY = frozenset({("GET", AUTHENTICATE), ("GET", HAS_PRIVILEGES), ("POST", HAS_PRIVILEGES)})


def action_for(method: str, template: str) -> str:
    """The action of a route; routes added later fall back by prefix (reads need monitor_ml,
    the rest manage_ml; anything else only ``all``)."""
    method = "GET" if method == "HEAD" else method
    known = ROUTE_ACTIONS.get((method, template))
    if known is not None:
        return known
    if template.startswith("/_ml"):
        return "cluster:monitor/xpack/ml/other/get" if method == "GET" else "cluster:admin/xpack/ml/other/" + method.lower()
    if template.startswith("/_security"):
        return "cluster:admin/xpack/security/other/" + method.lower()
    return "cluster:admin/inferq/" + method.lower()


@dataclass(frozen=True)
class Identity:
    record: ApiKeyRecord
    realm: bool  # Basic auth of the bootstrap user rather than an API key

    @property
    def username(self) -> str:
        return self.record.username


IDENTITY = web.RequestKey("identity", Identity)


def _unauthenticated(reason: str) -> AuthenticationRequired:
    return AuthenticationRequired(reason)


async def authenticate(request: web.Request) -> Identity:
    header = request.headers.get("Authorization", "")
    try:
        credentials = api_keys.parse_authorization(header) if header else None
    except BadCredentials as exc:
        raise _unauthenticated(f"invalid authorization header: {exc}") from exc
    if credentials is None:
        raise _unauthenticated(f"missing authentication credentials for REST request [{request.path_qs}]")
    store = request.app[API_KEY_STORE]
    record = await _verify(store, credentials, request.app[SETTINGS].bootstrap_api_key)
    if record is None:
        raise _unauthenticated(
            "unable to authenticate with provided credentials and anonymous access is not allowed for this request"
        )
    return Identity(record, realm=credentials.scheme == "basic")


async def _verify(store: ApiKeyStore, credentials: Credentials, bootstrap: str) -> ApiKeyRecord | None:
    if credentials.scheme == "apikey":
        return await store.verify(credentials)
    bootstrap_id = bootstrap.partition(":")[0]
    if not bootstrap_id or credentials.principal not in (api_keys.BOOTSTRAP_USER, bootstrap_id):
        return None
    return await store.verify(credentials, key_id=bootstrap_id)


def authorize(identity: Identity, action: str) -> None:
    if api_keys.action_allowed(identity.record.grants, action):
        return
    who = (
        f"user [{identity.username}]"
        if identity.realm
        else f"API key id [{identity.record.id}] of user [{identity.username}]"
    )
    granted_by = ",".join(api_keys.granting_privileges(action))
    raise Forbidden(
        f"action [{action}] is unauthorized for {who}, this action is granted by the cluster privileges [{granted_by}]"
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    method = "GET" if request.method == "HEAD" else request.method
    template = resource.canonical if resource is not None else None
    if template is not None and (method, template) in OPEN_ROUTES:
        return await handler(request)
    identity = await authenticate(request)
    if template is not None and (method, template) not in AUTHENTICATED_ONLY:
        authorize(identity, action_for(method, template))
    request[IDENTITY] = identity
    return await handler(request)


# ---- the _security endpoints -------------------------------------------------------------------


def _security_disabled() -> InferqError:
    return InferqError(
        "Security is not enabled on this cluster. Start the gateway with [INFERQ_AUTH=on] to use API keys.",
        error_type="security_exception",
    )


def _identity(request: web.Request) -> Identity:
    if not request.app[SETTINGS].auth_required:
        raise _security_disabled()
    return request[IDENTITY]


def _parse_role_descriptors(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise IllegalArgument("[role_descriptors] must be an object")
    descriptors: dict[str, Any] = {}
    for name, descriptor in raw.items():
        if not isinstance(descriptor, Mapping):
            raise IllegalArgument(f"failed to parse role [{name}]: a role descriptor must be an object")
        cluster = descriptor.get("cluster") or []
        if not isinstance(cluster, list) or not all(isinstance(p, str) for p in cluster):
            raise IllegalArgument(f"failed to parse role [{name}]: [cluster] must be an array of strings")
        unknown = api_keys.unknown_privileges(cluster)
        if unknown:
            raise IllegalArgument(
                f"unknown cluster privilege [{unknown[0]}]. a privilege must be one of the predefined cluster "
                f"privilege names [{','.join(sorted(api_keys.PRIVILEGES))}]"
            )
        descriptors[str(name)] = dict(descriptor)
    return descriptors


async def create_api_key(request: web.Request) -> web.Response:
    check_params(request, ("refresh",))
    identity = _identity(request)
    body = await read_object(request, required=True)
    check_fields(body, ("name", "role_descriptors", "expiration", "metadata"), "api_key_request")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ActionRequestValidation(["api key name is required"])
    if len(name) > 1024:
        raise ActionRequestValidation(["api key name may not be more than [1024] characters long"])
    descriptors = _parse_role_descriptors(body.get("role_descriptors"))
    now = api_keys.now_ms()
    expiration_ms: int | None = None
    if body.get("expiration") is not None:
        lifetime_ms = parse_time_ms(body["expiration"], "expiration")
        if lifetime_ms <= 0:
            raise ActionRequestValidation(["api key expiration must be positive"])
        expiration_ms = now + int(lifetime_ms)
    record, secret = api_keys.new_record(
        name=name,
        username=identity.username,
        role_descriptors=descriptors,
        limited_by=identity.record.grants,
        now_ms=now,
        expiration_ms=expiration_ms,
    )
    await request.app[API_KEY_STORE].put(record)
    payload: dict[str, Any] = {"id": record.id, "name": record.name}
    if expiration_ms is not None:
        payload["expiration"] = expiration_ms
    payload["api_key"] = secret
    payload["encoded"] = api_keys.encode_credentials(record.id, secret)
    return json_response(request, payload)


def _selected(record: ApiKeyRecord, *, ids: list[str], name: str | None, username: str | None) -> bool:
    if ids and record.id not in ids:
        return False
    if name is not None and not fnmatch.fnmatchcase(record.name, name):
        return False
    return username is None or record.username == username


async def get_api_keys(request: web.Request) -> web.Response:
    check_params(request, ("id", "name", "owner", "username", "realm_name", "with_limited_by", "active_only"))
    identity = _identity(request)
    query = request.query
    owner = query.get("owner", "false").lower() in ("", "true")
    username = identity.username if owner else query.get("username")
    ids = [query["id"]] if "id" in query else []
    active_only = query.get("active_only", "false").lower() in ("", "true")
    now = api_keys.now_ms()
    records = [
        r
        for r in await request.app[API_KEY_STORE].all()
        if _selected(r, ids=ids, name=query.get("name"), username=username) and (not active_only or r.usable(now))
    ]
    return json_response(request, {"api_keys": [r.info() for r in records]})


async def invalidate_api_keys(request: web.Request) -> web.Response:
    check_params(request, ())
    identity = _identity(request)
    body = await read_object(request, required=True)
    check_fields(body, ("ids", "id", "name", "owner", "username", "realm_name"), "invalidate_api_key_request")
    raw_ids = body.get("ids") or []
    if not isinstance(raw_ids, list) or not all(isinstance(i, str | int) for i in raw_ids):
        raise IllegalArgument("[ids] must be an array of strings")
    ids = [str(i) for i in raw_ids]
    if body.get("id"):
        ids.append(str(body["id"]))
    for field_name in ("name", "username"):
        if body.get(field_name) is not None and not isinstance(body[field_name], str):
            raise IllegalArgument(f"[{field_name}] must be a string")
    name = body.get("name")
    owner = parse_bool(body.get("owner", False), "owner")
    username = identity.username if owner else body.get("username")
    if not ids and name is None and username is None:
        raise ActionRequestValidation(
            ["One of [api key id, api key name, username, realm name] must be specified if [owner] flag is false"]
        )
    store = request.app[API_KEY_STORE]
    selected = [r for r in await store.all() if _selected(r, ids=ids, name=name, username=username)]
    kept = [r.id for r in selected if api_keys.is_bootstrap(r)]
    newly, already = await store.invalidate([r.id for r in selected if not api_keys.is_bootstrap(r)])
    answer: dict[str, Any] = {
        "invalidated_api_keys": newly,
        "previously_invalidated_api_keys": already,
        "error_count": len(kept),
    }
    if kept:
        log.warning("refused to invalidate the bootstrap API key [%s]", ",".join(kept))
        answer["error_details"] = [
            {
                "type": "illegal_argument_exception",
                "reason": f"the bootstrap API key [{key_id}] cannot be invalidated: it is how an operator gets "
                "back in. Restart the gateways with another INFERQ_BOOTSTRAP_API_KEY to replace it",
            }
            for key_id in kept
        ]
    return json_response(request, answer)


async def authenticate_handler(request: web.Request) -> web.Response:
    check_params(request, ())
    identity = _identity(request)
    if identity.realm:
        realm = {"name": "reserved", "type": "reserved"}
        body: dict[str, Any] = {"username": identity.username, "roles": ["superuser"], "authentication_type": "realm"}
    else:
        realm = {"name": "_es_api_key", "type": "_es_api_key"}
        body = {
            "username": identity.username,
            "roles": [],
            "authentication_type": "api_key",
            "api_key": {"id": identity.record.id, "name": identity.record.name},
        }
    body.update(
        {"full_name": None, "email": None, "metadata": {}, "enabled": True,
         "authentication_realm": realm, "lookup_realm": realm}
    )
    return json_response(request, body)


def holds(grants: Sequence[Sequence[str]], name: str) -> bool:
    """A cluster privilege name or an action name, as ``_has_privileges`` checks it."""
    patterns = api_keys.PRIVILEGES.get(name, (name,))
    return all(api_keys.action_allowed(grants, pattern) for pattern in patterns)


async def has_privileges(request: web.Request) -> web.Response:
    """``_security/user/_has_privileges`` for cluster privileges and action names (what a client
    checks before slow work: ``inferq import`` asks for the upload and start actions)."""
    check_params(request, ())
    identity = _identity(request)
    body = await read_object(request, required=True)
    check_fields(body, ("cluster", "index", "application"), "has_privileges_request")
    cluster = body.get("cluster") or []
    if not isinstance(cluster, list) or not all(isinstance(p, str) for p in cluster):
        raise IllegalArgument("[cluster] must be an array of strings")
    held = {name: holds(identity.record.grants, name) for name in cluster}
    return json_response(
        request,
        {
            "username": identity.username,
            "has_all_requested": all(held.values()),
            "cluster": held,
            "index": {},
            "application": {},
        },
    )


# ---- wiring ------------------------------------------------------------------------------------


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs after the app's resources context (it needs ``REDIS``)."""
    settings = app[SETTINGS]
    store = ApiKeyStore(app[REDIS])
    app[API_KEY_STORE] = store
    if settings.bootstrap_api_key:
        record = await store.ensure_bootstrap(settings.bootstrap_api_key)
        log.info("bootstrap API key [%s] ready", record.id)
    else:
        log.warning("auth is on and INFERQ_BOOTSTRAP_API_KEY is not set: only existing API keys can log in")
    yield


def setup(app: web.Application) -> None:
    """Add the ``_security`` routes; with auth on, the middleware and the key store too.
    Call after the resources context is registered and before the app starts."""
    r = app.router
    r.add_post(SECURITY_API_KEY, create_api_key)
    r.add_put(SECURITY_API_KEY, create_api_key)
    r.add_get(SECURITY_API_KEY, get_api_keys)
    r.add_delete(SECURITY_API_KEY, invalidate_api_keys)
    r.add_get(AUTHENTICATE, authenticate_handler)
    r.add_get(HAS_PRIVILEGES, has_privileges)
    r.add_post(HAS_PRIVILEGES, has_privileges)
    if app[SETTINGS].auth_required:
        app.middlewares.append(auth_middleware)
        app.cleanup_ctx.append(_store_ctx)
