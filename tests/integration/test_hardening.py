"""Every hostile input a live gateway was once answered with a 500 or a hang gets its 4xx now
(a gateway on a private Redis, no worker needed): hostile and broken model definitions,
overflowing time values, lone surrogates, deep JSON, unsafe deployment ids, oversized
definitions, gzip bombs, slow clients, and the per-request limits."""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shared import keys
from tests.cluster import LocalCluster, http, local_cluster

pytestmark = pytest.mark.slow

ML = "/_ml/trained_models"
MAX_BODY_BYTES = 16 * 1024 * 1024
CONFIG = {"model_type": "pytorch", "inference_config": {"text_embedding": {}}, "input": {"field_names": ["text_field"]}}


@pytest.fixture(scope="module")
def gateway(redis_url: str) -> Iterator[LocalCluster]:
    env = {
        "INFERQ_IDLE_TIMEOUT_S": "1",
        "INFERQ_BODY_TIMEOUT_S": "1",
        "INFERQ_MAX_DOCS_PER_REQUEST": "5",
        "INFERQ_MAX_TEXT_BYTES": "1000",
        "INFERQ_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    }
    with local_cluster(redis_url, nodes=(), env=env) as running:
        yield running


def put_definition(cluster: LocalCluster, model_id: str, definition: bytes, parts: int = 1) -> tuple[int, Any]:
    assert cluster.call("PUT", f"{ML}/{model_id}", CONFIG)[0] == 200
    size = -(-len(definition) // parts)
    answer: tuple[int, Any] = (0, None)
    for part in range(parts):
        chunk = definition[part * size : (part + 1) * size]
        body = {"definition": base64.b64encode(chunk).decode(), "total_definition_length": len(definition), "total_parts": parts}
        answer = cluster.call("PUT", f"{ML}/{model_id}/definition/{part}", body)
        if part < parts - 1:
            assert answer[0] == 200, answer
    return answer


def file_reading_model() -> bytes:
    import torch

    class Reader(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_file("/etc/passwd", size=16, dtype=torch.uint8).float()

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Reader()), buffer)
    return buffer.getvalue()


# ---- model definitions --------------------------------------------------------------------------


def test_a_file_reading_model_is_refused_at_its_last_part_and_at_start(gateway: LocalCluster) -> None:
    status, body = put_definition(gateway, "reader", file_reading_model(), parts=3)
    assert status == 400 and body["error"]["type"] == "status_exception"
    assert "aten::from_file" in body["error"]["reason"]
    status, body = gateway.call("POST", f"{ML}/reader/deployment/_start")
    assert status == 400 and "aten::from_file" in body["error"]["reason"]
    # a definition stored before validation existed is validated at _start
    client = redis.Redis.from_url(gateway.redis_url)
    client.hdel(keys.model_parts_meta("reader"), "verdict", "sha256")
    client.close()
    status, body = gateway.call("POST", f"{ML}/reader/deployment/_start")
    assert status == 400 and "aten::from_file" in body["error"]["reason"]


@pytest.mark.parametrize(
    ("name", "definition", "reason"),
    [
        ("random-bytes", bytes(range(256)) * 40, "not a readable zip file"),
        ("plain-zip", None, "a zip, but not TorchScript"),
    ],
)
def test_broken_definitions_are_refused_with_a_reason(gateway: LocalCluster, name: str, definition: bytes | None, reason: str) -> None:
    if definition is None:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("readme.txt", "not a model")
        definition = out.getvalue()
    status, body = put_definition(gateway, name, definition)
    assert status == 400 and reason in body["error"]["reason"]
    status, body = gateway.call("POST", f"{ML}/{name}/deployment/_start")
    assert status == 400 and reason in body["error"]["reason"]


def test_definition_lengths_beyond_what_can_be_stored_are_400(gateway: LocalCluster) -> None:
    assert gateway.call("PUT", f"{ML}/too-long", CONFIG)[0] == 200
    for total in (10**30, 2**31 + 1, 1e30):
        body = {"definition": base64.b64encode(b"abc").decode(), "total_definition_length": total, "total_parts": 1}
        status, answer = gateway.call("PUT", f"{ML}/too-long/definition/0", body)
        assert status == 400, (total, answer)
    body = {"definition": base64.b64encode(b"abcdef").decode(), "total_definition_length": 3, "total_parts": 2}
    status, answer = gateway.call("PUT", f"{ML}/too-long/definition/0", body)
    assert status == 400 and "longer than [total_definition_length]" in answer["error"]["reason"]


# ---- request values -----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [1e30, 10**30, "99999999999999999999d", "1e30s", float("inf")])
def test_overflowing_timeouts_are_400(gateway: LocalCluster, timeout: Any) -> None:
    text = json.dumps({"docs": [{"text_field": "x"}], "timeout": timeout}).encode()  # inf -> Infinity
    status, body = gateway.call("POST", f"{ML}/anything/_infer", text)
    assert status == 400, body
    status, body = gateway.call("POST", f"{ML}/anything/deployment/_start", text.replace(b'"docs":[{"text_field":"x"}],', b""))
    assert status == 400, body


def test_lone_surrogates_are_served(gateway: LocalCluster) -> None:
    raw = b'{"model_type":"pytorch","inference_config":{"text_embedding":{}},"description":"a \\ud800 b \\udfff"}'
    status, body = gateway.call("PUT", f"{ML}/surrogates", raw)
    assert status == 200 and body["description"] == "a \ufffd b \ufffd"
    status, body = gateway.call("POST", f"{ML}/surrogates/_infer", b'{"docs":[{"text_field":"\\ud800"}]}')
    assert status == 409  # stored, not deployed: the request was understood
    status, body = gateway.call("POST", f"{ML}/surr\\ud800/_infer", b'{"docs":[{"text_field":"\\udc00x"}]}')
    assert 400 <= status < 500


@pytest.mark.parametrize("where", ["docs", "inference_config", "metadata"])
def test_deeply_nested_json_is_400(gateway: LocalCluster, where: str) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    if where == "docs":
        path, raw = f"{ML}/anything/_infer", '{"docs":' + deep + "}"
    elif where == "inference_config":
        path, raw = f"{ML}/anything/_infer", '{"docs":[{"text_field":"x"}],"inference_config":{"a":' + deep + "}}"
    else:
        path, raw = f"{ML}/deep", '{"model_type":"pytorch","inference_config":{"text_embedding":{}},"metadata":{"a":' + deep + "}}"
    status, body = gateway.call("POST" if "_infer" in path else "PUT", path, raw.encode())
    assert status == 400 and "nesting depth" in body["error"]["reason"]


@pytest.mark.parametrize("deployment_id", ["*", "{", "}", "a*", "dep|x", "UPPER", "a" * 65])
def test_unsafe_deployment_ids_are_400(gateway: LocalCluster, deployment_id: str) -> None:
    status, body = gateway.call("POST", f"{ML}/anything/deployment/_start", {"deployment_id": deployment_id})
    assert status == 400 and "Invalid deployment_id" in body["error"]["reason"], body


def test_per_request_limits(gateway: LocalCluster) -> None:
    status, body = gateway.call("POST", f"{ML}/anything/_infer", {"docs": [{"text_field": "x"}] * 6})
    assert status == 400 and "at most [5] documents" in body["error"]["reason"]
    status, body = gateway.call("POST", f"{ML}/anything/_infer", {"docs": [{"text_field": "é" * 501}]})
    assert status == 413 and "longer than [1000] bytes" in body["error"]["reason"]
    status, body = gateway.call("POST", f"{ML}/anything/_infer", b'{"docs":[{"text_field":"' + b"x" * (MAX_BODY_BYTES + 1) + b'"}]}')
    assert status == 413


# ---- gzip bombs and slow clients ----------------------------------------------------------------


def test_a_gzip_bomb_is_413_and_does_not_stall_other_requests(gateway: LocalCluster) -> None:
    inner = gzip.compress(b'{"docs":[{"text_field":"' + b"0" * (400 * 1024 * 1024) + b'"}]}', compresslevel=9)
    bomb = gzip.compress(inner)  # compressed twice: aiohttp inflates once, the gateway again
    assert len(bomb) < 1024 * 1024
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            began = time.perf_counter()
            assert http("GET", gateway.url + "/")[0] == 200
            latencies.append(time.perf_counter() - began)
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        request = urllib.request.Request(
            gateway.url + f"{ML}/anything/_infer", data=bomb, method="POST",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        try:
            urllib.request.urlopen(request, timeout=60)
            status = 200
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
        assert status == 413 and "once inflated" in body["error"]["reason"]
    finally:
        done.set()
        prober.join()
    assert latencies and max(latencies) < 1.0, max(latencies)


def test_a_client_that_stops_inside_its_headers_is_disconnected(gateway: LocalCluster) -> None:
    with socket.create_connection(("127.0.0.1", gateway.gateway_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        began = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the gateway, nothing answered
        assert time.monotonic() - began < 5


def test_a_client_that_stops_inside_its_body_gets_408_and_is_disconnected(gateway: LocalCluster) -> None:
    with socket.create_connection(("127.0.0.1", gateway.gateway_port), timeout=10) as sock:
        sock.sendall(
            b"POST /_ml/trained_models/anything/_infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"docs\":"
        )
        received = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 408")
    assert b"request body not received within [1s]" in received
    assert http("GET", gateway.url + "/")[0] == 200
