"""Adaptive allocations, pure parts: the settings object (ES's messages and shapes) and the scaler."""

from __future__ import annotations

import pytest

from gateway.adaptive import AdaptiveScaler, KalmanFilter1d, NodeSample, ScalerConfig, Window, window_of
from gateway.adaptive_settings import (
    RESET,
    AdaptiveAllocations,
    merged_for_update,
    parse_adaptive_allocations,
)
from gateway.start_params import parse_start, parse_update
from shared.errors import ActionRequestValidation, ValidationError, XContentParseError
from shared.queue import BULK, INTERACTIVE, lane_for_input_type


def reasons(exc: pytest.ExceptionInfo[ActionRequestValidation]) -> str:
    return str(exc.value.reason)


def test_start_with_adaptive_allocations_defaults_the_count_and_keeps_the_settings() -> None:
    params = parse_start("m", {}, {"adaptive_allocations": {"enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 2}})
    assert params.number_of_allocations == 1
    assert params.adaptive_allocations is not None
    assert params.adaptive_allocations.to_json() == {"enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 2}
    assert parse_start("m", {}, {"adaptive_allocations": {"enabled": True, "min_number_of_allocations": 3}}).number_of_allocations == 3
    assert parse_start("m", {}, {"adaptive_allocations": {"enabled": False}}).number_of_allocations == 1


def test_start_validation_messages_are_elasticsearchs() -> None:
    with pytest.raises(ActionRequestValidation) as exc:
        parse_start("m", {"number_of_allocations": "2"}, {"adaptive_allocations": {"enabled": True, "min_number_of_allocations": -2, "max_number_of_allocations": 0}})
    text = reasons(exc)
    assert "1: [number_of_allocations] cannot be set if adaptive allocations is enabled;" in text
    assert "[min_number_of_allocations] must be a non-negative integer or null" in text
    assert "[max_number_of_allocations] must be a positive integer or null" in text
    with pytest.raises(ActionRequestValidation) as exc:
        parse_start("m", {}, {"adaptive_allocations": {"enabled": True, "min_number_of_allocations": 3, "max_number_of_allocations": 2}})
    assert "[min_number_of_allocations] must not be larger than [max_number_of_allocations]" in reasons(exc)
    # a count with adaptive allocations disabled is fine
    assert parse_start("m", {"number_of_allocations": "2"}, {"adaptive_allocations": {"enabled": False}}).number_of_allocations == 2


def test_parse_errors() -> None:
    with pytest.raises(XContentParseError, match=r"\[autoscaling_settings\] unknown field \[minimum\]"):
        parse_adaptive_allocations({"minimum": 1})
    with pytest.raises(XContentParseError, match="failed to parse field \\[enabled\\]"):
        parse_adaptive_allocations({"enabled": 3})
    with pytest.raises(XContentParseError):
        parse_adaptive_allocations("yes")
    assert parse_adaptive_allocations(None) is RESET
    assert parse_adaptive_allocations({"enabled": True, "min_number_of_allocations": None}).without_unset() == AdaptiveAllocations(True)


def test_update_merges_resets_and_refuses_a_count_with_enabled_settings() -> None:
    stored = AdaptiveAllocations(True, 0, 4)
    update = parse_update({}, {"adaptive_allocations": {"max_number_of_allocations": 2}})
    assert update.number_of_allocations is None
    assert merged_for_update(stored, update.adaptive_allocations, None) == AdaptiveAllocations(True, 0, 2)
    assert merged_for_update(stored, parse_update({}, {"adaptive_allocations": None}).adaptive_allocations, 2) is None
    assert merged_for_update(stored, AdaptiveAllocations(min_number_of_allocations=-1), None) == AdaptiveAllocations(True, None, 4)
    with pytest.raises(ValidationError, match="cannot be set if adaptive allocations is enabled"):
        merged_for_update(stored, None, 3)
    assert merged_for_update(stored, AdaptiveAllocations(enabled=False), 3) == AdaptiveAllocations(False, 0, 4)
    with pytest.raises(ActionRequestValidation):
        merged_for_update(stored, AdaptiveAllocations(min_number_of_allocations=5), None)


def test_lanes_of_input_types() -> None:
    assert lane_for_input_type(None) == INTERACTIVE
    assert lane_for_input_type("search") == INTERACTIVE
    assert lane_for_input_type("ingest") == BULK


def test_kalman_filter_smooths_and_follows_a_jump() -> None:
    f = KalmanFilter1d(100, autodetect_dynamics_change=True)
    for _ in range(50):
        f.add(10.0, 10.0)
    assert f.value == pytest.approx(10.0) and f.error < 1.0
    f.add(12.0, 10.0)  # within the noise: barely moves
    assert f.value < 10.2
    f.add(1000.0, 10.0)  # far off: a change of dynamics, followed at once
    assert f.value > 900.0


def test_window_of_counts_deltas_and_pending() -> None:
    before = {"a": NodeSample(10, 1, 0, 1000.0)}
    after = {"a": NodeSample(30, 2, 5, 3000.0), "b": NodeSample(99, 0, 2, 50.0)}
    window = window_of(before, after)
    assert window == Window(answered=20, failed=1, pending=7, busy_s=2.0)
    assert window.requests == 28 and window.time_per_request_s == pytest.approx(0.1)


def drive(scaler: AdaptiveScaler, window: Window, seconds: int, start_s: float, allocations: int) -> tuple[float, int]:
    now = start_s
    for _ in range(seconds):
        now += 1
        scaler.process(window, 1.0, allocations, now)
        new = scaler.decide(0, 2, 8, now)
        if new is not None:
            allocations = new
    return now, allocations


def test_scaler_scales_up_under_load_down_after_cooldown_and_to_zero_when_idle() -> None:
    config = ScalerConfig(idle_s=30, cooldown_s=10)
    scaler = AdaptiveScaler("d", 1, 0.0, config)
    # 50 requests/s at 30 ms of busy time each: 1.5 allocations of work -> 2 (the maximum)
    now, allocations = drive(scaler, Window(answered=50, busy_s=1.5), 5, 0.0, 1)
    assert allocations == 2
    # light load (0.2 allocations): back to 1, but not before the cool-down has passed
    now, allocations = drive(scaler, Window(answered=10, busy_s=0.2), 5, now, allocations)
    assert allocations == 2
    now, allocations = drive(scaler, Window(answered=10, busy_s=0.2), 20, now, allocations)
    assert allocations == 1
    # no requests: zero after the idle time, not before
    now, allocations = drive(scaler, Window(), 20, now, allocations)
    assert allocations == 1
    now, allocations = drive(scaler, Window(), 15, now, allocations)
    assert allocations == 0
    # a waiting request at zero: up at once
    scaler.process(Window(pending=1), 1.0, 0, now + 1)
    assert scaler.decide(0, 2, 8, now + 1) == 1


def test_scaler_respects_min_max_and_capacity() -> None:
    scaler = AdaptiveScaler("d", 1, 0.0, ScalerConfig(idle_s=1, cooldown_s=0))
    for second in range(1, 6):
        scaler.process(Window(answered=100, busy_s=10.0), 1.0, scaler.allocations, float(second))
        scaler.decide(1, 32, 3, float(second))
    assert scaler.allocations == 3  # 10 allocations of work, 3 fit
    for second in range(6, 40):
        scaler.process(Window(), 1.0, scaler.allocations, float(second))
        scaler.decide(1, 32, 3, float(second))
    assert scaler.allocations == 1  # min 1: never zero
