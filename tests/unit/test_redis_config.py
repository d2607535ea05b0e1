"""The Redis configuration that protects state: what gateways and workers warn about
(shared.redis_config), and how ``inferq cluster`` and docker-compose.yml run Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inferq.local_cluster import redis_server_args
from shared.redis_config import config_warnings

ROOT = Path(__file__).resolve().parents[2]
PROTECTIVE = {"--appendonly": "yes", "--appendfsync": "everysec", "--maxmemory-policy": "noeviction"}


def options(argv: list[str]) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def test_inferq_cluster_runs_redis_with_aof_a_memory_limit_and_noeviction() -> None:
    found = options(redis_server_args(6390, "/data", "2gb"))
    assert PROTECTIVE.items() <= found.items()
    assert found["--maxmemory"] == "2gb" and found["--dir"] == "/data"
    assert config_warnings({"appendonly": "yes", "save": "", "maxmemory": "2147483648", "maxmemory-policy": "noeviction"}) == []


def test_docker_compose_runs_redis_with_aof_a_memory_limit_and_noeviction() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    found = options([str(a) for a in service["command"]])
    assert PROTECTIVE.items() <= found.items()
    assert int(found["--maxmemory"].removesuffix("gb")) >= 1
    assert any(str(v).endswith(":/data") for v in service["volumes"])  # the AOF outlives the container


SAFE = {"appendonly": "yes", "save": "", "maxmemory": "1073741824", "maxmemory-policy": "noeviction"}


def test_a_redis_that_keeps_state_gets_no_warning() -> None:
    assert config_warnings(SAFE) == []
    assert config_warnings(SAFE | {"appendonly": "no", "save": "3600 1"}) == []  # RDB snapshots persist


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"appendonly": "no"}, "persists nothing"),
        ({"maxmemory-policy": "allkeys-lru"}, "maxmemory-policy is [allkeys-lru]"),
        ({"maxmemory-policy": "volatile-ttl"}, "maxmemory-policy is [volatile-ttl]"),
        ({"maxmemory": "0"}, "no memory limit"),
    ],
)
def test_one_warning_for_each_risky_setting(change: dict[str, str], expected: str) -> None:
    warnings = config_warnings(SAFE | change)
    assert len(warnings) == 1 and expected in warnings[0]


def test_settings_that_could_not_be_read_are_not_warned_about() -> None:
    assert config_warnings({"appendonly": "no"}) == []  # save points unknown (INFO only)
    assert len(config_warnings({"appendonly": "no", "save": "", "maxmemory": "0", "maxmemory-policy": "allkeys-lru"})) == 3
