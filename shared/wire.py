"""Queue messages: msgpack maps with a version field, decoded and validated once at the edge.

A request is one document for one deployment; a reply goes back on the producer's reply list.
The field names here are the wire protocol documented in ``docs/protocol.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

VERSION = 1


class WireError(ValueError):
    """A message that is not a valid inferq message."""


@dataclass(frozen=True)
class InferRequest:
    id: str
    reply_to: str
    deployment_id: str
    text: str
    config: dict[str, Any]
    deadline_ms: int
    enqueued_ms: int
    digest: str = ""  # cache key of the result; "" when the deployment's cache is off
    # times the request was put back after the worker holding it died (REQUEUE_COUNTED adds it)
    deliveries: int = 0

    def pack(self) -> bytes:
        message: dict[str, Any] = {
            "v": VERSION,
            "id": self.id,
            "reply_to": self.reply_to,
            "deployment_id": self.deployment_id,
            "text": self.text,
            "config": self.config,
            "deadline_ms": self.deadline_ms,
            "enqueued_ms": self.enqueued_ms,
            "digest": self.digest,
        }
        if self.deliveries:
            message["deliveries"] = self.deliveries
        return msgpack.packb(message)

    @staticmethod
    def unpack(raw: bytes) -> InferRequest:
        data = _unpack_map(raw)
        try:
            return InferRequest(
                id=str(data["id"]),
                reply_to=str(data["reply_to"]),
                deployment_id=str(data["deployment_id"]),
                text=str(data["text"]),
                config=dict(data.get("config") or {}),
                deadline_ms=int(data["deadline_ms"]),
                enqueued_ms=int(data.get("enqueued_ms", 0)),
                digest=str(data.get("digest", "")),
                deliveries=int(data.get("deliveries", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"bad request message: {exc}") from exc


class RequestTemplate:
    """``InferRequest.pack`` for the many requests that share ``reply_to``, ``deployment_id`` and
    ``config``: those are packed once, and each request packs only its own fields. The bytes are
    exactly ``InferRequest.pack``'s (a msgpack map is its header, then its keys and values)."""

    def __init__(self, reply_to: str, deployment_id: str, config: dict[str, Any]) -> None:
        pack = msgpack.packb
        self._head = b"\x89" + pack("v") + pack(VERSION) + pack("id")
        self._before_text = pack("reply_to") + pack(reply_to) + pack("deployment_id") + pack(deployment_id) + pack("text")
        self._before_deadline = pack("config") + pack(config) + pack("deadline_ms")
        self._before_enqueued = pack("enqueued_ms")
        self._before_digest = pack("digest")

    def pack(self, request_id: str, text: str, deadline_ms: int, enqueued_ms: int, digest: str) -> bytes:
        pack = msgpack.packb
        return b"".join((
            self._head, pack(request_id), self._before_text, pack(text), self._before_deadline, pack(deadline_ms),
            self._before_enqueued, pack(enqueued_ms), self._before_digest, pack(digest),
        ))  # fmt: skip


@dataclass(frozen=True)
class InferReply:
    id: str
    node: str
    result_json: bytes | None = None  # the Elasticsearch result object, JSON-encoded once
    error: dict[str, Any] | None = None  # {"status", "type", "reason"}
    cache_hit: bool = False
    time_ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # queue_ms, batch_size, infer_ms

    def pack(self) -> bytes:
        return msgpack.packb(
            {
                "v": VERSION,
                "id": self.id,
                "node": self.node,
                "result": self.result_json,
                "error": self.error,
                "cache_hit": self.cache_hit,
                "time_ms": self.time_ms,
                "timings": self.timings,
            }
        )

    @staticmethod
    def unpack(raw: bytes) -> InferReply:
        data = _unpack_map(raw)
        try:
            result = data.get("result")
            return InferReply(
                id=str(data["id"]),
                node=str(data.get("node", "")),
                result_json=bytes(result) if result is not None else None,
                error=dict(data["error"]) if data.get("error") else None,
                cache_hit=bool(data.get("cache_hit", False)),
                time_ms=float(data.get("time_ms", 0.0)),
                timings=dict(data.get("timings") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"bad reply message: {exc}") from exc


def _unpack_map(raw: bytes) -> dict[str, Any]:
    try:
        data = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not msgpack: {exc}") from exc
    if not isinstance(data, dict):
        raise WireError("message is not a map")
    if data.get("v") != VERSION:
        raise WireError(f"unsupported message version {data.get('v')!r}")
    return data
