"""The gateway's event loop: uvloop by default, asyncio on request, a clear error otherwise."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gateway.app import new_event_loop
from shared.settings import GatewaySettings


def test_the_gateway_runs_on_uvloop_by_default() -> None:
    settings = GatewaySettings.from_env({})
    assert settings.event_loop == "uvloop"
    loop = new_event_loop(settings.event_loop)
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_s_own_loop_on_request() -> None:
    settings = GatewaySettings.from_env({"INFERQ_EVENT_LOOP": "AsyncIO"})
    loop = new_event_loop(settings.event_loop)
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


def test_an_unknown_loop_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="INFERQ_EVENT_LOOP must be one of uvloop, asyncio, not 'tokio'"):
        GatewaySettings.from_env({"INFERQ_EVENT_LOOP": "tokio"})
