"""``plan_chunks``: how an allocation groups what it took into forward passes (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.batch_plan import ChunkLimits, Shape, TokenEstimate, plan_chunks, take_count

ANY_PADDING = 1.0


def flat(*lengths: int) -> list[Shape]:
    return [Shape.of([n]) for n in lengths]


def limits(max_size: int = 8, max_tokens: int = 10_000, max_padding: float = ANY_PADDING) -> ChunkLimits:
    return ChunkLimits(max_size=max_size, max_tokens=max_tokens, max_padding=max_padding)


def padded(shapes: list[Shape], chunk: list[int]) -> int:
    return sum(shapes[i].rows for i in chunk) * max(shapes[i].longest for i in chunk)


def padding_share(shapes: list[Shape], chunk: list[int]) -> float:
    total = padded(shapes, chunk)
    return (total - sum(shapes[i].tokens for i in chunk)) / total


def test_nothing_to_plan() -> None:
    assert plan_chunks([], limits()) == []


def test_shortest_first_in_one_chunk_when_everything_fits() -> None:
    assert plan_chunks(flat(5, 9, 7), limits()) == [[0, 2, 1]]


def test_equal_lengths_keep_their_order() -> None:
    assert plan_chunks(flat(4, 4, 4), limits()) == [[0, 1, 2]]


def test_count_limit() -> None:
    assert plan_chunks(flat(3, 3, 3, 3, 3), limits(max_size=2)) == [[0, 1], [2, 3], [4]]


def test_padded_tokens_count_against_the_token_budget() -> None:
    # three of 10 fit (30); the 40 would pad all four to 160 > 100
    assert plan_chunks(flat(10, 40, 10, 10), limits(max_tokens=100)) == [[0, 2, 3], [1]]
    assert plan_chunks(flat(25, 25, 25, 25), limits(max_tokens=100)) == [[0, 1, 2, 3]]


def test_padding_limit_separates_short_from_long() -> None:
    # 10, 12: 4 of 24 padded (17%); adding 40: 80 of 120 would be padding
    assert plan_chunks(flat(40, 10, 12), limits(max_padding=0.25)) == [[1, 2], [0]]
    assert plan_chunks(flat(40, 10, 12), limits(max_padding=ANY_PADDING)) == [[1, 2, 0]]


def test_zero_padding_groups_equal_lengths_only() -> None:
    assert plan_chunks(flat(7, 3, 7, 3), limits(max_padding=0.0)) == [[1, 3], [0, 2]]


def test_a_document_over_a_limit_goes_alone() -> None:
    assert plan_chunks(flat(5, 500, 5), limits(max_tokens=100)) == [[0, 2], [1]]


def test_span_windows_count_as_rows() -> None:
    # a doc of three 50-token windows is 150 padded tokens on its own
    shapes = [Shape.of([50, 50, 20]), Shape.of([10]), Shape.of([45])]
    assert plan_chunks(shapes, limits(max_tokens=200)) == [[1, 2], [0]]
    assert padded(shapes, [1, 2, 0]) == 5 * 50


def test_take_count() -> None:
    assert take_count(max_take=32, max_size=8) == 32
    assert take_count(max_take=4, max_size=8) == 8  # at least one full forward pass
    assert take_count(max_take=32, max_size=1) == 1  # batching off: one at a time


@given(
    lengths=st.lists(st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=3), max_size=60),
    max_tokens=st.integers(min_value=1, max_value=4096),
    max_size=st.integers(min_value=1, max_value=40),
    max_padding=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
)
def test_every_doc_once_shortest_first_within_every_limit(
    lengths: list[list[int]], max_tokens: int, max_size: int, max_padding: float
) -> None:
    shapes = [Shape.of(rows) for rows in lengths]
    chunk_limits = ChunkLimits(max_size=max_size, max_tokens=max_tokens, max_padding=max_padding)
    chunks = plan_chunks(shapes, chunk_limits)
    order = [i for chunk in chunks for i in chunk]
    assert sorted(order) == list(range(len(shapes)))
    assert [shapes[i].longest for i in order] == sorted(s.longest for s in shapes)
    for chunk in chunks:
        assert chunk
        assert len(chunk) <= max_size
        if len(chunk) > 1:
            assert padded(shapes, chunk) <= max_tokens
            assert padding_share(shapes, chunk) <= max_padding + 1e-9
    # greedy: a chunk is closed only because its next doc would break a limit
    for chunk, following in zip(chunks, chunks[1:], strict=False):
        grown = [*chunk, following[0]]
        assert (
            len(grown) > max_size
            or padded(shapes, grown) > max_tokens
            or padding_share(shapes, grown) > max_padding + 1e-9
        )


def test_token_estimate_from_message_bytes() -> None:
    estimate = TokenEstimate(overhead_bytes=150, bytes_per_token=4.0, max_row_tokens=512)
    assert estimate.tokens(150) == 2  # the special tokens
    assert estimate.tokens(154) == 3
    assert estimate.tokens(155) == 4
    assert estimate.tokens(100) == 2
    assert estimate.tokens(10**7) == 512


def test_token_estimate_learns_envelope_and_bytes_per_token() -> None:
    estimate = TokenEstimate(bytes_per_token=4.0, max_row_tokens=64)
    # (message bytes, text bytes, tokens): 30 text bytes in 7 tokens (5 + 2 special), envelope 120 or 130
    learned = estimate.observe([(150, 30, 7), (160, 30, 7), (1150, 1000, 64)])  # the truncated one is not counted
    assert learned.overhead_bytes == 120
    assert learned.bytes_per_token == 0.5 * 4.0 + 0.5 * 6.0
    assert learned.max_row_tokens == 64
    assert learned.observe([]) == learned
    assert learned.observe([(200, 30, 7)]).overhead_bytes == 120  # the smallest envelope seen stays
