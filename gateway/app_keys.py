"""Typed application keys, declared in one place."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from gateway.control import ControlPlane
from gateway.request_metrics import RequestRecorder
from shared.model_store import ModelStore
from shared.producer import Producer
from shared.settings import GatewaySettings

SETTINGS = web.AppKey("settings", GatewaySettings)
REDIS = web.AppKey("redis", aioredis.Redis)
MODELS = web.AppKey("models", ModelStore)
CONTROL = web.AppKey("control", ControlPlane)
PRODUCER = web.AppKey("producer", Producer)
RECORDER = web.AppKey("request_recorder", RequestRecorder)
