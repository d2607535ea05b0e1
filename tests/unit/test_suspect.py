"""Which nodes get no new requests: the beat's value and the alive key's TTL (pure)."""

from __future__ import annotations

from shared.cluster_view import DeploymentView
from shared.deployment_store import RouteStatus
from shared.node_registry import SUSPECT_STALLED_MS, Beat, suspect


def test_beat_round_trips_and_old_values_are_not_beats() -> None:
    beat = Beat(1_700_000_000_000, 6000, 250)
    assert Beat.decode(beat.encode()) == beat
    assert Beat.decode(beat.encode().decode()) == beat
    assert Beat.decode(b"1700000000000") is None and Beat.decode(None) is None and Beat.decode(b"a b c") is None


def test_suspect_when_gone_late_or_stalled() -> None:
    fresh = Beat(1, 6000).encode()
    assert not suspect(fresh, 5900)
    assert suspect(fresh, -2)  # no alive key
    assert not suspect(fresh, -1)  # a key without TTL was not written by a heartbeat
    assert not suspect(fresh, 2001) and suspect(fresh, 1999)  # two beats (every TTL / 3) missed
    assert suspect(Beat(1, 6000, SUSPECT_STALLED_MS).encode(), 5900)
    assert not suspect(Beat(1, 6000, SUSPECT_STALLED_MS - 1).encode(), 5900)
    assert not suspect(b"1700000000000", 100)  # an older node's bare timestamp


def view(suspects: frozenset[str]) -> DeploymentView:
    started = RouteStatus("started", current_allocations=2)
    doc = {"deployment_id": "d", "model_id": "m", "targets": {"a": 2, "b": 2, "c": 1}}
    routes = {"a": started, "b": started, "c": RouteStatus("starting")}
    return DeploymentView(doc, routes, suspects)


def test_routing_avoids_suspect_nodes_unless_all_are() -> None:
    assert view(frozenset()).routable_weights() == {"a": 2, "b": 2}
    assert view(frozenset({"a"})).routable_weights() == {"b": 2}
    assert view(frozenset({"a", "b"})).routable_weights() == {"a": 2, "b": 2}
