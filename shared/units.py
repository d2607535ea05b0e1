"""Byte-size and time-value parsing and formatting, as Elasticsearch does them (pure)."""

from __future__ import annotations

import math
import re

from shared.errors import IllegalArgument, ParseError, render_value

_BYTE_UNITS: dict[str, int] = {
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "p": 1024**5,
    "pb": 1024**5,
}
_BYTE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-z]*)\s*$")

_TIME_UNITS_MS: dict[str, float] = {
    "nanos": 1e-6,
    "micros": 1e-3,
    "ms": 1.0,
    "s": 1000.0,
    "m": 60_000.0,
    "h": 3_600_000.0,
    "d": 86_400_000.0,
}
_TIME_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(nanos|micros|ms|s|m|h|d)\s*$")


def parse_byte_size(value: str | int, setting: str = "cache_size") -> int:
    """'100mb' -> 104857600. A bare number is bytes. Bad values raise a 400 parse_exception."""
    if isinstance(value, bool):
        raise ParseError(f"failed to parse setting [{setting}] with value [{render_value(value)}] as a size in bytes")
    if isinstance(value, int):
        if value < 0 and value != -1:
            raise ParseError(f"failed to parse setting [{setting}] with value [{render_value(value)}] as a size in bytes")
        return value
    text = str(value).strip().lower()
    match = _BYTE_RE.match(text)
    if match is None or (match.group(2) and match.group(2) not in _BYTE_UNITS):
        raise ParseError(
            f"failed to parse setting [{setting}] with value [{render_value(value)}] as a size in bytes: "
            "unit is missing or unrecognized"
        )
    number, unit = match.group(1), match.group(2) or "b"
    if not match.group(2) and text not in ("0", "-1"):
        raise ParseError(
            f"failed to parse setting [{setting}] with value [{render_value(value)}] as a size in bytes: "
            "unit is missing or unrecognized"
        )
    amount = float(number) * _BYTE_UNITS[unit]
    if amount < 0:
        raise ParseError(f"failed to parse setting [{setting}] with value [{render_value(value)}] as a size in bytes")
    return int(amount)


def format_bytes(size: int) -> str:
    """Elasticsearch's human byte string: 265632637 -> '253.3mb', 0 -> '0b'."""
    for unit, factor in (("pb", 1024**5), ("tb", 1024**4), ("gb", 1024**3), ("mb", 1024**2), ("kb", 1024)):
        if size >= factor:
            value = size / factor
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{size}b"


MAX_TIME_MS = float((2**63 - 1) // 1_000_000)  # Elasticsearch's TimeValue: a long of nanoseconds


def parse_time_ms(value: str | int | float, setting: str = "timeout") -> float:
    """'30s' -> 30000.0. A bad value raises 400 illegal_argument_exception with ES's message;
    so does one past ``MAX_TIME_MS`` (``1e30``, ``"99999999999999999999d"``), NaN or infinity."""
    if isinstance(value, bool):
        raise IllegalArgument(f"failed to parse setting [{setting}] with value [{render_value(value)}] as a time value")
    if isinstance(value, (int, float)):
        return _bounded_ms(float(value), value, setting)
    text = str(value).strip().lower()
    if text == "-1":
        return -1.0
    match = _TIME_RE.match(text)
    if match is None:
        raise IllegalArgument(
            f"failed to parse setting [{setting}] with value [{render_value(value)}] as a time value: "
            "unit is missing or unrecognized"
        )
    return _bounded_ms(float(match.group(1)) * _TIME_UNITS_MS[match.group(2)], value, setting)


def _bounded_ms(ms: float, value: object, setting: str) -> float:
    if not math.isfinite(ms) or abs(ms) > MAX_TIME_MS:
        raise IllegalArgument(
            f"failed to parse setting [{setting}] with value [{str(value)[:64]}] as a time value: "
            f"values above [{int(MAX_TIME_MS)}ms] are not supported"
        )
    return ms


def format_time_ms(ms: float) -> str:
    """A compact time value string: 30000 -> '30s', 1500 -> '1.5s', 250 -> '250ms'."""
    if ms >= 1000 and ms % 1000 == 0:
        return f"{int(ms // 1000)}s"
    if ms >= 1000:
        return f"{ms / 1000:g}s"
    return f"{ms:g}ms"
