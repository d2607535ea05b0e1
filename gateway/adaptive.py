"""The adaptive allocations scaler (pure): how many allocations a deployment needs now.

Elasticsearch's design (``AdaptiveAllocationsScaler``, 8.15+), with two changes measured in
``benchmarks/adaptive.py``:

- Every interval the caller hands in what happened since the last one, summed over the nodes
  (``window_of``): requests answered (cache hits included), failed (errors, timeouts,
  rejections), waiting now (queued or in flight), and the **busy time** of the allocations.
  Elasticsearch multiplies the request rate by the average inference time per request; with
  batching a request's "inference time" is its whole forward pass, which overstates the load
  by the batch size, so the time per request here is busy time / requests (a cache hit costs
  no allocation time). Without busy time (older workers) it falls back to the per-request time.
- Both are smoothed by a 1-d Kalman filter (``KalmanFilter1d``: Poisson variance for the rate,
  squared-mean variance for the time, a jump of more than 10 standard deviations restarts the
  rate estimate). The load is rate × time: allocation-seconds of work per second.
- Hysteresis: one more allocation while the load's lower bound per allocation is above 0.9,
  one fewer while the upper bound would stay below 0.85 with one fewer; never below 1 by load.
- Cool-down: no scale-down within ``cooldown_s`` of a scale-up.
- Idle: with a minimum of 0, no request for ``idle_s`` scales to zero.
- **From zero** (beyond Elasticsearch): a deployment at zero allocations with any request
  waiting goes to ``max(1, min)`` at once, whatever the filters say; the request waits in its
  queue meanwhile (see ``gateway.adaptive_service``).
- Bounds: ``[min, max]`` of the settings (max 32 when unset, as ES) and ``capacity_allocations``
  (what the planner's processors can hold); capacity never forces allocations away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

SCALE_UP_THRESHOLD = 0.9
SCALE_DOWN_THRESHOLD = 0.85
DYNAMICS_CHANGE_SIGMAS_SQUARED = 100.0


@dataclass
class KalmanFilter1d:
    """Estimates the mean of a noisy series and its standard error (ES's ``KalmanFilter1d``):
    a fixed smoothing in steady state; a measurement 10 standard deviations off (or a change
    announced by the caller) lets the next two steps follow the data."""

    smoothing_factor: float
    autodetect_dynamics_change: bool
    value: float = math.inf
    variance: float = math.inf
    _changed_last_time: bool = False

    @property
    def has_value(self) -> bool:
        return math.isfinite(self.value) and math.isfinite(self.variance)

    @property
    def error(self) -> float:
        return math.sqrt(self.variance)

    @property
    def lower(self) -> float:
        return self.value - self.error

    @property
    def upper(self) -> float:
        return self.value + self.error

    def add(self, value: float, variance: float, dynamics_changed: bool = False) -> None:
        if not self.has_value:
            changed = True
            self.value, self.variance = value, variance
        else:
            process_variance = variance / self.smoothing_factor
            changed = dynamics_changed or self._detect_change(value, variance)
            if changed or self._changed_last_time:
                process_variance = value**2
            gain = (self.variance + process_variance) / (self.variance + process_variance + variance)
            self.value += gain * (value - self.value)
            self.variance = (1 - gain) * (self.variance + process_variance)
        self._changed_last_time = changed

    def _detect_change(self, value: float, variance: float) -> bool:
        spread = variance + self.variance
        return self.autodetect_dynamics_change and spread > 0 and (value - self.value) ** 2 / spread > DYNAMICS_CHANGE_SIGMAS_SQUARED


@dataclass(frozen=True)
class NodeSample:
    """One node's cumulative counters for a deployment (its stats hash) and what waits there now."""

    answered: int  # inference_count: results, cache hits included
    failed: int  # error_count + timeout_count + rejected_execution_count
    pending: int  # queued (both lanes) + in processing lists
    busy_ms: float  # allocation busy time (the forward passes' time, ``forward_seconds:sum``), or the summed per-request time


@dataclass(frozen=True)
class Window:
    """What happened in one interval, summed over the nodes."""

    answered: int = 0
    failed: int = 0
    pending: int = 0
    busy_s: float = 0.0

    @property
    def requests(self) -> int:
        """Requests seen in the window (ES: success + pending + failed)."""
        return self.answered + self.pending + self.failed

    @property
    def time_per_request_s(self) -> float | None:
        return self.busy_s / self.answered if self.answered > 0 else None


def window_of(previous: Mapping[str, NodeSample], current: Mapping[str, NodeSample]) -> Window:
    """The window between two readings. A node seen for the first time counts only its pending
    requests (its counters' history is not this window's); counters never go backwards."""
    answered = failed = pending = 0
    busy_ms = 0.0
    for node, now in current.items():
        pending += now.pending
        before = previous.get(node)
        if before is None:
            continue
        answered += max(0, now.answered - before.answered)
        failed += max(0, now.failed - before.failed)
        busy_ms += max(0.0, now.busy_ms - before.busy_ms)
    return Window(answered, failed, pending, busy_ms / 1000)


@dataclass(frozen=True)
class ScalerConfig:
    idle_s: float = 900.0  # INFERQ_ADAPTIVE_IDLE_S
    cooldown_s: float = 300.0  # INFERQ_ADAPTIVE_COOLDOWN_S
    smoothing_factor: float = 100.0


@dataclass
class AdaptiveScaler:
    """One deployment's scaler; lives in the planner's process (state is rebuilt after a
    lease change, as Elasticsearch rebuilds it after a master change)."""

    deployment_id: str
    allocations: int
    now_s: float
    config: ScalerConfig = field(default_factory=ScalerConfig)
    rate: KalmanFilter1d = field(init=False)
    time: KalmanFilter1d = field(init=False)
    last_request_s: float = field(init=False)
    last_scale_up_s: float | None = None
    waiting: int = 0  # requests waiting in the last window
    _dynamics_changed: bool = False

    def __post_init__(self) -> None:
        self.rate = KalmanFilter1d(self.config.smoothing_factor, autodetect_dynamics_change=True)
        self.time = KalmanFilter1d(self.config.smoothing_factor, autodetect_dynamics_change=False)
        self.last_request_s = self.now_s

    def process(self, window: Window, interval_s: float, allocations: int, now_s: float) -> None:
        """Feed one interval's window; ``allocations`` is the deployment's current count."""
        self.waiting = window.pending
        if window.requests > 0:
            self.last_request_s = now_s
        rate = window.requests / interval_s
        rate_estimate = self.rate.value if self.rate.has_value else rate
        self.rate.add(rate, max(1.0, rate_estimate * interval_s) / interval_s**2)
        per_request = window.time_per_request_s
        if per_request is not None:
            time_estimate = self.time.value if self.time.has_value else per_request
            self.time.add(per_request, time_estimate**2 / window.answered, self._dynamics_changed)
        self.allocations = allocations
        self._dynamics_changed = False

    @property
    def load_lower(self) -> float:
        """0 until a request has been answered: a queue that waits for a loading model says
        nothing about the work per request (ES assumes 1 s, and overshoots after a cold start)."""
        if not self.time.has_value:
            return 0.0
        return max(0.0, self.rate.lower) * max(0.0, self.time.lower)

    @property
    def load_upper(self) -> float:
        time_upper = self.time.upper if self.time.has_value else 1.0
        return self.rate.upper * time_upper

    def decide(self, min_allocations: int, max_allocations: int, capacity_allocations: int, now_s: float) -> int | None:
        """The new allocation count, or None to keep the current one."""
        if not self.rate.has_value:
            return None
        old = self.allocations
        ceiling = max(min_allocations, min(max_allocations, max(capacity_allocations, old)))
        if old == 0:
            wanted = max(1, min_allocations) if self.waiting > 0 else min_allocations
        else:
            wanted = old
            while wanted < ceiling and self.load_lower / wanted > SCALE_UP_THRESHOLD:
                wanted += 1
            while wanted > 1 and self.load_upper / (wanted - 1) < SCALE_DOWN_THRESHOLD:
                wanted -= 1
        wanted = min(max(wanted, min_allocations), ceiling)
        if min_allocations == 0 and self.waiting == 0 and now_s - self.last_request_s > self.config.idle_s:
            wanted = 0
        if wanted < old and self.last_scale_up_s is not None and now_s < self.last_scale_up_s + self.config.cooldown_s:
            return None
        if wanted == old:
            return None
        if wanted > old:
            self.last_scale_up_s = now_s
        self._dynamics_changed = True
        self.allocations = wanted
        return wanted
