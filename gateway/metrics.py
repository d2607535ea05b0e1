"""``GET /metrics``: the whole cluster in Prometheus's text format, rendered by prometheus_client.

Every scrape reads one ``ClusterSnapshot`` from Redis (``gateway/cluster_snapshot.py``) and
renders it through a collector made for that scrape, so any gateway describes the whole
cluster and two gateways agree. Labels are bounded: ``deployment`` and ``model`` come from the
deployments that exist, ``node`` from the registered nodes, ``route`` from the route table,
``code`` from five status classes, ``action`` from the planner's few actions.

Also here: the middleware that counts every request into the gateway's ``RequestRecorder``
(``gateway/request_metrics.py``), and ``setup``, which wires both into an app.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.app_keys import PRODUCER, RECORDER, REDIS
from gateway.cluster_snapshot import ClusterSnapshot, read_snapshot
from gateway.http import Handler, check_params
from gateway.request_metrics import CLIENT_CLOSED, UNMATCHED_ROUTE, RequestRecorder
from shared.histograms import Histogram

PATH = "/metrics"
FLUSH_INTERVAL_S = 1.0

DN = ("deployment", "node")


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(floatToGoString(le), float(n)) for le, n in histogram.cumulative()]


def families(snapshot: ClusterSnapshot) -> Iterator[Metric]:
    """Every metric family of the snapshot, in a stable order (pure)."""
    requests = CounterMetricFamily(
        "inferq_http_requests",
        "HTTP requests answered by all gateways, by route template, deployment and status class.",
        labels=("route", "deployment", "code"),
    )
    for r in snapshot.gateway.requests:
        requests.add_metric((r.route, r.deployment, r.code), r.count)
    yield requests

    latency = HistogramMetricFamily(
        "inferq_request_duration_seconds",
        "End-to-end time of _infer requests as the gateways measured it, per deployment.",
        labels=("deployment",),
    )
    for deployment, histogram in sorted(snapshot.gateway.latency.items()):
        latency.add_metric((deployment,), _buckets(histogram), histogram.sum)
    yield latency

    info = GaugeMetricFamily("inferq_deployment_info", "One per deployment: its model.", labels=("deployment", "model"))
    state = GaugeMetricFamily(
        "inferq_deployment_state", "1 for the deployment's current assignment state.", labels=("deployment", "state")
    )
    wanted = GaugeMetricFamily(
        "inferq_deployment_requested_allocations", "Allocations the deployment asked for.", labels=("deployment",)
    )
    for d in snapshot.deployments:
        info.add_metric((d.deployment_id, d.model_id), 1)
        state.add_metric((d.deployment_id, d.state), 1)
        wanted.add_metric((d.deployment_id,), d.number_of_allocations)
    yield info
    yield state
    yield wanted

    gauges = {
        "allocations": GaugeMetricFamily("inferq_allocations", "Allocations running on the node.", labels=DN),
        "target": GaugeMetricFamily("inferq_allocations_target", "Allocations the planner assigned to the node.", labels=DN),
        "queue": GaugeMetricFamily("inferq_queue_depth", "Requests waiting in the node's queue.", labels=DN),
        "bulk": GaugeMetricFamily(
            "inferq_bulk_queue_depth", "Bulk-job requests waiting in the node's bulk lane.", labels=DN
        ),
        "capacity": GaugeMetricFamily("inferq_queue_capacity", "Size of the node's queue.", labels=DN),
        "in_flight": GaugeMetricFamily(
            "inferq_in_flight", "Requests the node's allocations have taken and not answered yet.", labels=DN
        ),
        "cache_used": GaugeMetricFamily("inferq_cache_used_bytes", "Bytes the node's result cache uses.", labels=DN),
        "cache_budget": GaugeMetricFamily("inferq_cache_budget_bytes", "Byte budget of the node's result cache.", labels=DN),
        "cache_entries": GaugeMetricFamily("inferq_cache_entries", "Entries in the node's result cache.", labels=DN),
    }
    counters = {
        "inference": CounterMetricFamily(
            "inferq_inference", "Inference results served by the node, cache hits included.", labels=DN
        ),
        "inference_seconds": CounterMetricFamily(
            "inferq_inference_seconds", "Summed inference time of those results (cache hits count 0).", labels=DN
        ),
        "failures": CounterMetricFamily(
            "inferq_inference_failures",
            "Documents that failed: error (inference), rejected (queue full), timeout.",
            labels=(*DN, "reason"),
        ),
        "hits": CounterMetricFamily("inferq_cache_hits", "Result cache hits.", labels=DN),
        "misses": CounterMetricFamily("inferq_cache_misses", "Result cache misses.", labels=DN),
        "evictions": CounterMetricFamily("inferq_cache_evictions", "Entries evicted from the result cache.", labels=DN),
    }
    batch = HistogramMetricFamily(
        "inferq_batch_size_documents", "Documents per forward pass, as the workers ran them.", labels=DN
    )
    forward = HistogramMetricFamily(
        "inferq_forward_pass_duration_seconds", "Duration of a forward pass on a worker.", labels=DN
    )
    for d in snapshot.deployments:
        for p in d.placements:
            labels = (d.deployment_id, p.node_id)
            c = p.counters
            gauges["allocations"].add_metric(labels, p.allocations if p.routing_state == "started" else 0)
            gauges["target"].add_metric(labels, p.target_allocations)
            gauges["queue"].add_metric(labels, p.queue_depth)
            gauges["bulk"].add_metric(labels, p.bulk_queue_depth)
            gauges["capacity"].add_metric(labels, d.queue_capacity)
            gauges["in_flight"].add_metric(labels, p.in_flight)
            gauges["cache_used"].add_metric(labels, p.cache.used_bytes)
            gauges["cache_budget"].add_metric(labels, d.cache_budget_bytes)
            gauges["cache_entries"].add_metric(labels, p.cache.entries)
            counters["inference"].add_metric(labels, c.inference_count)
            counters["inference_seconds"].add_metric(labels, c.inference_time_ms_sum / 1000)
            counters["failures"].add_metric((*labels, "error"), c.error_count)
            counters["failures"].add_metric((*labels, "rejected"), c.rejected_execution_count)
            counters["failures"].add_metric((*labels, "timeout"), c.timeout_count)
            counters["hits"].add_metric(labels, p.cache.hits)
            counters["misses"].add_metric(labels, p.cache.misses)
            counters["evictions"].add_metric(labels, p.cache.evictions)
            batch.add_metric(labels, _buckets(p.batch_size), p.batch_size.sum)
            forward.add_metric(labels, _buckets(p.forward_seconds), p.forward_seconds.sum)
    yield from gauges.values()
    yield from counters.values()
    yield batch
    yield forward

    up = GaugeMetricFamily("inferq_node_up", "1 while the node's heartbeat key lives.", labels=("node",))
    suspect = GaugeMetricFamily(
        "inferq_node_suspect", "1 while a live node misses beats or is stalled (it gets no new requests).", labels=("node",)
    )
    age = GaugeMetricFamily(
        "inferq_node_heartbeat_age_seconds", "Time since the node's last heartbeat (live nodes).", labels=("node",)
    )
    processors = GaugeMetricFamily("inferq_node_processors", "Processors the node declared.", labels=("node",))
    memory = GaugeMetricFamily("inferq_node_memory_bytes", "Memory the node declared.", labels=("node",))
    node_allocations = GaugeMetricFamily(
        "inferq_node_allocations", "Allocations running on the node, all deployments.", labels=("node",)
    )
    used = GaugeMetricFamily(
        "inferq_node_allocated_processors", "Processors in use: allocations x threads per allocation.", labels=("node",)
    )
    for n in snapshot.nodes:
        up.add_metric((n.node_id,), 1 if n.alive else 0)
        suspect.add_metric((n.node_id,), 1 if n.suspect else 0)
        if n.heartbeat_age_s is not None:
            age.add_metric((n.node_id,), n.heartbeat_age_s)
        processors.add_metric((n.node_id,), n.processors)
        memory.add_metric((n.node_id,), n.memory_bytes)
        node_allocations.add_metric((n.node_id,), n.allocations)
        used.add_metric((n.node_id,), n.allocated_processors)
    yield from (up, suspect, age, processors, memory, node_allocations, used)

    passes = CounterMetricFamily("inferq_planner_passes", "Planner passes run (by the lease holder).")
    passes.add_metric((), snapshot.planner_actions.get("pass", 0))
    yield passes
    actions = CounterMetricFamily(
        "inferq_planner_actions",
        "Planner actions: retarget (a deployment's allocations re-placed), reap_node (a dead node "
        "dropped), requeue (a dead node's queued work moved).",
        labels=("action",),
    )
    for action, count in sorted(snapshot.planner_actions.items()):
        if action != "pass":
            actions.add_metric((action,), count)
    yield actions

    read = GaugeMetricFamily("inferq_scrape_read_seconds", "Time this scrape spent reading Redis.")
    read.add_metric((), snapshot.read_seconds)
    yield read


class SnapshotCollector(Collector):
    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


def render(snapshot: ClusterSnapshot, accept: str = "") -> tuple[bytes, str]:
    """The exposition (text format, or OpenMetrics when ``accept`` asks for it) and its type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


