"""The monitoring profile of docker-compose.yml, deploy/prometheus.yml and the Grafana dashboard
refer to what exists: files that are there, the gateway's address and path, and metric names
that ``GET /metrics`` renders."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.metrics import render
from tests.unit.test_metrics_render import snapshot

ROOT = Path(__file__).resolve().parents[2]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_monitoring_services_are_optional_and_mount_existing_files() -> None:
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["profiles"] == ["monitoring"]
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).is_file(), source
    assert not any("monitoring" in s.get("profiles", []) for n, s in services.items() if n not in ("prometheus", "grafana"))


def test_prometheus_scrapes_the_gateway_metrics_path() -> None:
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    port = services["gateway"]["environment"]["INFERQ_PORT"]
    (job,) = load_yaml(ROOT / "deploy" / "prometheus.yml")["scrape_configs"]
    assert job["metrics_path"] == metrics.PATH
    assert job["static_configs"][0]["targets"] == [f"gateway:{port}"]


def test_dashboard_queries_only_metrics_that_exist() -> None:
    body, _ = render(snapshot())
    rendered = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            used |= set(re.findall(r"\binferq_[a-z_]+", expr))
    assert used and used <= rendered, used - rendered
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "deployment")
    assert re.findall(r"\binferq_[a-z_]+", variable["definition"])[0] in rendered
