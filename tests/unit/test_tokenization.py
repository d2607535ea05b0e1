from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.errors import BadRequest, IllegalArgument
from tests.tiny_models import write_tokenizer
from workers.tokenization import NlpTokenizer, Tokenization, build_tokenizer

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "capital",
    "of",
    "france",
    "is",
    "paris",
    "cafe",
    "hello",
    "world",
    "##s",
    "!",
    ",",
    ".",
    "中",
    "文",
    "😀",
    "elastic",
    "search",
    "mountain",
    "view",
    "un",
    "##believ",
    "##able",
    "a",
    "b",
    "c",
]


def bert(**settings: Any) -> NlpTokenizer:
    body = {
        "do_lower_case": True,
        "with_special_tokens": True,
        "max_sequence_length": 512,
        "truncate": "first",
        "span": -1,
    }
    body.update(settings)
    return build_tokenizer({"vocabulary": VOCAB}, {"bert": body})


def tokens(tok: NlpTokenizer, ids: list[int]) -> list[str]:
    return [tok.id_to_token(i) for i in ids]


def surface(text: str, tokenization: Tokenization, window: int = 0) -> list[str]:
    w = tokenization.windows[window]
    return [text[s:e] for (s, e), seq in zip(w.offsets, w.sequence_ids) if seq is not None]


def test_offsets_point_into_the_original_text() -> None:
    tok = bert()
    text = "  Café HELLO!  中文 😀 worlds  "
    result = tok.tokenize(text)
    window = result.windows[0]
    assert tokens(tok, window.input_ids) == [
        "[CLS]",
        "cafe",
        "hello",
        "!",
        "中",
        "文",
        "😀",
        "world",
        "##s",
        "[SEP]",
    ]
    assert surface(text, result) == ["Café", "HELLO", "!", "中", "文", "😀", "world", "s"]
    assert window.sequence_ids[0] is None and window.sequence_ids[-1] is None
    assert window.token_type_ids == [0] * len(window)
    assert result.truncated is False


def test_case_is_kept_without_do_lower_case() -> None:
    tok = bert(do_lower_case=False)
    result = tok.tokenize("Paris paris")
    assert tokens(tok, result.windows[0].input_ids) == ["[CLS]", "[UNK]", "paris", "[SEP]"]
    assert surface("Paris paris", result) == ["Paris", "paris"]


def test_mask_token_in_text_stays_one_token() -> None:
    tok = bert()
    result = tok.tokenize("the capital is [MASK].")
    assert tokens(tok, result.windows[0].input_ids) == [
        "[CLS]",
        "the",
        "capital",
        "is",
        "[MASK]",
        ".",
        "[SEP]",
    ]
    assert tok.mask_id == 4


def test_without_special_tokens() -> None:
    tok = bert(with_special_tokens=False)
    assert tokens(tok, tok.tokenize("hello world").windows[0].input_ids) == ["hello", "world"]


def test_truncate_first_keeps_the_start_and_flags_it() -> None:
    tok = bert(max_sequence_length=5)
    result = tok.tokenize("a b c a b c")
    assert tokens(tok, result.windows[0].input_ids) == ["[CLS]", "a", "b", "c", "[SEP]"]
    assert result.truncated is True
    assert len(result.windows) == 1


def test_exact_fit_is_not_truncated() -> None:
    result = bert(max_sequence_length=5).tokenize("a b c")
    assert result.truncated is False


def test_truncate_none_without_span_is_a_bad_request() -> None:
    tok = bert(max_sequence_length=5, truncate="none")
    with pytest.raises(BadRequest) as err:
        tok.tokenize("a b c a b c")
    assert err.value.reason == (
        "Input too large. The tokenized input length [8] exceeds the maximum sequence length [5]"
    )
    assert err.value.status == 400


def test_span_windows_overlap_and_respect_words() -> None:
    tok = bert(max_sequence_length=8, truncate="none", span=2)
    text = "a b unbelievable c a b c a b unbelievable c"
    result = tok.tokenize(text)
    assert len(result.windows) > 1
    assert result.truncated is False
    inner = tok.encode(text)
    covered: set[int] = set()
    previous_end = 0
    for index, window in enumerate(result.windows):
        assert len(window) <= 8
        content = [i for i, seq in enumerate(window.sequence_ids) if seq == 0]
        start, end = window.first_token, window.first_token + len(content)
        assert window.input_ids[1:-1] == inner.ids[start:end]
        # never cut inside a word
        assert start == 0 or inner.word_ids[start] != inner.word_ids[start - 1]
        assert end == len(inner.ids) or inner.word_ids[end] != inner.word_ids[end - 1]
        if index == 0:
            assert window.span_prev == -1
        else:
            assert start < previous_end  # windows overlap
            assert window.span_prev == previous_end - start
        covered.update(range(start, end))
        previous_end = end
    assert covered == set(range(len(inner.ids)))


