"""Fixed-bucket histograms kept as plain hash fields in Redis (pure; no I/O).

Workers and gateways count observations into Redis hashes, and any gateway reads them back
for ``GET /metrics``; the bucket bounds are declared here once, so the writers and the reader
agree. A histogram ``name`` is stored as one field per bucket, ``<name>:<i>`` (the number of
observations that fell in bucket ``i``: ``bounds[i-1] < v <= bounds[i]``; ``i == len(bounds)``
is the +Inf bucket), plus ``<name>:sum``. Buckets are not cumulative in Redis (one HINCRBY per
observation); ``Histogram.cumulative`` gives Prometheus's ``le`` view.

Fields written (``shared/lua/stats.lua`` ``stats_add``, ``gateway/request_metrics.py``):
- in ``keys.stats(dep, node)``: ``BATCH_SIZE`` (documents per forward pass) and
  ``FORWARD_SECONDS`` (duration of a forward pass), by the worker in its COMPLETE round trip;
- in ``keys.METRICS_GATEWAY``: ``REQUEST_SECONDS`` per deployment (end-to-end ``_infer`` time).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Buckets:
    name: str
    bounds: tuple[float, ...]  # upper bounds, increasing; +Inf is implied

    def index(self, value: float) -> int:
        """The bucket ``value`` falls in (``le`` semantics: a value equal to a bound is in it)."""
        return bisect_left(self.bounds, value)

    def field(self, index: int, prefix: str = "") -> str:
        return f"{prefix}{self.name}:{index}"

    def sum_field(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}:sum"

    def observe(self, into: dict[str, float], value: float, prefix: str = "") -> None:
        """Add one observation to ``into``, a map of field -> increment to write later."""
        bucket = self.field(self.index(value), prefix)
        into[bucket] = into.get(bucket, 0) + 1
        total = self.sum_field(prefix)
        into[total] = into.get(total, 0.0) + value

    def read(self, fields: Mapping[str, str], prefix: str = "") -> Histogram:
        """The histogram stored in ``fields`` (decoded hash fields); absent buckets are 0."""
        counts = tuple(int(float(fields.get(self.field(i, prefix), 0))) for i in range(len(self.bounds) + 1))
        return Histogram(self.bounds, counts, float(fields.get(self.sum_field(prefix), 0.0)))


@dataclass(frozen=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; len(bounds) + 1 (the last is +Inf)
    sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, observations <= le)`` for every bound, then ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out


# End-to-end request time: resolves sub-millisecond cache hits and multi-second requests.
REQUEST_SECONDS = Buckets(
    "request_seconds",
    (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
# Documents in one forward pass.
BATCH_SIZE = Buckets("batch_size", (1, 2, 4, 8, 16, 32, 64, 128))
# Time of one forward pass.
FORWARD_SECONDS = Buckets(
    "forward_seconds", (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
)
