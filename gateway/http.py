"""Request decoding and response rendering, the Elasticsearch way.

- Bodies: any ``application/json`` or ``application/*+json`` (the clients' compat types);
  an empty body is no body, whatever the Content-Type; gzip request bodies are inflated.
- Query parameters: each route names the ones it takes; the global ``error_trace``,
  ``filter_path``, ``human`` and ``pretty`` are always allowed; anything else is a 400.
- Responses: JSON with ``X-Elastic-Product: Elasticsearch`` (the middleware adds it to
  every response, errors included); ``pretty`` and ``filter_path`` are honoured.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from redis.exceptions import RedisError

from shared.errors import (
    BadRequest,
    IllegalArgument,
    InferqError,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
    TooLarge,
    Unavailable,
    XContentParseError,
    render_value,
)

GLOBAL_PARAMS = frozenset({"error_trace", "filter_path", "human", "pretty"})
PRODUCT_HEADERS = {"X-Elastic-Product": "Elasticsearch"}
JSON_TYPE = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- query parameters ------------------------------------------------------------------------


def check_params(request: web.Request, allowed: Iterable[str]) -> None:
    allowed_set = GLOBAL_PARAMS.union(allowed)
    unknown = [name for name in request.query if name not in allowed_set]
    if unknown:
        names = ", ".join(unknown)
        raise IllegalArgument(f"request [{request.path}] contains unrecognized parameter: [{names}]")


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "true"):
        return True
    if text == "false":
        return False
    raise IllegalArgument(
        f"Failed to parse value [{render_value(value)}] as only [true] or [false] are allowed."
        if name == ""
        else f"Failed to parse value [{render_value(value)}] for parameter [{name}] as only [true] or [false] are allowed."
    )


def parse_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise IllegalArgument(f"Failed to parse int parameter [{name}] with value [{render_value(value)}]")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError as exc:
        raise IllegalArgument(f"Failed to parse int parameter [{name}] with value [{render_value(value)}]") from exc


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    return parse_bool(request.query[name], name) if name in request.query else default


def query_int(request: web.Request, name: str, default: int) -> int:
    return parse_int(request.query[name], name) if name in request.query else default


# ---- bodies --------------------------------------------------------------------------------


MAX_JSON_DEPTH = 64  # objects/arrays nested deeper are refused before parsing
OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this (or compressed) are decoded in a thread
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(rb"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int = 100 * 1024 * 1024  # after inflating
    timeout_s: float = 30.0  # to receive the whole body once the head is in


BODY_LIMITS = web.AppKey("body_limits", BodyLimits)  # set by create_app from the settings


class BodyReadTimeout(RequestTimeout):
    """The client stopped sending its body: answered 408, then the connection is closed."""


async def read_json(request: web.Request) -> Any | None:
    """The decoded JSON body, or None when there is none. The body must arrive within
    ``body_timeout_s``; large or compressed bodies are inflated and parsed off the event loop."""
    limits = request.app.get(BODY_LIMITS) or BodyLimits()
    try:
        async with asyncio.timeout(limits.timeout_s):
            raw = await request.read()
    except TimeoutError as exc:
        raise BodyReadTimeout(f"request body not received within [{limits.timeout_s:g}s]") from exc
    except RequestPayloadError as exc:  # aiohttp could not inflate a compressed body
        raise BadRequest(f"failed to read request body: {exc}".replace("\n", " ")) from exc
    encoding = request.headers.get("Content-Encoding", "")
    content_type = request.content_type
    if len(raw) > OFF_LOOP_BYTES or _compressed(raw, encoding):
        return await asyncio.to_thread(decode_body, raw, encoding, content_type, limits.max_bytes)
    return decode_body(raw, encoding, content_type, limits.max_bytes)


def decode_body(raw: bytes, content_encoding: str, content_type: str, max_bytes: int) -> Any | None:
    """Inflate (bounded), check the type and the nesting depth, parse (pure; may run in a thread)."""
    raw = inflate(raw, content_encoding, max_bytes)
    if not raw.strip():
        return None
    if content_type and not _is_json_type(content_type.lower()):
        raise IllegalArgument(f"Content-Type header [{content_type}] is not supported")
    check_depth(raw, MAX_JSON_DEPTH)
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XContentParseError(f"Failed to parse request body: {exc}") from exc
    except RecursionError as exc:  # unreachable after check_depth; never a 500 anyway
        raise XContentParseError("Failed to parse request body: nested too deeply") from exc
    if _SURROGATE_ESCAPE.search(raw):
        body = replace_lone_surrogates(body)
    return body


def _no_constant(name: str) -> Any:
    raise XContentParseError(f"Failed to parse request body: [{name}] is not a JSON value")


def check_depth(raw: bytes, max_depth: int) -> None:
    """Refuse JSON whose objects/arrays nest deeper than ``max_depth``, without recursion."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise XContentParseError(
                    f"Failed to parse request body: document nesting depth exceeds the maximum allowed ({max_depth})"
                )
        else:
            depth -= 1


