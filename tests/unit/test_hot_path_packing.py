"""The request path's hand-packed bytes equal what the general code produces."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from redis.asyncio.connection import Connection

from gateway.http import error_body
from shared import keys, queue
from shared.cache import DigestPrefix, cache_digest
from shared.errors import InferqError, NotFound, QueueFull
from shared.producer import request_ids
from shared.redis_conn import pack_args, pack_command
from shared.routing import rank_nodes
from shared.wire import InferRequest, RequestTemplate

CONFIG: dict[str, Any] = {
    "text_embedding": {
        "tokenization": {"bert": {"truncate": "first", "max_sequence_length": 512, "do_lower_case": True}},
        "results_field": "predicted_value",
        "scale": 0.5,
        "labels": ["a", "é"],
    }
}
TEXTS = ["", "hello", "é" * 40, "x" * 300, "y" * 70_000, "\x00 \u2603 \U0001f600"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("digest", ["", "0123456789abcdef0123456789abcdef"])
@pytest.mark.parametrize("deadline_ms", [0, 127, 1_700_000_010_000, 2**40])
def test_request_template_packs_like_infer_request(text: str, digest: str, deadline_ms: int) -> None:
    template = RequestTemplate(keys.gateway_replies("abc"), "dep-1", CONFIG)
    request = InferRequest(
        id="a1b2c3d4ff", reply_to=keys.gateway_replies("abc"), deployment_id="dep-1", text=text, config=dict(CONFIG),
        deadline_ms=deadline_ms, enqueued_ms=deadline_ms // 2, digest=digest,
    )  # fmt: skip
    packed = template.pack("a1b2c3d4ff", text, deadline_ms, deadline_ms // 2, digest)
    assert packed == request.pack()
    assert InferRequest.unpack(packed) == request


@pytest.mark.parametrize("text", TEXTS)
def test_digest_prefix_equals_cache_digest(text: str) -> None:
    prefix = DigestPrefix("sha" * 20, "uid-1", json.dumps(CONFIG, sort_keys=True, separators=(",", ":")))
    assert prefix.digest(text) == cache_digest(
        "sha" * 20, "uid-1", json.dumps(CONFIG, sort_keys=True, separators=(",", ":")), text
    )
    assert prefix.digest(text) == prefix.digest(text)  # the prefix is not consumed


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 2, keys.queue("d", "n"), "k", "é", b"\x00\xff", 0, -5, 2**70, 1.5),
        ("PING",),
        ("SET", "", b""),
    ],
)
def test_pack_command_is_what_redis_py_sends(args: tuple[Any, ...]) -> None:
    assert pack_command(args) == b"".join(Connection().pack_command(*args))


def test_pack_args_refuses_what_redis_py_refuses() -> None:
    with pytest.raises(TypeError):
        pack_args((True,))
    with pytest.raises(TypeError):
        pack_args((None,))  # type: ignore[arg-type]


@pytest.mark.parametrize("count_rejection", [True, False])
@pytest.mark.parametrize("digest", ["", "0123456789abcdef0123456789abcdef"])
@pytest.mark.parametrize("lane", queue.LANES)
def test_dispatch_packs_like_the_general_encoder(count_rejection: bool, digest: str, lane: str) -> None:
    """The hot path (``dispatch_head`` once per (deployment, node, lane), ``dispatch_argv`` per
    document) sends exactly the command ``DISPATCH.call`` encodes from the field lists."""
    values = (digest, "lfu", 1_700_000_000_000, 0, 1024, b"\x89payload" * 50, count_rejection)
    call = queue.DISPATCH.call(queue.dispatch_keys("dep-1", "node-1", lane), queue.dispatch_values(*values))
    general = pack_command(("EVALSHA", queue.DISPATCH.sha, len(call.keys), *call.keys, *call.args))
    assert queue.dispatch_head("dep-1", "node-1", lane) + queue.dispatch_argv(*values) == general
    assert call.keys[0] == (keys.bulk_queue if lane == queue.BULK else keys.queue)("dep-1", "node-1")


def test_every_script_reads_its_fields_by_name_once() -> None:
    """Each script's prelude binds every declared KEYS/ARGV field, in order, and nothing else
    indexes them by position (only the declared variadic tails)."""
    for script in queue.SCRIPTS:
        for i, name in enumerate(script.keys, 1):
            assert f"local {name} = KEYS[{i}]" in script.prelude
        for i, name in enumerate(script.argv, 1):
            assert f"local {name} = ARGV[{i}]" in script.prelude
        positional = re.findall(r"(KEYS|ARGV)\[(\d+)\]", script.body)
        assert positional == [], (script.name, positional)
        with pytest.raises(ValueError):
            script.call(["k"] * (len(script.keys) + 1), [0] * len(script.argv))


def test_request_ids_are_unique_and_shaped() -> None:
    ids = request_ids()
    drawn = [next(ids) for _ in range(3000)]
    assert len(set(drawn)) == len(drawn)
    assert all(re.fullmatch(r"[0-9a-f]{8}[0-9a-f]+", i) for i in drawn)
    assert drawn[0].endswith("0") and drawn[2999].endswith(f"{2999:x}")


def test_rank_nodes_one_node() -> None:
    assert rank_nodes({"n1": 2}, "abc") == ["n1"]
    assert rank_nodes({"n1": 2}, None) == ["n1"]
    assert rank_nodes({"n1": 0}, "abc") == []
    assert sorted(rank_nodes({"n1": 1, "n2": 3}, "abc")) == ["n1", "n2"]


@pytest.mark.parametrize("pretty", [True, False])
@pytest.mark.parametrize(
    "error",
    [QueueFull(), NotFound("Could not find trained model [x]"),
     InferqError("outer", status=400, error_type="t", caused_by=InferqError("inner", error_type="u"))],
)  # fmt: skip
def test_error_body_is_the_error_as_json(error: InferqError, pretty: bool) -> None:
    expected = json.dumps(error.body(), indent=2 if pretty else None).encode()
    assert error_body(error, pretty) == expected
    assert error_body(error, pretty) == expected  # from the kept bodies
