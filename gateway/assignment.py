"""The ``assignment`` object of start/update responses, and the states derived from routes (pure).

Spec §1.2–1.3: ``allocation_status.state`` is ``starting`` with no allocations on started
routes, ``started`` below the requested count, else ``fully_allocated``;
``assignment_state`` is ``started`` once any route has started (``stopping`` is sticky). A
deployment adaptive allocations scaled to zero (``number_of_allocations`` 0) is ``started`` and
``fully_allocated``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.deployment_store import RouteStatus

WAIT_FOR_ORDER = {"starting": 0, "started": 1, "fully_allocated": 2}


def routable_allocations(routes: Mapping[str, RouteStatus]) -> int:
    return sum(r.current_allocations for r in routes.values() if r.routing_state == "started")


def allocation_state(doc: Mapping[str, Any], routes: Mapping[str, RouteStatus]) -> str:
    current = routable_allocations(routes)
    if int(doc["task_parameters"]["number_of_allocations"]) == 0:
        return "fully_allocated"  # adaptive allocations scaled to zero: nothing is missing
    if current == 0:
        return "starting"
    if current < int(doc["task_parameters"]["number_of_allocations"]):
        return "started"
    return "fully_allocated"


def assignment_state(doc: Mapping[str, Any], routes: Mapping[str, RouteStatus]) -> str:
    if doc.get("assignment_state") in ("stopping", "failed"):
        return str(doc["assignment_state"])
    if int(doc["task_parameters"]["number_of_allocations"]) == 0:
        return "started"  # scaled to zero by adaptive allocations; the next request scales it up
    return "started" if any(r.routing_state == "started" for r in routes.values()) else "starting"


def allocation_status(doc: Mapping[str, Any], routes: Mapping[str, RouteStatus]) -> dict[str, Any]:
    return {
        "allocation_count": routable_allocations(routes),
        "target_allocation_count": int(doc["task_parameters"]["number_of_allocations"]),
        "state": allocation_state(doc, routes),
    }


def iso_time(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def routing_table(doc: Mapping[str, Any], routes: Mapping[str, RouteStatus]) -> dict[str, Any]:
    targets: Mapping[str, int] = doc.get("targets", {})
    table: dict[str, Any] = {}
    for node in sorted(set(targets) | set(routes)):
        route = routes.get(node)
        table[node] = {
            "current_allocations": route.current_allocations if route else 0,
            "target_allocations": int(targets.get(node, 0)),
            "routing_state": route.routing_state if route else "starting",
            "reason": route.reason if route else "",
        }
    return table


def render_assignment(doc: Mapping[str, Any], routes: Mapping[str, RouteStatus]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_parameters": dict(doc["task_parameters"]),
        "routing_table": routing_table(doc, routes),
        "assignment_state": assignment_state(doc, routes),
        "start_time": iso_time(int(doc["start_time_ms"])),
        "max_assigned_allocations": int(doc.get("max_assigned_allocations", 0)),
    }
    if doc.get("reason"):
        body["reason"] = doc["reason"]
    if doc.get("adaptive_allocations"):
        body["adaptive_allocations"] = doc["adaptive_allocations"]
    return body


def wait_satisfied(wait_for: str, doc: Mapping[str, Any], routes: Mapping[str, RouteStatus]) -> bool:
    state = allocation_state(doc, routes)
    return WAIT_FOR_ORDER[state] >= WAIT_FOR_ORDER[wait_for]
