"""``adaptive_allocations``: parsing, validation, merging and rendering (pure).

One parser for every API that takes the object (``_start``, ``_update``, inference endpoints):
``parse_adaptive_allocations`` turns the JSON value into ``AdaptiveAllocations`` (or ``RESET``
for an explicit ``null`` on an update), ``validate`` adds Elasticsearch's messages to a
``ValidationCollector``, and ``check_exclusive`` is the rule that a count and enabled adaptive
allocations cannot be asked for together. Messages and shapes follow Elasticsearch's
``AdaptiveAllocationsSettings`` (8.15+): the object renders ``enabled`` always and the bounds
only when set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from shared.errors import ValidationCollector, ValidationError, XContentParseError

FIELDS = ("enabled", "min_number_of_allocations", "max_number_of_allocations")
PARSER_NAME = "autoscaling_settings"
UNSET_BOUND: Final = -1  # an explicit null bound: "not set" (on an update: reset it)
MAX_ALLOCATIONS_SAFEGUARD = 32  # the upper bound when max_number_of_allocations is not set (as ES)
EXCLUSIVE_MESSAGE = "[number_of_allocations] cannot be set if adaptive allocations is enabled"


@dataclass(frozen=True)
class AdaptiveAllocations:
    enabled: bool | None = None
    min_number_of_allocations: int | None = None
    max_number_of_allocations: int | None = None

    @property
    def is_enabled(self) -> bool:
        return self.enabled is True

    @property
    def min_allocations(self) -> int:
        """The lower bound the scaler keeps (0 when not set: the deployment may scale to zero)."""
        value = self.min_number_of_allocations
        return value if value is not None and value > 0 else 0

    @property
    def max_allocations(self) -> int:
        value = self.max_number_of_allocations
        return value if value is not None and value > 0 else MAX_ALLOCATIONS_SAFEGUARD

    @property
    def initial_allocations(self) -> int:
        """Allocations a start with adaptive allocations and no count begins with: the minimum
        when it is positive, else 1 (as Elasticsearch)."""
        return self.min_allocations or 1

    def merge(self, updates: AdaptiveAllocations) -> AdaptiveAllocations:
        """``updates`` over ``self``: a field given replaces, a null bound removes."""
        merged = self
        if updates.enabled is not None:
            merged = replace(merged, enabled=updates.enabled)
        if updates.min_number_of_allocations is not None:
            value = updates.min_number_of_allocations
            merged = replace(merged, min_number_of_allocations=None if value == UNSET_BOUND else value)
        if updates.max_number_of_allocations is not None:
            value = updates.max_number_of_allocations
            merged = replace(merged, max_number_of_allocations=None if value == UNSET_BOUND else value)
        return merged

    def without_unset(self) -> AdaptiveAllocations:
        """Explicit null bounds dropped (what a start stores)."""
        return AdaptiveAllocations().merge(self)

    def validate(self, errors: ValidationCollector) -> None:
        low, high = self.min_number_of_allocations, self.max_number_of_allocations
        has_low = low is not None and low != UNSET_BOUND
        has_high = high is not None and high != UNSET_BOUND
        if has_low and low is not None and low < 0:
            errors.add("[min_number_of_allocations] must be a non-negative integer or null")
        if has_high and high is not None and high < 1:
            errors.add("[max_number_of_allocations] must be a positive integer or null")
        if has_low and has_high and low is not None and high is not None and low > high:
            errors.add("[min_number_of_allocations] must not be larger than [max_number_of_allocations]")

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"enabled": self.enabled is True}
        if self.min_number_of_allocations is not None:
            body["min_number_of_allocations"] = self.min_number_of_allocations
        if self.max_number_of_allocations is not None:
            body["max_number_of_allocations"] = self.max_number_of_allocations
        return body

    @staticmethod
    def from_json(value: Mapping[str, Any] | None) -> AdaptiveAllocations | None:
        """The stored (already validated) object of a deployment document."""
        if not value:
            return None
        low, high = value.get("min_number_of_allocations"), value.get("max_number_of_allocations")
        return AdaptiveAllocations(
            enabled=bool(value.get("enabled", False)),
            min_number_of_allocations=None if low is None else int(low),
            max_number_of_allocations=None if high is None else int(high),
        )


RESET: Final = AdaptiveAllocations(enabled=False, min_number_of_allocations=-1, max_number_of_allocations=-1)


def _parse_int(name: str, value: Any) -> int:
    if value is None:
        return UNSET_BOUND
    if isinstance(value, bool):
        raise XContentParseError(f"[1:2] [{PARSER_NAME}] failed to parse field [{name}]")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise XContentParseError(f"[1:2] [{PARSER_NAME}] failed to parse field [{name}]")


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise XContentParseError(f"[1:2] [{PARSER_NAME}] failed to parse field [{name}]")


def parse_adaptive_allocations(value: Any) -> AdaptiveAllocations:
    """The ``adaptive_allocations`` value of a request body. ``null`` gives ``RESET`` (an
    update then removes the settings); any other non-object is a parse error. Bounds given as
    ``null`` are kept as ``UNSET_BOUND`` until merged. Not validated: call ``validate``."""
    if value is None:
        return RESET
    if not isinstance(value, Mapping):
        raise XContentParseError(f"[1:2] [{PARSER_NAME}] expected an object for [adaptive_allocations]")
    for name in value:
        if name not in FIELDS:
            raise XContentParseError(f"[1:2] [{PARSER_NAME}] unknown field [{name}]")
    return AdaptiveAllocations(
        enabled=_parse_bool("enabled", value["enabled"]) if value.get("enabled") is not None else None,
        min_number_of_allocations=(
            _parse_int("min_number_of_allocations", value["min_number_of_allocations"])
            if "min_number_of_allocations" in value
            else None
        ),
        max_number_of_allocations=(
            _parse_int("max_number_of_allocations", value["max_number_of_allocations"])
            if "max_number_of_allocations" in value
            else None
        ),
    )


def check_exclusive(
    adaptive: AdaptiveAllocations | None, number_of_allocations_given: bool, errors: ValidationCollector
) -> None:
    """A request that sets a count while enabling adaptive allocations (start, inference endpoints)."""
    if number_of_allocations_given and adaptive is not None and adaptive.is_enabled:
        errors.add(EXCLUSIVE_MESSAGE)


def merged_for_update(
    stored: AdaptiveAllocations | None, updates: AdaptiveAllocations | None, number_of_allocations: int | None
) -> AdaptiveAllocations | None:
    """The settings an update leaves, checked as Elasticsearch's update does: a count with
    enabled settings is a 400 ``validation_exception``; bad bounds a validation failure."""
    if updates is None:
        merged = stored
    elif updates is RESET:
        merged = None
    elif stored is None:
        merged = updates.without_unset()
    else:
        merged = stored.merge(updates)
    if merged is not None:
        if merged.is_enabled and number_of_allocations is not None:
            raise ValidationError(EXCLUSIVE_MESSAGE)
        errors = ValidationCollector()
        merged.validate(errors)
        errors.raise_if_any()
    return merged
