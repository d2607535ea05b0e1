"""How an allocation turns what it took off its queue into forward passes (pure).

On a CPU a padded token costs as much as a real one, so a batch of mixed lengths pays for
its longest row in every row. The taken documents are sorted by length and grouped greedily:
a forward pass grows while it stays within ``max_size`` documents, ``max_tokens`` padded
tokens (rows × longest row) and ``max_padding`` (the share of its padded tokens that are
padding). A document that breaks a limit on its own goes alone.

Shortest first also answers the quick documents first: a long one never holds up short ones
taken with it.

How much to take off the queue is decided before tokenizing, inside Redis (``TAKE``), by a
padded-token budget: queued messages are taken oldest first while (documents × the longest
estimated row) stays within ``max_take_tokens``, so 5-word queries are taken by the hundred
and 300-token passages a few at a time. A message's tokens are estimated from its length in
bytes (``TokenEstimate``): its text bytes (the message less its envelope) over the bytes per
token the allocation observed in its last batches, at most the model's row length.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class TokenEstimate:
    """How ``TAKE`` estimates a queued message's longest row from its size in bytes:
    ``min(max_row_tokens, ceil((bytes - overhead_bytes) / bytes_per_token) + 2)``."""

    overhead_bytes: int = 0  # a message's bytes besides its text (the smallest seen)
    bytes_per_token: float = 4.0  # text bytes per token (English words: ~4-5)
    max_row_tokens: int = 512  # the model's sequence length: longer texts are truncated or split

    def tokens(self, message_bytes: int) -> int:
        """The estimate ``TAKE`` computes in Lua, for tests and the benchmark."""
        text_bytes = max(message_bytes - self.overhead_bytes, 0)
        return min(self.max_row_tokens, math.ceil(text_bytes / self.bytes_per_token) + 2)

    def observe(self, samples: Sequence[tuple[int, int, int]]) -> TokenEstimate:
        """Updated from a batch's (message bytes, text bytes, tokens) per document: the smallest
        envelope seen, and a moving average of bytes per token (truncated texts excluded)."""
        if not samples:
            return self
        overhead = min(message - text for message, text, _ in samples)
        if self.overhead_bytes:
            overhead = min(overhead, self.overhead_bytes)
        counted = [(text, tokens) for _, text, tokens in samples if 2 < tokens < self.max_row_tokens]
        bytes_per_token = self.bytes_per_token
        if counted:
            observed = sum(text for text, _ in counted) / max(1, sum(tokens - 2 for _, tokens in counted))
            bytes_per_token = max(0.5, 0.5 * bytes_per_token + 0.5 * observed)
        return TokenEstimate(overhead, bytes_per_token, self.max_row_tokens)


def take_count(max_take: int, max_size: int) -> int:
    """Documents an allocation takes off its queue at once: ``max_take`` (at least one
    forward pass worth), or one when batching is off (``max_size`` 1)."""
    return 1 if max_size <= 1 else max(max_take, max_size)