def test_span_on_short_input_gives_one_window() -> None:
    result = bert(max_sequence_length=16, truncate="none", span=4).tokenize("hello world")
    assert len(result.windows) == 1


def test_pair_layout_and_token_types() -> None:
    tok = bert()
    result = tok.tokenize_pair("the capital", "is paris")
    window = result.windows[0]
    assert tokens(tok, window.input_ids) == ["[CLS]", "the", "capital", "[SEP]", "is", "paris", "[SEP]"]
    assert window.token_type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert window.sequence_ids == [None, 0, 0, None, 1, 1, None]
    assert [
        ("the capital", "is paris")[seq][s:e]
        for (s, e), seq in zip(window.offsets, window.sequence_ids)
        if seq is not None
    ] == ["the", "capital", "is", "paris"]


@pytest.mark.parametrize(
    ("truncate", "expected"),
    [
        ("first", ["[CLS]", "a", "[SEP]", "b", "b", "b", "[SEP]"]),
        ("second", ["[CLS]", "a", "a", "a", "[SEP]", "b", "[SEP]"]),
    ],
)
def test_pair_truncation(truncate: str, expected: list[str]) -> None:
    tok = bert(max_sequence_length=7)
    result = tok.tokenize_pair("a a a", "b b b", truncate=truncate)
    assert tokens(tok, result.windows[0].input_ids) == expected
    assert result.truncated is True


def test_pair_truncation_none_and_impossible_truncation() -> None:
    tok = bert(max_sequence_length=7)
    with pytest.raises(BadRequest, match=r"Input too large. The tokenized input length \[9\]"):
        tok.tokenize_pair("a a a", "b b b", truncate="none")
    with pytest.raises(
        BadRequest, match=r"Attempting truncation \[first\] but input is too large for the second"
    ):
        tok.tokenize_pair("a", "b b b b b b", truncate="first")


def test_pair_span_windows_the_second_sequence() -> None:
    tok = bert(max_sequence_length=9, truncate="none", span=1)
    result = tok.tokenize_pair("the capital", "a b c a b c a b c")
    assert len(result.windows) > 1
    seen: list[int] = []
    for window in result.windows:
        assert len(window) <= 9
        assert tokens(tok, window.input_ids[:4]) == ["[CLS]", "the", "capital", "[SEP]"]
        content = [i for i, seq in enumerate(window.sequence_ids) if seq == 1]
        seen.extend(range(window.first_token, window.first_token + len(content)))
    assert sorted(set(seen)) == list(range(9))
    with pytest.raises(IllegalArgument, match="Reduce the size of the"):
        tok.tokenize_pair("the capital", "a b c a b c a b c", span=8)


def test_vocabulary_requirements() -> None:
    with pytest.raises(IllegalArgument, match="merges"):
        build_tokenizer({"vocabulary": ["<s>", "</s>", "a"]}, {"roberta": {}})
    with pytest.raises(IllegalArgument, match="scores"):
        build_tokenizer({"vocabulary": ["<s>", "</s>", "a"]}, {"xlm_roberta": {}})
    with pytest.raises(IllegalArgument, match="must not be empty"):
        build_tokenizer({"vocabulary": []}, {"bert": {}})


# ---- parity with Hugging Face tokenizers for each family ----------------------------------------

TEXTS = [
    "  John Smith, Café 😀 中文  ",
    "naïve résumé\u00a0and\tthe  end",
    "Ｆｕｌｌ ｗｉｄｔｈ ﬁ x",
    "The capital of France is Paris.",
]


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


@pytest.fixture(scope="module")
def hf_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import transformers

    root = tmp_path_factory.mktemp("tokenizers")
    loaded = {}
    for family in ("bert", "mpnet", "roberta", "xlm_roberta"):
        folder = root / family
        write_tokenizer(Path(folder), family)
        loaded[family] = transformers.AutoTokenizer.from_pretrained(str(folder))
    return loaded


