"""``gateway.http``: request decoding and response rendering the way Elasticsearch clients need
(clients.md §8), against a real aiohttp server on loopback with the real error middleware."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.http import (
    PRODUCT_HEADERS,
    check_params,
    error_middleware,
    filter_path,
    inflate,
    json_response,
    read_json,
)
from shared.errors import AuthenticationRequired, BadRequest, NotFound

COMPAT_8 = "application/vnd.elasticsearch+json; compatible-with=8"
COMPAT_9 = "application/vnd.elasticsearch+json; compatible-with=9"


async def echo(request: web.Request) -> web.Response:
    check_params(request, ())
    return json_response(request, {"body": await read_json(request)})


async def get_model(request: web.Request) -> web.Response:
    check_params(request, ("size",))
    return json_response(request, {"model_id": request.match_info["model_id"], "nested": {"a": 1, "b": [1, 2]}})


async def unauthenticated(request: web.Request) -> web.Response:
    raise AuthenticationRequired("missing authentication credentials for REST request [/secret]")


async def not_found(request: web.Request) -> web.Response:
    raise NotFound("Could not find trained model [x]")


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app.router.add_post("/echo", echo)
    app.router.add_get("/_ml/trained_models/{model_id}", get_model)
    app.router.add_get("/secret", unauthenticated)
    app.router.add_get("/missing", not_found)
    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def call(client: TestClient[web.Request, web.Application], method: str, path: str | URL, **kwargs: Any) -> tuple[int, Any, Any]:
    async with client.request(method, path, **kwargs) as response:
        raw = await response.read()
        return response.status, response.headers, json.loads(raw) if raw else None


def assert_es_headers(headers: Any) -> None:
    assert headers["X-Elastic-Product"] == "Elasticsearch"
    assert headers["Content-Type"].startswith("application/json")


# ---- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", COMPAT_8, COMPAT_9, "application/x-ndjson"])
async def test_json_and_compat_content_types_are_json(client: Any, content_type: str) -> None:
    status, headers, body = await call(
        client, "POST", "/echo", data=b'{"docs":[1]}', headers={"Content-Type": content_type, "Accept": COMPAT_9}
    )
    assert status == 200 and body == {"body": {"docs": [1]}}
    assert_es_headers(headers)


async def test_empty_body_with_a_content_type_is_no_body(client: Any) -> None:
    status, _, body = await call(client, "POST", "/echo", data=b"", headers={"Content-Type": COMPAT_9})
    assert status == 200 and body == {"body": None}


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)], ids=["gzip", "deflate"]
)
async def test_compressed_request_bodies(client: Any, encoding: str, compress: Any) -> None:
    """aiohttp inflates these itself and keeps the header: they must not be inflated twice."""
    payload = json.dumps({"docs": [{"text_field": "x" * 500}]}).encode()
    status, _, body = await call(
        client, "POST", "/echo", data=compress(payload),
        headers={"Content-Type": COMPAT_9, "Content-Encoding": encoding},
    )
    assert status == 200, body
    assert body == {"body": json.loads(payload)}


async def test_corrupt_gzip_body_is_a_400(client: Any) -> None:
    status, headers, body = await call(
        client, "POST", "/echo", data=b"\x1f\x8bgarbage", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert status == 400 and "content-encoding" in body["error"]["reason"]
    assert_es_headers(headers)


def test_inflate_only_inflates_what_is_still_compressed() -> None:
    plain = b'{"a":1}'
    assert inflate(gzip.compress(plain), "gzip", 1024) == plain
    assert inflate(zlib.compress(plain), "Deflate", 1024) == plain
    assert inflate(plain, "gzip", 1024) == plain  # already inflated by aiohttp
    assert inflate(plain, "", 1024) == plain
    with pytest.raises(BadRequest):
        inflate(b"\x1f\x8bnot gzip at all", "gzip", 1024)


async def test_unsupported_content_type_and_bad_json(client: Any) -> None:
    status, headers, body = await call(client, "POST", "/echo", data=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and body["error"]["type"] == "illegal_argument_exception"
    assert_es_headers(headers)
    status, _, body = await call(client, "POST", "/echo", data=b"{nope", headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["type"] == "x_content_parse_exception"
    assert body["error"]["root_cause"][0]["type"] == "x_content_parse_exception"


async def test_too_large_body_is_413_in_elasticsearch_shape(client: Any) -> None:
    status, headers, body = await call(client, "POST", "/echo", data=b" " * (128 * 1024), headers={"Content-Type": "application/json"})
    assert status == 413 and body["status"] == 413
    assert_es_headers(headers)


# ---- parameters and paths ------------------------------------------------------------------


async def test_global_parameters_are_tolerated_and_others_refused(client: Any) -> None:
    status, _, body = await call(client, "GET", "/_ml/trained_models/m?error_trace=true&human=true&size=1")
    assert status == 200 and body["model_id"] == "m"
    status, headers, body = await call(client, "GET", "/_ml/trained_models/m?bogus=1")
    assert status == 400 and "unrecognized parameter: [bogus]" in body["error"]["reason"]
    assert_es_headers(headers)


async def test_pretty_and_filter_path_are_honoured(client: Any) -> None:
    async with client.get("/_ml/trained_models/m?pretty") as response:
        text = await response.text()
    assert "\n  " in text and json.loads(text)["model_id"] == "m"
    status, _, body = await call(client, "GET", "/_ml/trained_models/m?filter_path=model_id,nested.b")
    assert status == 200 and body == {"model_id": "m", "nested": {"b": [1, 2]}}


@pytest.mark.parametrize(
    ("raw", "model_id"),
    [("a%2Fb", "a/b"), ("a%20b%2Fc", "a b/c"), ("a,b*", "a,b*"), ("_all", "_all"), ("%2A", "*")],
)
async def test_model_id_is_one_raw_path_segment(client: Any, raw: str, model_id: str) -> None:
    status, _, body = await call(client, "GET", URL(f"/_ml/trained_models/{raw}", encoded=True))
    assert status == 200 and body["model_id"] == model_id


# ---- errors --------------------------------------------------------------------------------


async def test_errors_carry_product_header_type_and_root_cause(client: Any) -> None:
    status, headers, body = await call(client, "GET", "/missing")
    assert status == 404
    assert_es_headers(headers)
    assert body == {
        "error": {
            "root_cause": [{"type": "resource_not_found_exception", "reason": "Could not find trained model [x]"}],
            "type": "resource_not_found_exception",
            "reason": "Could not find trained model [x]",
        },
        "status": 404,
    }


async def test_401_has_www_authenticate(client: Any) -> None:
    status, headers, body = await call(client, "GET", "/secret")
    assert status == 401 and body["error"]["type"] == "security_exception"
    assert "ApiKey" in headers["WWW-Authenticate"]
    assert_es_headers(headers)


async def test_head_error_has_headers_and_no_body(client: Any) -> None:
    async with client.head("/missing") as response:
        assert response.status == 404
        assert await response.read() == b""
        assert_es_headers(response.headers)


async def test_unknown_route_wrong_method_and_bugs(client: Any) -> None:
    status, headers, body = await call(client, "GET", "/nowhere")
    assert status == 400 and "no handler found for uri [/nowhere]" in body["error"]["reason"]
    assert_es_headers(headers)
    status, headers, body = await call(client, "DELETE", "/echo")
    assert status == 405 and body["error"]["type"] == "method_not_allowed_exception"
    assert_es_headers(headers)
    status, headers, body = await call(client, "GET", "/broken")
    assert status == 500 and "RuntimeError" in body["error"]["reason"]
    assert_es_headers(headers)


def test_success_headers_are_the_product_headers() -> None:
    assert PRODUCT_HEADERS == {"X-Elastic-Product": "Elasticsearch"}


# ---- filter_path (pure) -------------------------------------------------------------------


DOC = {
    "count": 2,
    "trained_model_configs": [
        {"model_id": "a", "inference_config": {"ner": {"tokenization": {"bert": {"max": 1}}}}},
        {"model_id": "b", "tags": ["x"]},
    ],
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("count", {"count": 2}),
        ("trained_model_configs.model_id", {"trained_model_configs": [{"model_id": "a"}, {"model_id": "b"}]}),
        ("count,trained_model_configs.tags", {"count": 2, "trained_model_configs": [{"tags": ["x"]}]}),
        ("**.max", {"trained_model_configs": [{"inference_config": {"ner": {"tokenization": {"bert": {"max": 1}}}}}]}),
        ("trained_model_configs.*_id", {"trained_model_configs": [{"model_id": "a"}, {"model_id": "b"}]}),
        ("nothing", {}),
        ("", DOC),
    ],
)
def test_filter_path(expression: str, expected: Any) -> None:
    assert filter_path(DOC, expression) == expected
