"""``create_app``: routes, the error middleware, and the resources opened in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from gateway import (
    aliases_api,
    auth,
    deployments_api,
    infer_api,
    inference_api,
    info_api,
    metrics,
    models_api,
    stats_api,
    status_page,
)
from gateway.adaptive import ScalerConfig
from gateway.adaptive_service import AdaptiveService
from gateway.app_keys import CONTROL, MODELS, PRODUCER, REDIS, SETTINGS
from gateway.control import ControlPlane, planner_loop
from gateway.http import BODY_LIMITS, BodyLimits, check_params, error_middleware, json_response
from gateway.redis_memory import RedisMemorySettings
from shared.model_store import ModelStore
from shared.producer import Producer
from shared.redis_config import warn_redis_config_async
from shared.redis_conn import async_client
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)

ML = "/_ml/trained_models"
INFERENCE = "/_inference"
GC_GEN0_THRESHOLD = 20_000
SHUTDOWN_TIMEOUT_S = 2.0  # Ctrl-C: in-flight requests get this long before their connections close


async def root(request: web.Request) -> web.Response:
    check_params(request, ())
    settings = request.app[SETTINGS]
    return json_response(
        request,
        {
            "name": f"inferq-gateway-{settings.port}",
            "cluster_name": settings.cluster_name,
            "cluster_uuid": "inferq",
            "version": {
                "number": models_api.VERSION,
                "build_flavor": "default",
                "build_type": "inferq",
                "lucene_version": "10.0.0",
                "minimum_wire_compatibility_version": "8.18.0",
                "minimum_index_compatibility_version": "8.0.0",
            },
            "tagline": "You Know, for Search",
        },
    )


def add_routes(app: web.Application) -> None:
    """The ``_infer`` routes first: aiohttp tries the resources under one path prefix in the
    order they were added, and no other route matches their paths."""
    r = app.router
    r.add_post(ML + "/{model_id}/_infer", infer_api.infer)
    r.add_post(ML + "/{model_id}/deployment/_infer", infer_api.infer_deployment_legacy)
    r.add_get("/", root)  # aiohttp adds HEAD for GET routes
    r.add_get("/_ml/info", info_api.ml_info)
    r.add_get(ML, models_api.get_models)
    r.add_get(ML + "/", models_api.get_models)
    r.add_get(f"{ML}/_stats", stats_api.get_stats)
    r.add_get(ML + "/{model_id}/_stats", stats_api.get_stats)
    r.add_get(ML + "/{model_id}", models_api.get_models)
    r.add_put(ML + "/{model_id}", models_api.put_model)
    r.add_delete(ML + "/{model_id}", models_api.delete_model)
    r.add_put(ML + "/{model_id}/definition/{part}", models_api.put_definition_part)
    r.add_put(ML + "/{model_id}/vocabulary", models_api.put_vocabulary)
    r.add_post(ML + "/{model_id}/deployment/_start", deployments_api.start_deployment)
    r.add_post(ML + "/{model_id}/deployment/_stop", deployments_api.stop_deployment)
    r.add_post(ML + "/{model_id}/deployment/_update", deployments_api.update_deployment)
    r.add_post(ML + "/{model_id}/deployment/cache/_clear", deployments_api.clear_deployment_cache)
    r.add_put(ML + "/{model_id}/model_aliases/{model_alias}", aliases_api.put_alias)
    r.add_delete(ML + "/{model_id}/model_aliases/{model_alias}", aliases_api.delete_alias)
    add_inference_routes(app)


def add_inference_routes(app: web.Application) -> None:
    """``_inference``: a literal ``_update`` segment is tried before the ``{task_type}`` one."""
    r = app.router
    r.add_get(INFERENCE, inference_api.get_endpoints)
    r.add_put(INFERENCE + "/{inference_id}/_update", inference_api.update_endpoint)
    r.add_put(INFERENCE + "/{task_type}/{inference_id}/_update", inference_api.update_endpoint)
    for path in (INFERENCE + "/{inference_id}", INFERENCE + "/{task_type}/{inference_id}"):
        r.add_get(path, inference_api.get_endpoints)
        r.add_put(path, inference_api.put_endpoint)
        r.add_delete(path, inference_api.delete_endpoint)
        r.add_post(path, inference_api.infer)


def create_app(settings: GatewaySettings, *, redis: aioredis.Redis | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[BODY_LIMITS] = BodyLimits(max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        client = redis if redis is not None else async_client(settings.redis_url, client_name="inferq-gateway")
        blocking = async_client(settings.redis_url, blocking=True, max_connections=4, client_name="inferq-gateway")
        app[REDIS] = client
        await warn_redis_config_async(client, "gateway")
        app[MODELS] = ModelStore(client)
        app[CONTROL] = ControlPlane(
            client, RedisMemorySettings(settings.redis_memory_bytes, settings.redis_reserve_bytes)
        )
        producer = Producer(
            client,
            blocking,
            refresh_s=settings.state_refresh_s,
            cache_timeout_s=settings.cache_timeout_s,
            cache_affinity=settings.cache_affinity,
        )
        adaptive = AdaptiveService(
            app[CONTROL],
            ScalerConfig(idle_s=settings.adaptive_idle_s, cooldown_s=settings.adaptive_cooldown_s),
            settings.adaptive_interval_s,
        )
        producer.on_cold_dispatch = lambda _deployment_id: adaptive.wake.set()
        await producer.start()
        app[PRODUCER] = producer
        stop = asyncio.Event()
        planner = asyncio.create_task(
            planner_loop(app[CONTROL], settings.planner_interval_s, stop, producer.watcher.node_events, adaptive)
        )
        yield
        stop.set()
        planner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await planner
        await producer.close()
        await blocking.aclose()
        if redis is None:
            await client.aclose()

    app.cleanup_ctx.append(resources)
    add_routes(app)
    metrics.setup(app)  # GET /metrics and the request-counting middleware
    status_page.setup(app)  # GET /_status
    auth.setup(app)  # _security routes; with INFERQ_AUTH=on also the auth middleware
    return app


async def _settle_heap(app: web.Application) -> None:
    """After startup: what is alive now lives as long as the process, so the collector stops
    scanning it (``gc.freeze``), and young collections run less often: the request path
    allocates many short-lived containers, few of them in cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop (libuv: transports, accepts and timers in C) unless ``INFERQ_EVENT_LOOP=asyncio``
    or it is not installed (a dependency on Linux and macOS): 8-15% less gateway CPU per request
    (docs/benchmarks.md, "Fixed cost per request")."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.info("uvloop is not installed: the gateway runs on asyncio's own event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(settings: GatewaySettings) -> None:
    loop = new_event_loop(settings.event_loop)
    app = create_app(settings)
    app.on_startup.append(_settle_heap)
    # keepalive_timeout also bounds a new connection's wait for its first complete request head
    # (aiohttp arms it at connect): a client that sends part of its headers and stops is closed.
    web.run_app(
        app, loop=loop, host=settings.host, port=settings.port, access_log=None, print=None,
        keepalive_timeout=settings.idle_timeout_s, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        # several gateway processes may listen on one port (INFERQ_REUSE_PORT): the kernel spreads
        # connections over them, for when one event loop's CPU is not enough
        reuse_port=settings.reuse_port or None,
    )