async def get_metrics(request: web.Request) -> web.Response:
    check_params(request, ())
    await request.app[RECORDER].flush()  # this gateway's own requests, up to this one
    snapshot = await read_snapshot(request.app[REDIS])
    # rendering is CPU work (about 7 us a sample): off the event loop, so requests keep flowing
    body, content_type = await asyncio.to_thread(render, snapshot, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the status the error middleware rendered, and the whole time."""
    started = time.perf_counter()
    status = CLIENT_CLOSED
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        status = 500
        raise
    finally:
        _record(request, status, time.perf_counter() - started)


def _record(request: web.Request, status: int, seconds: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED_ROUTE
    infer = route.endswith("/_infer")
    deployment = ""
    model_id = request.match_info.get("model_id")
    if model_id is not None and PRODUCER in request.app:
        cluster = request.app[PRODUCER].watcher.view
        # _infer takes a model id for its first deployment, as the producer resolves it; other
        # routes are labelled only when they name a deployment
        view = cluster.resolve(model_id) if infer else cluster.deployments.get(model_id)
        deployment = view.deployment_id if view is not None else ""
    request.app[RECORDER].record(route, deployment, status, seconds, latency=infer)


def setup(app: web.Application) -> None:
    """Add ``GET /metrics``, the counting middleware (outermost) and the flush loop. Call after
    the resources context is registered (the recorder needs ``REDIS``)."""
    app.router.add_get(PATH, get_metrics)
    app.middlewares.insert(0, count_requests)

    async def recorder_ctx(app: web.Application) -> AsyncIterator[None]:
        recorder = RequestRecorder(app[REDIS])
        app[RECORDER] = recorder
        stop = asyncio.Event()
        loop = asyncio.create_task(recorder.flush_loop(FLUSH_INTERVAL_S, stop))
        yield
        stop.set()
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        with contextlib.suppress(Exception):
            await recorder.flush()

    app.cleanup_ctx.append(recorder_ctx)
