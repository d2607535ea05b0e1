"""docs/openapi.yaml is the gateway's API: every route of the app's route table is described
there, every described operation is a route, and the document itself is valid OpenAPI."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.app import create_app
from shared.settings import GatewaySettings

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def route_table() -> set[tuple[str, str]]:
    app = create_app(GatewaySettings(auth_required=True, bootstrap_api_key="a:b"))
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD to every GET
            continue
        assert route.resource is not None
        found.add((route.method, route.resource.canonical))
    return found


def described() -> set[tuple[str, str]]:
    spec = yaml.safe_load(SPEC.read_text())
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in METHODS}


def test_every_route_is_described_and_every_description_is_a_route() -> None:
    routes, spec = route_table(), described()
    assert routes - spec == set(), "routes missing from docs/openapi.yaml"
    assert spec - routes == set(), "docs/openapi.yaml describes routes the gateway does not have"


def test_the_document_is_valid_openapi() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_path(str(SPEC))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(described())