def replace_lone_surrogates(value: Any) -> Any:
    """A lone UTF-16 surrogate (a ``\\ud800`` escape without its pair) becomes U+FFFD, in keys
    and values: the text is then served, and nothing downstream meets a string UTF-8 cannot hold."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [replace_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    return value


def _compressed(raw: bytes, content_encoding: str) -> bool:
    encoding = content_encoding.strip().lower()
    return (encoding == "gzip" and raw[:2] == b"\x1f\x8b") or (encoding == "deflate" and raw[:1] == b"\x78")


def inflate(raw: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """A ``gzip``/``deflate`` request body, inflated, never past ``max_bytes`` (413). aiohttp's
    server already inflates bodies itself (in bounded steps) and leaves the header in place,
    so only bytes that still look compressed (by their magic number; JSON never starts with
    them) are inflated here: a body compressed twice."""
    if not _compressed(raw, content_encoding):
        return raw
    wbits = 16 + zlib.MAX_WBITS if raw[:1] == b"\x1f" else zlib.MAX_WBITS
    out = bytearray()
    data = raw
    try:
        while data:
            inflater = zlib.decompressobj(wbits)
            chunk = inflater.decompress(data, max_bytes + 1 - len(out))
            out += chunk
            if len(out) > max_bytes or inflater.unconsumed_tail:
                raise TooLarge(f"request body is too large: more than [{max_bytes}] bytes once inflated")
            if not inflater.eof:
                raise BadRequest("failed to decompress request body: truncated stream")
            data = inflater.unused_data if wbits != zlib.MAX_WBITS else b""
    except zlib.error as exc:
        raise BadRequest(f"failed to decompress request body: {exc}") from exc
    return bytes(out)


async def read_object(request: web.Request, *, required: bool) -> dict[str, Any]:
    body = await read_json(request)
    if body is None:
        if required:
            raise BadRequest("request body is required")
        return {}
    if not isinstance(body, dict):
        raise XContentParseError("request body must be a JSON object")
    return body


def _is_json_type(content_type: str) -> bool:
    return content_type in (JSON_TYPE, "text/plain", "application/x-ndjson") or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def check_fields(body: Mapping[str, Any], allowed: Iterable[str], parser: str) -> None:
    allowed_set = set(allowed)
    for name in body:
        if name not in allowed_set:
            raise XContentParseError(f"[1:2] [{parser}] unknown field [{name}]")


# ---- responses -----------------------------------------------------------------------------


def json_response(request: web.Request, payload: Any, status: int = 200) -> web.Response:
    if "filter_path" in request.query:
        payload = filter_path(payload, request.query["filter_path"])
    pretty = "pretty" in request.query and request.query["pretty"] != "false"
    text = json.dumps(payload, indent=2 if pretty else None, separators=None if pretty else (",", ":"))
    return web.Response(body=text.encode(), status=status, content_type=JSON_TYPE, headers=PRODUCT_HEADERS)


def raw_json_response(request: web.Request, body: bytes, status: int = 200) -> web.Response:
    """A body that is already JSON (the hot path splices worker-encoded results)."""
    if "filter_path" in request.query or "pretty" in request.query:
        return json_response(request, json.loads(body), status)
    return web.Response(body=body, status=status, content_type=JSON_TYPE, headers=PRODUCT_HEADERS)


def error_response(request: web.Request, error: InferqError) -> web.Response:
    headers = dict(PRODUCT_HEADERS)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'ApiKey, Basic realm="security", charset="UTF-8"'
    if request.method == "HEAD":
        return web.Response(status=error.status, headers=headers, content_type=JSON_TYPE)
    pretty = "pretty" in request.query and request.query["pretty"] != "false"
    return web.Response(body=error_body(error, pretty), status=error.status, content_type=JSON_TYPE, headers=headers)


_ERROR_BODIES: dict[tuple[Any, ...], bytes] = {}
_ERROR_BODIES_MAX = 1024


def error_body(error: InferqError, pretty: bool) -> bytes:
    """``error.body()`` as JSON; the bodies of recent errors are kept (a full queue answers
    every rejected request with the same one)."""
    if type(error).body is not InferqError.body or not isinstance(error.reason, str):
        return json.dumps(error.body(), indent=2 if pretty else None).encode()
    cause = error.caused_by
    key = (error.status, error.error_type, error.reason, pretty,
           None if cause is None else (cause.error_type, cause.reason))  # fmt: skip
    found = _ERROR_BODIES.get(key)
    if found is None:
        found = json.dumps(error.body(), indent=2 if pretty else None).encode()
        if len(_ERROR_BODIES) >= _ERROR_BODIES_MAX:
            _ERROR_BODIES.clear()
        _ERROR_BODIES[key] = found
    return found


def filter_path(payload: Any, expression: str) -> Any:
    """Elasticsearch's response filtering: comma-separated dotted paths, ``*`` / ``**``."""
    patterns = [p.strip().split(".") for p in expression.split(",") if p.strip()]
    if not patterns:
        return payload
    result = _filter(payload, patterns)
    return result if result is not None else {}


