"""``token_chunks``: how an allocation splits a batch into padded forward passes (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.allocation import token_chunks


def padded(lengths: list[int], chunk: list[int]) -> int:
    return len(chunk) * max(lengths[i] for i in chunk)


def test_nothing_to_split() -> None:
    assert token_chunks([], max_tokens=100, max_size=8) == []


def test_everything_fits_in_one_chunk() -> None:
    assert token_chunks([5, 9, 7], max_tokens=100, max_size=8) == [[0, 1, 2]]


def test_count_limit() -> None:
    assert token_chunks([3] * 5, max_tokens=10_000, max_size=2) == [[0, 1], [2, 3], [4]]


def test_padding_counts_against_the_budget() -> None:
    # 3 short docs fit (3 x 10 = 30); a long one would pad all four to 40 x 4 = 160 > 100
    assert token_chunks([10, 10, 10, 40], max_tokens=100, max_size=8) == [[0, 1, 2], [3]]
    # two of 40 fit (80), a third does not (120)
    assert token_chunks([40, 10, 40, 10], max_tokens=100, max_size=8) == [[0, 1], [2, 3]]


def test_a_doc_over_the_budget_goes_alone() -> None:
    assert token_chunks([5, 500, 5], max_tokens=100, max_size=8) == [[0], [1], [2]]


def test_exact_budget_is_allowed() -> None:
    assert token_chunks([25, 25, 25, 25], max_tokens=100, max_size=8) == [[0, 1, 2, 3]]
    assert token_chunks([25, 25, 25, 26], max_tokens=100, max_size=8) == [[0, 1, 2], [3]]


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=60),
    max_tokens=st.integers(min_value=1, max_value=4096),
    max_size=st.integers(min_value=1, max_value=40),
)
def test_every_doc_once_in_order_within_both_limits(lengths: list[int], max_tokens: int, max_size: int) -> None:
    chunks = token_chunks(lengths, max_tokens, max_size)
    assert [i for chunk in chunks for i in chunk] == list(range(len(lengths)))
    for chunk in chunks:
        assert chunk
        assert len(chunk) <= max_size
        assert len(chunk) == 1 or padded(lengths, chunk) <= max_tokens
    # greedy: a chunk is closed only because the next doc would break a limit
    for chunk, following in zip(chunks, chunks[1:], strict=False):
        grown = [*chunk, following[0]]
        assert len(grown) > max_size or padded(lengths, grown) > max_tokens