@pytest.mark.parametrize("family", ["bert", "mpnet", "roberta", "xlm_roberta"])
def test_matches_hugging_face(family: str, hf_tokenizers: dict[str, Any]) -> None:
    from inferq.tracing import export_vocabulary, tokenizer_kind

    hf = hf_tokenizers[family]
    assert tokenizer_kind(hf) == family
    settings: dict[str, Any] = {"do_lower_case": True} if family in ("bert", "mpnet") else {}
    tok = build_tokenizer(export_vocabulary(hf), {family: settings})
    for text in TEXTS:
        expected = hf(text, add_special_tokens=False, return_offsets_mapping=True)
        inner = tok.encode(text)
        assert inner.ids == expected["input_ids"], text
        hf_offsets = [tuple(o) for o in expected["offset_mapping"]]
        if (
            family == "xlm_roberta"
        ):  # Hugging Face keeps the "▁" space inside sentencepiece offsets; ES does not
            hf_offsets = [strip_span(text, s, e) for s, e in hf_offsets]
        assert inner.offsets == hf_offsets, text
        single = hf(text)
        assert tok.tokenize(text).windows[0].input_ids == single["input_ids"]
        pair = hf("What is it?", text)
        window = tok.tokenize_pair("What is it?", text).windows[0]
        assert window.input_ids == pair["input_ids"]
        if "token_type_ids" in pair:
            assert window.token_type_ids == pair["token_type_ids"]


# ---- bounded work: truncation tokenizes only what it keeps --------------------------------------

LONG_PIECES = ["The", "capital", "of", "France", "is", "Paris", ",", "Café", "😀", "中文", "naïve", "  ", "\t",
               "unbelievable", "Ｆｕｌｌ", "ﬁ", "x" * 150, "résumé!", "..."]  # fmt: skip


def long_texts(count: int, words: int) -> list[str]:
    import random

    rnd = random.Random(13)
    return [" ".join(rnd.choice(LONG_PIECES) for _ in range(words)) for _ in range(count)]


@pytest.mark.parametrize("family", ["bert", "mpnet", "roberta", "xlm_roberta"])
def test_truncation_tokenizes_a_prefix_and_keeps_exactly_the_same_windows(
    family: str, hf_tokenizers: dict[str, Any]
) -> None:
    from inferq.tracing import export_vocabulary

    settings: dict[str, Any] = {"max_sequence_length": 24}
    tok = build_tokenizer(export_vocabulary(hf_tokenizers[family]), {family: settings})
    for text in long_texts(25, 60) + ["short text", "x" * 5000, "a " * 11 + "b" * 300]:
        inner, whole = tok.encode_prefix(text, 22)
        full = tok.encode(text)
        kept = min(len(full.ids), 23)
        assert inner.ids[:kept] == full.ids[:kept] and inner.offsets[:kept] == full.offsets[:kept], text
        assert whole or len(full.ids) > 22
        expected = Tokenization(
            [tok._single_window(full, 0, min(len(full.ids), 22), -1)], truncated=len(full.ids) > 22
        )
        got = tok.tokenize(text)
        assert got.windows == expected.windows and got.truncated == expected.truncated, text
        for truncate in ("first", "second", "balanced"):
            question = text[: len(text) // 3]
            try:
                want = _pair_of_full_encoding(tok, question, text, truncate)
            except BadRequest as error:
                with pytest.raises(BadRequest) as raised:
                    tok.tokenize_pair(question, text, truncate=truncate)
                assert raised.value.reason == error.reason
                continue
            assert tok.tokenize_pair(question, text, truncate=truncate).windows == want.windows


def _pair_of_full_encoding(tok: NlpTokenizer, first: str, second: str, truncate: str) -> Tokenization:
    """``tokenize_pair`` as it was before bounded work: both texts tokenized whole."""
    whole = tok.encode_prefix
    try:
        tok.encode_prefix = lambda text, limit: (tok.encode(text), True)  # type: ignore[method-assign]
        return tok.tokenize_pair(first, second, truncate=truncate)
    finally:
        tok.encode_prefix = whole  # type: ignore[method-assign]


def test_a_5_mb_text_costs_about_what_a_512_token_one_does() -> None:
    import time

    tok = bert(max_sequence_length=512)
    sentence = "the capital of france is paris , hello world ! "
    short = sentence * 10  # about 120 tokens
    huge = sentence * (5_000_000 // len(sentence))

    def cost_s(text: str) -> float:
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            tok.tokenize(text)
            best = min(best, time.perf_counter() - began)
        return best

    tokenization = tok.tokenize(huge)
    assert tokenization.truncated and len(tokenization.windows[0]) == 512
    # whole, the 5 MB text takes seconds; truncated it is a few 512-token prefixes' work
    assert cost_s(huge) < 20 * cost_s(short * 5) + 0.05