def _segment_matches(pattern: str, key: str) -> bool:
    if pattern in ("*", "**"):
        return True
    if "*" in pattern:
        import fnmatch

        return fnmatch.fnmatchcase(key, pattern)
    return pattern == key


def _filter(node: Any, patterns: list[list[str]]) -> Any:
    if any(not p for p in patterns):
        return node
    if isinstance(node, list):
        items = [_filter(item, patterns) for item in node]
        kept = [item for item in items if item is not None]
        return kept if kept else None
    if not isinstance(node, dict):
        return None
    out: dict[str, Any] = {}
    for key, value in node.items():
        children: list[list[str]] = []
        for pattern in patterns:
            head = pattern[0]
            if head == "**":
                children.append(pattern)  # ** may match this level and go deeper
                if len(pattern) > 1 and _segment_matches(pattern[1], key):
                    children.append(pattern[2:])
            elif _segment_matches(head, key):
                children.append(pattern[1:])
        if not children:
            continue
        filtered = _filter(value, children)
        if filtered is not None:
            out[key] = filtered
    return out if out else None


# ---- the one error renderer -----------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except BodyReadTimeout as error:
        # Answer, then close at once: the rest of the body may still come (never parse it as a
        # request) and aiohttp would otherwise linger reading it.
        response = error_response(request, error)
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response
    except InferqError as error:
        return error_response(request, error)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(request, TooLarge(f"request body is too large: {exc.text}"))
    except web.HTTPNotFound:
        return error_response(request, NotFound(f"no handler found for uri [{request.path}] and method [{request.method}]", error_type="illegal_argument_exception", status=400))
    except web.HTTPMethodNotAllowed:
        return error_response(
            request,
            MethodNotAllowed(f"Incorrect HTTP method for uri [{request.path}] and method [{request.method}]"),
        )
    except RedisError as exc:
        return error_response(request, Unavailable(f"the cluster state store (Redis) is unavailable: {exc}"))
    except web.HTTPException as exc:
        return error_response(request, InferqError(exc.reason or "error", status=exc.status))
    except Exception as exc:  # an internal bug: still an Elasticsearch-shaped body, no trace
        request.app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(request, InferqError(f"internal error: {type(exc).__name__}: {exc}"))
    for name, value in PRODUCT_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
