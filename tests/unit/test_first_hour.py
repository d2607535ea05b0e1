"""The pure parts of what a newcomer meets first: the import's fail-fast checks and their
messages, values in error messages, the cluster's ready line and ``_ml/info`` limits."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth import holds
from gateway.info_api import render_limits
from inferq.cli import build_parser
from inferq.importer import (
    START_ACTION,
    UPLOAD_ACTIONS,
    capacity_problem,
    privilege_problem,
    required_actions,
)
from inferq.local_cluster import redis_note
from shared.errors import BadRequest, render_value
from shared.node_registry import NodeInfo
from shared.task_config import read_input_text

URL = "http://127.0.0.1:9200"


def stats(*deployments: tuple[str, int, int, str]) -> dict[str, Any]:
    return {
        "trained_model_stats": [
            {
                "model_id": d,
                "deployment_stats": {
                    "deployment_id": d,
                    "number_of_allocations": allocations,
                    "threads_per_allocation": threads,
                    "state": state,
                },
            }
            for d, allocations, threads, state in deployments
        ]
        + [{"model_id": "undeployed"}]
    }


def info(processors: int) -> dict[str, Any]:
    return {"limits": {"total_ml_processors": processors}} if processors else {"limits": {}}


def test_a_full_cluster_is_refused_with_every_way_out() -> None:
    problem = capacity_problem(info(2), stats(("all-minilm-l6-v2", 2, 1, "started")), url=URL, replacing=None)
    assert problem is not None
    assert "offer 2" in problem and "[all-minilm-l6-v2] 2" in problem
    assert "Nothing was traced or uploaded" in problem
    assert f"curl -XPOST '{URL}/_ml/trained_models/all-minilm-l6-v2/deployment/_update?number_of_allocations=1'" in problem
    assert f"curl -XPOST '{URL}/_ml/trained_models/all-minilm-l6-v2/deployment/_stop'" in problem
    assert "--processors 2" in problem and "without --start" in problem


@pytest.mark.parametrize(
    ("processors", "deployments", "replacing"),
    [
        (3, [("a", 2, 1, "started")], None),  # one processor left
        (2, [("a", 1, 1, "started"), ("b", 1, 1, "stopping")], None),  # a stopping deployment frees its own
        (2, [("a", 2, 1, "started")], "a"),  # --clear-previous stops the one it replaces first
    ],
)
def test_room_for_one_allocation_passes(processors: int, deployments: list[tuple[str, int, int, str]], replacing: str | None) -> None:
    assert capacity_problem(info(processors), stats(*deployments), url=URL, replacing=replacing) is None


def test_threads_count_against_processors() -> None:
    assert capacity_problem(info(4), stats(("a", 2, 2, "started")), url=URL, replacing=None) is not None


def test_no_node_at_all_says_so() -> None:
    problem = capacity_problem(info(0), {"trained_model_stats": []}, url=URL, replacing=None)
    assert problem is not None and "no worker node is running" in problem


def test_required_actions_follow_the_flags() -> None:
    assert required_actions(start=False, clear_previous=False) == list(UPLOAD_ACTIONS)
    assert START_ACTION in required_actions(start=True, clear_previous=False)
    assert len(required_actions(start=True, clear_previous=True)) == len(UPLOAD_ACTIONS) + 3


def test_a_read_only_key_is_named_with_the_privilege_it_needs() -> None:
    answer = {"has_all_requested": False, "cluster": {a: False for a in UPLOAD_ACTIONS}}
    problem = privilege_problem(answer, "[abc] ")
    assert problem is not None
    assert "API key [abc] may not cluster:admin/xpack/ml/inference/put" in problem
    assert "[manage_ml]" in problem and "Nothing was traced or uploaded" in problem
    assert privilege_problem({"has_all_requested": True, "cluster": {a: True for a in UPLOAD_ACTIONS}}, "") is None


@pytest.mark.parametrize(
    ("grants", "name", "held"),
    [
        ([["monitor_ml"]], "cluster:admin/xpack/ml/inference/put", False),
        ([["manage_ml"]], "cluster:admin/xpack/ml/inference/put", True),
        ([["manage_ml"]], "manage_ml", True),
        ([["monitor_ml"]], "manage_ml", False),
        ([["manage_inference"]], START_ACTION, True),
        ([["all"], ["monitor_ml"]], "cluster:admin/xpack/ml/inference/put", False),  # limited by its creator
    ],
)
def test_has_privileges_checks_actions_and_privilege_names(grants: list[list[str]], name: str, held: bool) -> None:
    assert holds(grants, name) is held


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (None, "null"),
        (True, "true"),
        (42, "42"),
        (1.5, "1.5"),
        (["a", "b"], "[a, b]"),
        ([["a", "b"], None], "[[a, b], null]"),
        ({"k": [1, False]}, "{k=[1, false]}"),
        ("text", "text"),
    ],
)
def test_values_render_as_elasticsearch_shows_them(value: Any, rendered: str) -> None:
    assert render_value(value) == rendered


def test_a_non_string_input_has_no_python_repr_in_its_message() -> None:
    with pytest.raises(BadRequest) as err:
        read_input_text({"text_field": ["a", "b"]}, ["text_field"])
    assert err.value.reason == "Input value [[a, b]] for field [text_field] must be a string"
    with pytest.raises(BadRequest) as err:
        read_input_text({"text_field": None}, ["text_field"])
    assert err.value.reason == "Input value [null] for field [text_field] must be a string"


def test_ready_line_names_the_redis_and_what_stays_there() -> None:
    private = redis_note("redis://127.0.0.1:41234/0", private=True, fresh=False)
    assert private == "redis redis://127.0.0.1:41234/0 (private to this run, deleted on Ctrl-C)"
    yours = redis_note("redis://:secret@db.example:6380/3", private=False, fresh=False)
    assert "secret" not in yours and "redis://db.example:6380/3" in yours
    assert "models, deployments, caches, bulk results stay there" in yours and "--fresh" in yours


def test_ml_info_limits_sum_the_live_nodes() -> None:
    nodes = [NodeInfo("n1", 2, 4 * 1024**3, 0), NodeInfo("n2", 1, 2 * 1024**3, 0)]
    limits = render_limits(nodes)
    assert limits["total_ml_processors"] == 3 and limits["max_single_ml_node_processors"] == 2
    assert limits["max_model_memory_limit"] == "4096mb" and limits["total_ml_memory"] == "6144mb"
    assert render_limits([]) == {}


def test_log_level_and_import_options_read_their_variables() -> None:
    env = {"INFERQ_LOG_LEVEL": "DEBUG", "INFERQ_URL": "http://gw:9200", "INFERQ_API_KEY": "a2V5"}
    assert build_parser(env).parse_args(["gateway"]).log_level == "debug"
    assert build_parser({}).parse_args(["cluster"]).log_level == "warning"
    assert build_parser({}).parse_args(["worker", "--node-id", "n"]).log_level == "info"
    args = build_parser(env).parse_args(["import", "/m", "--model-id", "m", "--task-type", "ner"])
    assert (args.url, args.api_key) == ("http://gw:9200", "a2V5")
    assert build_parser({}).parse_args(["cluster", "--fresh"]).fresh
