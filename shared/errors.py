"""The one error tree of inferq.

Every failure a client can see is an ``InferqError``: it carries its HTTP status and the
Elasticsearch error ``type`` string, and renders itself as Elasticsearch's error body
(``{"error": {"root_cause": [...], "type", "reason", "caused_by"?}, "status": N}``).
The gateway has exactly one place that turns these into responses (its error middleware);
workers send them back over the queue as ``to_wire()`` dicts and the gateway rebuilds them
with ``from_wire()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class InferqError(Exception):
    status: int = 500
    error_type: str = "status_exception"

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        caused_by: InferqError | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        self.caused_by = caused_by

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "root_cause": [{"type": self.error_type, "reason": self.reason}],
            "type": self.error_type,
            "reason": self.reason,
        }
        if self.caused_by is not None:
            error["caused_by"] = {"type": self.caused_by.error_type, "reason": self.caused_by.reason}
        return {"error": error, "status": self.status}

    def to_wire(self) -> dict[str, Any]:
        return {"status": self.status, "type": self.error_type, "reason": self.reason}

    @staticmethod
    def from_wire(data: dict[str, Any]) -> InferqError:
        return InferqError(
            str(data.get("reason", "unknown error")),
            status=int(data.get("status", 500)),
            error_type=str(data.get("type", "status_exception")),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.error_type!r}, {self.reason!r})"


# ---- 400 -------------------------------------------------------------------------------------


class BadRequest(InferqError):
    """A "badRequest" message: status_exception with 400."""

    status = 400
    error_type = "status_exception"


class IllegalArgument(InferqError):
    status = 400
    error_type = "illegal_argument_exception"


class ParseError(InferqError):
    status = 400
    error_type = "parse_exception"


class XContentParseError(InferqError):
    status = 400
    error_type = "x_content_parse_exception"


class ValidationError(InferqError):
    status = 400
    error_type = "validation_exception"


class ResourceAlreadyExists(InferqError):
    status = 400
    error_type = "resource_already_exists_exception"


class ActionRequestValidation(InferqError):
    """Several validation failures gathered into one 400, as Elasticsearch does."""

    status = 400
    error_type = "action_request_validation_exception"

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        reason = "Validation Failed: " + "".join(
            f"{i}: {m};" for i, m in enumerate(self.messages, start=1)
        )
        super().__init__(reason)


class ValidationCollector:
    """Collects validation messages; ``raise_if_any()`` raises one ActionRequestValidation."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.messages.append(message)

    def raise_if_any(self) -> None:
        if self.messages:
            raise ActionRequestValidation(self.messages)


# ---- 401 / 403 / 404 / 405 / 408 / 409 / 413 / 429 / 5xx --------------------------------------


class AuthenticationRequired(InferqError):
    status = 401
    error_type = "security_exception"


class Forbidden(InferqError):
    status = 403
    error_type = "security_exception"


class NotFound(InferqError):
    status = 404
    error_type = "resource_not_found_exception"


class MethodNotAllowed(InferqError):
    status = 405
    error_type = "method_not_allowed_exception"


class RequestTimeout(InferqError):
    status = 408
    error_type = "status_exception"


class Conflict(InferqError):
    status = 409
    error_type = "status_exception"


class TooLarge(InferqError):
    status = 413
    error_type = "content_too_long_exception"


class TooManyRequests(InferqError):
    """Capacity refusals (no node can host, not enough resources)."""

    status = 429
    error_type = "status_exception"


class QueueFull(InferqError):
    """A node's bounded queue for the deployment is full."""

    status = 429
    error_type = "es_rejected_execution_exception"

    def __init__(self, reason: str = "inference process queue is full. Unable to execute command") -> None:
        super().__init__(reason)


class InferenceFailed(InferqError):
    status = 500
    error_type = "status_exception"


class Unavailable(InferqError):
    status = 503
    error_type = "status_exception"


def model_not_found(model_id: str) -> NotFound:
    return NotFound(f"Could not find trained model [{model_id}]")


def deployment_not_found(deployment_id: str) -> NotFound:
    return NotFound(f"No known model deployment with id [{deployment_id}]")


def render_value(value: Any) -> str:
    """A JSON value inside a message, as Elasticsearch's messages show one (Java's
    ``toString``), never a Python repr: ``null``, ``true``, ``[a, b]``, ``{k=v}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{render_value(k)}={render_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return str(value)
