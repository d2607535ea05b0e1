"""No Docker engine runs here: check that docker-compose.yml parses and that every service's
command is a valid ``inferq`` command with the environment it sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inferq.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def services() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    result: dict[str, dict[str, object]] = data["services"]
    return result


def test_compose_has_redis_gateway_and_two_workers() -> None:
    found = services()
    assert {"redis", "gateway", "node-1", "node-2"} <= set(found)
    workers = [s for s in found.values() if s.get("command") == ["worker"]]
    assert len(workers) == 2


@pytest.mark.parametrize("name", [n for n, s in services().items() if s.get("build")])
def test_every_inferq_service_command_parses(name: str) -> None:
    service = services()[name]
    environment = {k: str(v) for k, v in dict(service.get("environment") or {}).items()}  # type: ignore[call-overload]
    command = service["command"]
    assert isinstance(command, list)
    if service.get("entrypoint"):  # a shell line running `inferq ...`
        line = " ".join(command)
        assert "inferq import" in line
        argv = ["import", "/model", "--model-id", "m", "--task-type", "text_embedding", "--start"]
    else:
        argv = [str(a) for a in command]
    args = build_parser(environment).parse_args(argv)
    assert args.command in {"gateway", "worker", "bulk-worker", "import"}
    if args.command == "worker":
        assert args.node_id and args.processors >= 1
    if args.command in {"gateway", "worker", "bulk-worker"}:
        assert args.redis_url == "redis://redis:6379/0"


def test_one_image_for_every_inferq_service() -> None:
    built = {name: s for name, s in services().items() if s.get("build")}
    assert {s.get("image") for s in built.values()} == {"inferq:local"}


def test_healthchecks_gate_the_start_order() -> None:
    found = services()
    for name in ("redis", "gateway", "node-1", "node-2"):
        check = found[name]["healthcheck"]
        assert isinstance(check, dict) and check["test"][0] == "CMD", name
        if check["test"][1] == "python":  # the probe is Python: it must at least compile
            compile(check["test"][3], f"{name}-healthcheck", "exec")
    for name in ("gateway", "node-1", "node-2", "bulk-worker"):
        assert found[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
    importer = found["importer"]["depends_on"]
    assert isinstance(importer, dict)
    assert importer["gateway"] == {"condition": "service_healthy"}
    assert {"node-1", "node-2"} <= set(importer)


def test_the_gateway_is_published_on_localhost_only_unless_auth_is_on() -> None:
    gateway = services()["gateway"]
    ports = [str(p) for p in gateway.get("ports") or []]  # type: ignore[attr-defined]
    auth_on = str(dict(gateway.get("environment") or {}).get("INFERQ_AUTH", "off")).lower() in ("on", "true", "1")  # type: ignore[call-overload]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports) or auth_on, ports


def test_workers_run_confined_and_unprivileged() -> None:
    workers = [s for s in services().values() if s.get("command") == ["worker"]]
    for worker in workers:
        assert worker.get("read_only") is True
        assert worker.get("cap_drop") == ["ALL"]
        assert "no-new-privileges:true" in (worker.get("security_opt") or [])  # type: ignore[operator]
        assert worker.get("networks") == ["backend"]
    networks = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["networks"]
    assert networks["backend"]["internal"] is True
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER 10001:10001\n" in dockerfile
