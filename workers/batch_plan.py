"""How an allocation turns what it took off its queue into forward passes (pure).

On a CPU a padded token costs as much as a real one, so a batch of mixed lengths pays for
its longest row in every row. The taken documents are sorted by length and grouped greedily:
a forward pass grows while it stays within ``max_size`` documents, ``max_tokens`` padded
tokens (rows × longest row) and ``max_padding`` (the share of its padded tokens that are
padding). A document that breaks a limit on its own goes alone.

Shortest first also answers the quick documents first: a long one never holds up short ones
taken with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A prepared document's size: its rows (span windows) and their tokens."""

    rows: int
    longest: int  # tokens in its longest row
    tokens: int  # tokens in all its rows

    @classmethod
    def of(cls, row_lengths: Sequence[int]) -> Shape:
        return cls(len(row_lengths), max(row_lengths, default=1), sum(row_lengths))


@dataclass(frozen=True)
class ChunkLimits:
    max_size: int  # documents per forward pass
    max_tokens: int  # padded tokens per forward pass
    max_padding: float  # most padding per forward pass, as a share of its padded tokens (1.0: any)


def plan_chunks(shapes: Sequence[Shape], limits: ChunkLimits) -> list[list[int]]:
    """Indices of ``shapes`` grouped into forward passes, shortest documents first."""
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i].longest, i))
    chunks: list[list[int]] = []
    current: list[int] = []
    rows = tokens = 0
    for i in order:
        shape = shapes[i]
        grown_rows, grown_tokens = rows + shape.rows, tokens + shape.tokens
        padded = grown_rows * shape.longest  # sorted: the newcomer is the longest so far
        if current and (
            len(current) >= limits.max_size
            or padded > limits.max_tokens
            or padded - grown_tokens > limits.max_padding * padded
        ):
            chunks.append(current)
            current, grown_rows, grown_tokens = [], shape.rows, shape.tokens
        current.append(i)
        rows, tokens = grown_rows, grown_tokens
    if current:
        chunks.append(current)
    return chunks


def take_count(max_take: int, max_size: int) -> int:
    """Documents an allocation takes off its queue at once: ``max_take`` (at least one
    forward pass worth), or one when batching is off (``max_size`` 1)."""
    return 1 if max_size <= 1 else max(max_take, max_size)
