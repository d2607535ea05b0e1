"""The gateways' request counters: counted in memory, added into one cluster-wide Redis hash.

Owns ``keys.METRICS_GATEWAY`` (a hash). Field names are JSON arrays (ids may hold any
character), values are counts:

- ``["r", route, deployment, code]``: HTTP requests by route template, the deployment the
  request named (``""`` when it named none or an unknown one: a user string never becomes a
  label), and status class (``2xx``, ``3xx``, ``4xx`` but 429, ``429``, ``5xx``);
- ``["l", deployment, i]`` / ``["l", deployment, "sum"]``: end-to-end time of ``_infer``
  requests per deployment, non-cumulative buckets of ``shared.histograms.REQUEST_SECONDS``.

A request costs a few dict increments; each gateway adds its deltas to the hash in one
MULTI every ``flush_interval_s`` and right before it renders a scrape. So every gateway
reports the same cluster-wide totals (another gateway's latest requests appear within one
flush interval), its own requests are in its own scrape at once, and the counters survive
gateway restarts. A failed flush keeps its deltas for the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared import keys
from shared.histograms import REQUEST_SECONDS, Histogram

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"  # requests no route matched (their path is not a label)
CLIENT_CLOSED = 499  # the client went away before the answer (counted as 4xx)


def status_class(status: int) -> str:
    if status == 429:
        return "429"
    return f"{min(max(status // 100, 1), 5)}xx"


@dataclass(frozen=True)
class RequestCount:
    route: str
    deployment: str
    code: str
    count: int


@dataclass(frozen=True)
class GatewayFigures:
    """What ``keys.METRICS_GATEWAY`` holds, decoded."""

    requests: list[RequestCount]
    latency: dict[str, Histogram]  # deployment -> end-to-end _infer time

    def only(self, deployment_ids: set[str]) -> GatewayFigures:
        """The figures of these deployments and of requests that named none (``""``)."""
        return GatewayFigures(
            [r for r in self.requests if r.deployment == "" or r.deployment in deployment_ids],
            {d: h for d, h in self.latency.items() if d in deployment_ids},
        )


def _field(*parts: str | int) -> str:
    return json.dumps(parts, separators=(",", ":"))


def request_field(route: str, deployment: str, code: str) -> str:
    return _field("r", route, deployment, code)


def latency_field(deployment: str, bucket: int | str) -> str:
    """The field of one ``REQUEST_SECONDS`` bucket (an index) or of the sum (``"sum"``)."""
    return _field("l", deployment, bucket)


def parse_gateway_hash(raw: Mapping[bytes | str, bytes | str]) -> GatewayFigures:
    """Decode an ``HGETALL`` of ``keys.METRICS_GATEWAY``; fields it does not know are skipped."""
    requests: list[RequestCount] = []
    buckets: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    size = len(REQUEST_SECONDS.bounds) + 1
    for raw_field, raw_value in raw.items():
        try:
            parts = json.loads(raw_field)
            value = float(raw_value)
        except (ValueError, TypeError):
            continue
        if not isinstance(parts, list) or not parts:
            continue
        if parts[0] == "r" and len(parts) == 4:
            requests.append(RequestCount(str(parts[1]), str(parts[2]), str(parts[3]), int(value)))
        elif parts[0] == "l" and len(parts) == 3:
            deployment, slot = str(parts[1]), parts[2]
            if slot == "sum":
                sums[deployment] = value
            elif isinstance(slot, int) and 0 <= slot < size:
                buckets.setdefault(deployment, [0] * size)[slot] = int(value)
    latency = {
        deployment: Histogram(REQUEST_SECONDS.bounds, tuple(buckets.get(deployment, [0] * size)), sums.get(deployment, 0.0))
        for deployment in set(buckets) | set(sums)
    }
    requests.sort(key=lambda r: (r.route, r.deployment, r.code))
    return GatewayFigures(requests, latency)


async def forget_deployment(client: aioredis.Redis, deployment_id: str) -> int:
    """Drop a removed deployment's fields from ``keys.METRICS_GATEWAY`` (its series end);
    returns how many. A control-plane call: reads the hash's field names (a few hundred)."""
    doomed = []
    for raw in await client.hkeys(keys.METRICS_GATEWAY):
        try:
            parts = json.loads(raw)
        except ValueError:
            continue
        if isinstance(parts, list) and (
            (parts[0] == "r" and len(parts) == 4 and parts[2] == deployment_id)
            or (parts[0] == "l" and len(parts) == 3 and parts[1] == deployment_id)
        ):
            doomed.append(raw)
    return int(await client.hdel(keys.METRICS_GATEWAY, *doomed)) if doomed else 0


class RequestRecorder:
    """This gateway's request counts since its last flush."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._pending: Counter[str] = Counter()
        self._sums: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._field_cache: dict[tuple[str | int, ...], str] = {}

    def record(self, route: str, deployment: str, status: int, seconds: float, *, latency: bool) -> None:
        """Count one request; with ``latency`` (an ``_infer`` on a known deployment) its time too."""
        self._pending[self._cached("r", route, deployment, status_class(status))] += 1
        if latency and deployment:
            self._pending[self._cached("l", deployment, REQUEST_SECONDS.index(seconds))] += 1
            sum_field = self._cached("l", deployment, "sum")
            self._sums[sum_field] = self._sums.get(sum_field, 0.0) + seconds

    def _cached(self, *parts: str | int) -> str:
        """The field name of ``parts`` (``_field``), remembered: the request path builds few."""
        found = self._field_cache.get(parts)
        if found is None:
            found = _field(*parts)
            if len(self._field_cache) < 10_000:
                self._field_cache[parts] = found
        return found

    async def flush(self) -> None:
        """Add what was counted since the last flush to the cluster-wide hash (one MULTI)."""
        async with self._lock:
            if not self._pending and not self._sums:
                return
            counts, sums = self._pending, self._sums
            self._pending, self._sums = Counter(), {}
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for field, n in counts.items():
                        pipe.hincrby(keys.METRICS_GATEWAY, field, n)
                    for field, total in sums.items():
                        pipe.hincrbyfloat(keys.METRICS_GATEWAY, field, total)
                    await pipe.execute()
            except Exception:
                self._pending.update(counts)  # try again with the next flush
                for field, total in sums.items():
                    self._sums[field] = self._sums.get(field, 0.0) + total
                raise

    async def flush_loop(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("request metrics flush failed: %s", exc)
