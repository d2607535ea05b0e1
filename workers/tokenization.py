"""Tokenizers built from an uploaded vocabulary, with Elasticsearch's truncation and span windows.

``build_tokenizer(vocabulary, tokenization)`` turns the vocabulary document that eland uploads
(``{"vocabulary": [...], "merges"?: [...], "scores"?: [...]}``) and the model's normalized
``tokenization`` object (``{"bert": {...}}``) into an ``NlpTokenizer``. The tokenizer then
splits one text, or a pair, into the windows (model rows) Elasticsearch would send to the
native process: truncated to ``max_sequence_length``, or split into overlapping windows when
``truncate`` is ``none`` and ``span`` is set. Offsets are character offsets (Python string
indices) into the original text.

Work is bounded by what is kept: when a text is truncated, only a prefix of it is tokenized,
grown until it yields the tokens the window keeps (``encode_prefix``), so a 5 MB text costs
about what a 512-token one does. Span windows tokenize the whole text (linear in its length).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from shared.errors import BadRequest, IllegalArgument

MODEL_INPUTS_FOUR = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
MODEL_INPUTS_TWO = ("input_ids", "attention_mask")
MODEL_INPUTS_THREE = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class SpecialTokens:
    cls: str
    sep: str
    pad: str
    unk: str
    mask: str
    # How a pair is joined: "bert" → [CLS] a [SEP] b [SEP]; "roberta" → <s> a </s></s> b </s>.
    pair_style: str

    @property
    def single_extra(self) -> int:
        return 2

    @property
    def pair_extra(self) -> int:
        return 3 if self.pair_style == "bert" else 4


_SPECIALS: dict[str, SpecialTokens] = {
    "bert": SpecialTokens("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "bert"),
    "bert_ja": SpecialTokens("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "bert"),
    "deberta_v2": SpecialTokens("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "bert"),
    "mpnet": SpecialTokens("<s>", "</s>", "<pad>", "[UNK]", "<mask>", "roberta"),
    "roberta": SpecialTokens("<s>", "</s>", "<pad>", "<unk>", "<mask>", "roberta"),
    "xlm_roberta": SpecialTokens("<s>", "</s>", "<pad>", "<unk>", "<mask>", "roberta"),
}

# Positional arguments of the traced forward, as eland traces each tokenizer family.
_MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "bert": MODEL_INPUTS_FOUR,
    "bert_ja": MODEL_INPUTS_FOUR,
    "mpnet": MODEL_INPUTS_TWO,
    "roberta": MODEL_INPUTS_TWO,
    "xlm_roberta": MODEL_INPUTS_TWO,
    "deberta_v2": MODEL_INPUTS_THREE,
}

# Byte-level BPE tokens carry their leading space ("Ġ"): offsets are trimmed by Hugging Face's
# RoBERTa post-processor (exactly as RobertaTokenizerFast reports them).
_BYTE_LEVEL_KINDS = ("roberta",)
# Sentencepiece tokens carry theirs as "▁": offsets are trimmed of whitespace, as Elasticsearch's
# tokenizer reports them (Hugging Face keeps the space inside the offsets).
_SENTENCEPIECE_KINDS = ("xlm_roberta", "deberta_v2")

SUPPORTED_TOKENIZERS: tuple[str, ...] = ("bert", "mpnet", "roberta", "xlm_roberta", "deberta_v2")


@dataclass(frozen=True)
class TokenizerSettings:
    kind: str
    do_lower_case: bool = False
    with_special_tokens: bool = True
    max_sequence_length: int = 512
    truncate: str = "first"
    span: int = -1
    add_prefix_space: bool = False

    @staticmethod
    def from_tokenization(tokenization: Mapping[str, Any]) -> TokenizerSettings:
        ((kind, body),) = tokenization.items()
        body = body or {}
        return TokenizerSettings(
            kind=str(kind),
            do_lower_case=bool(body.get("do_lower_case", False)),
            with_special_tokens=bool(body.get("with_special_tokens", True)),
            max_sequence_length=int(body.get("max_sequence_length", 512)),
            truncate=str(body.get("truncate", "first")),
            span=int(body.get("span", -1)),
            add_prefix_space=bool(body.get("add_prefix_space", False)),
        )


@dataclass(frozen=True)
class InnerTokens:
    """One sequence tokenized without special tokens."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int]  # the pre-tokenized word each sub-token came from


@dataclass(frozen=True)
class Window:
    """One model row."""

    input_ids: list[int]
    token_type_ids: list[int]
    sequence_ids: list[int | None]  # 0: first text, 1: second text, None: special token
    offsets: list[tuple[int, int]]  # character offsets into the token's own text; (0, 0) for specials
    span_prev: int  # tokens shared with the previous window (-1 for the first window)
    first_token: int  # index (in the spanned sequence's inner tokens) of this window's first token

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Tokenization:
    windows: list[Window]
    truncated: bool
    # The inner tokens of the windowed sequence (the text, or the second text of a pair).
    inner: InnerTokens | None = None


def _trim_whitespace(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    trimmed = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        trimmed.append((start, end))
    return trimmed


def _vocab_dict(vocabulary: Sequence[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(vocabulary):
        vocab.setdefault(token, i)
    return vocab


def _build_hf_tokenizer(
    kind: str,
    settings: TokenizerSettings,
    vocabulary: Sequence[str],
    merges: Sequence[str] | None,
    scores: Sequence[float] | None,
    specials: SpecialTokens,
) -> Tokenizer:
    vocab = _vocab_dict(vocabulary)
    if kind in ("bert", "mpnet"):
        tok = Tokenizer(models.WordPiece(vocab, unk_token=specials.unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=settings.do_lower_case
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
    elif kind == "roberta":
        if not merges:
            raise IllegalArgument("tokenizer type [roberta] requires [merges] to be provided and non-empty")
        pairs = []
        for merge in merges:
            left, _, right = merge.partition(" ")
            pairs.append((left, right))
        tok = Tokenizer(
            models.BPE(
                vocab,
                pairs,
                unk_token=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=settings.add_prefix_space, use_regex=True
        )
        tok.decoder = decoders.ByteLevel()
    elif kind in ("xlm_roberta", "deberta_v2"):
        if not scores or len(scores) != len(vocabulary):
            raise IllegalArgument(
                f"tokenizer type [{kind}] requires [scores] of the same length as [vocabulary]"
            )
        unk_id = vocab.get(specials.unk, 0)
        tok = Tokenizer(models.Unigram([(t, float(s)) for t, s in zip(vocabulary, scores)], unk_id, False))
        steps: list[normalizers.Normalizer] = [normalizers.NFKC()]
        if settings.do_lower_case:
            steps.append(normalizers.Lowercase())
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    else:
        raise IllegalArgument(f"unknown tokenization type [{kind}]")
    if kind in _BYTE_LEVEL_KINDS and specials.cls in vocab and specials.sep in vocab:
        # Only used to trim the space a byte-level token carries ("Ġ") out of its offsets, exactly
        # as Hugging Face's RoBERTa post-processor does; see ``NlpTokenizer.encode``.
        tok.post_processor = processors.RobertaProcessing(
            sep=(specials.sep, vocab[specials.sep]),
            cls=(specials.cls, vocab[specials.cls]),
            trim_offsets=True,
            add_prefix_space=settings.add_prefix_space,
        )
    present = [
        t for t in (specials.cls, specials.sep, specials.pad, specials.unk, specials.mask) if t in vocab
    ]
    tok.add_special_tokens(
        [
            AddedToken(
                t,
                special=True,
                normalized=False,
                lstrip=(t == specials.mask and specials.pair_style == "roberta"),
            )
            for t in present
        ]
    )
    return tok


class NlpTokenizer:
    """A tokenizer for one model: vocabulary and model-level settings fixed at construction."""

    def __init__(
        self,
        settings: TokenizerSettings,
        vocabulary: Sequence[str],
        *,
        merges: Sequence[str] | None = None,
        scores: Sequence[float] | None = None,
    ) -> None:
        if settings.kind not in SUPPORTED_TOKENIZERS:
            raise IllegalArgument(f"unknown tokenization type [{settings.kind}]")
        self.settings = settings
        self.kind = settings.kind
        self.specials = _SPECIALS[settings.kind]
        self.vocabulary = list(vocabulary)
        self._vocab = _vocab_dict(self.vocabulary)
        self._tokenizer = _build_hf_tokenizer(
            settings.kind, settings, self.vocabulary, merges, scores, self.specials
        )
        self.model_inputs = _MODEL_INPUTS[settings.kind]
        self._trims_offsets = self._tokenizer.post_processor is not None
        self.cls_id = self._required_id(self.specials.cls)
        self.sep_id = self._required_id(self.specials.sep)
        self.pad_id = self._vocab.get(self.specials.pad, 0)
        self.mask_id = self._vocab.get(self.specials.mask)
        self.mask_token = self.specials.mask

    def _required_id(self, token: str) -> int:
        if token not in self._vocab:
            if self.settings.with_special_tokens:
                raise IllegalArgument(f"The vocabulary does not contain the special token [{token}]")
            return -1
        return self._vocab[token]

    def id_to_token(self, token_id: int) -> str:
        return self.vocabulary[token_id]

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=False))

    # ---- inner tokenization ----------------------------------------------------------------------

    def encode(self, text: str) -> InnerTokens:
        if self._trims_offsets:
            # encode with the (offset trimming) post-processor, then drop its two special tokens
            encoding = self._tokenizer.encode(text, add_special_tokens=True)
            ids = list(encoding.ids[1:-1])
            offsets = [(int(o[0]), int(o[1])) for o in encoding.offsets[1:-1]]
            raw_words = list(encoding.word_ids[1:-1])
        else:
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
            ids = list(encoding.ids)
            offsets = [(int(o[0]), int(o[1])) for o in encoding.offsets]
            raw_words = list(encoding.word_ids)
        if self.kind in _SENTENCEPIECE_KINDS:
            offsets = _trim_whitespace(text, offsets)
        word_ids: list[int] = []
        next_word = 0
        last_raw: int | None = None
        for raw in raw_words:
            # Renumber so that every token outside a word (added tokens) is its own word.
            if raw is None or raw != last_raw:
                next_word += 1
            word_ids.append(next_word)
            last_raw = raw
        return InnerTokens(ids=ids, offsets=offsets, word_ids=word_ids)

    def encode_prefix(self, text: str, limit: int) -> tuple[InnerTokens, bool]:
        """``(tokens, whole)``: the whole text's tokens (``whole``), or those of a prefix whose first
        ``limit + 1`` tokens are exactly the whole text's (so the text has more than ``limit``).

        A cut inside the text only changes the tokens of the word it cuts (normalizers and
        pre-tokenizers of every supported family work word by word), so a prefix is long enough
        once a token after the first ``limit`` belongs to an earlier word than its last one. The
        prefix starts at a few characters per token and doubles: at most about twice the work
        of the kept tokens, or of the whole text when its words are very long.
        """
        chars = 8 * (limit + 1) + 64
        while chars < len(text):
            inner = self.encode(text[:chars])
            if len(inner.ids) > limit + 1 and inner.word_ids[limit] != inner.word_ids[-1]:
                return inner, False
            chars *= 2
        return self.encode(text), True

    # ---- single sequence -------------------------------------------------------------------------

    def _single_window(self, inner: InnerTokens, start: int, end: int, span_prev: int) -> Window:
        ids = inner.ids[start:end]
        offsets = inner.offsets[start:end]
        if self.settings.with_special_tokens:
            input_ids = [self.cls_id, *ids, self.sep_id]
            seq_ids: list[int | None] = [None, *([0] * len(ids)), None]
            offs = [(0, 0), *offsets, (0, 0)]
        else:
            input_ids = list(ids)
            seq_ids = [0] * len(ids)
            offs = list(offsets)
        return Window(
            input_ids=input_ids,
            token_type_ids=[0] * len(input_ids),
            sequence_ids=seq_ids,
            offsets=offs,
            span_prev=span_prev,
            first_token=start,
        )

    def tokenize(self, text: str, *, truncate: str | None = None, span: int | None = None) -> Tokenization:
        truncate = self.settings.truncate if truncate is None else truncate
        span = self.settings.span if span is None else span
        max_len = self.settings.max_sequence_length
        extra = self.specials.single_extra if self.settings.with_special_tokens else 0
        room = max_len - extra
        # truncating: tokenize no more than the window keeps (n is exact up to room + 1)
        inner = self.encode_prefix(text, max(room, 0))[0] if truncate != "none" else self.encode(text)
        n = len(inner.ids)
        num_tokens = n + extra
        if num_tokens <= max_len:
            return Tokenization([self._single_window(inner, 0, n, -1)], truncated=False, inner=inner)
        if truncate != "none":
            return Tokenization(
                [self._single_window(inner, 0, max(room, 0), -1)], truncated=True, inner=inner
            )
        if span == -1:
            raise BadRequest(
                f"Input too large. The tokenized input length [{num_tokens}] exceeds the maximum sequence "
                f"length [{max_len}]"
            )
        if room <= 0:
            raise IllegalArgument(f"[max_sequence_length] [{max_len}] leaves no room for tokens")
        windows: list[Window] = []
        words = inner.word_ids
        split_start = 0
        split_end = 0
        span_prev = -1
        while split_end < n:
            split_end = min(split_start + room, n)
            if split_end != n:  # do not end inside a word
                while split_end > split_start + 1 and words[split_end] == words[split_end - 1]:
                    split_end -= 1
            windows.append(self._single_window(inner, split_start, split_end, span_prev))
            span_prev = span
            prev_start = split_start
            split_start = split_end - span
            if split_start <= prev_start:
                split_start = prev_start + 1  # always make progress
                span_prev = split_end - split_start
            if split_start < n:  # start on a word boundary
                while split_start > prev_start + 1 and words[split_start] == words[split_start - 1]:
                    split_start -= 1
                    span_prev += 1
        return Tokenization(windows, truncated=False, inner=inner)

    # ---- sequence pairs --------------------------------------------------------------------------

    def _pair_window(
        self, first: InnerTokens, f_end: int, second: InnerTokens, s_start: int, s_end: int, span_prev: int
    ) -> Window:
        a_ids, a_offs = first.ids[:f_end], first.offsets[:f_end]
        b_ids, b_offs = second.ids[s_start:s_end], second.offsets[s_start:s_end]
        if self.specials.pair_style == "bert":
            input_ids = [self.cls_id, *a_ids, self.sep_id, *b_ids, self.sep_id]
            types = [0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1)
            seq_ids: list[int | None] = [None, *([0] * len(a_ids)), None, *([1] * len(b_ids)), None]
            offs = [(0, 0), *a_offs, (0, 0), *b_offs, (0, 0)]
        else:
            input_ids = [self.cls_id, *a_ids, self.sep_id, self.sep_id, *b_ids, self.sep_id]
            types = [0] * len(input_ids)
            seq_ids = [None, *([0] * len(a_ids)), None, None, *([1] * len(b_ids)), None]
            offs = [(0, 0), *a_offs, (0, 0), (0, 0), *b_offs, (0, 0)]
        return Window(
            input_ids=input_ids,
            token_type_ids=types,
            sequence_ids=seq_ids,
            offsets=offs,
            span_prev=span_prev,
            first_token=s_start,
        )

    def tokenize_pair(
        self, first_text: str, second_text: str, *, truncate: str | None = None, span: int | None = None
    ) -> Tokenization:
        """Tokenize a pair; long pairs are truncated, or windowed over the second text when spanning."""
        truncate = self.settings.truncate if truncate is None else truncate
        span = self.settings.span if span is None else span
        if not self.settings.with_special_tokens:
            raise IllegalArgument("Unable to do sequence pair tokenization without special tokens")
        max_len = self.settings.max_sequence_length
        extra = self.specials.pair_extra
        cap = max(max_len - extra, 0)
        if span < 0 and truncate in ("first", "second", "balanced"):
            # truncating: each count is exact up to cap + 1, enough for every decision below
            (first, whole_first), (second, whole_second) = (
                self.encode_prefix(first_text, cap), self.encode_prefix(second_text, cap)
            )
        else:
            first, whole_first = self.encode(first_text), True
            second, whole_second = self.encode(second_text), True
        n1, n2 = len(first.ids), len(second.ids)
        num_tokens = n1 + n2 + extra
        truncated = False
        if num_tokens > max_len and span < 0:
            if truncate == "first":
                if n2 > max_len - extra:
                    n2 = n2 if whole_second else len(self.encode(second_text).ids)  # the message says how long
                    raise BadRequest(
                        "Attempting truncation [first] but input is too large for the second sequence. "
                        f"The tokenized input length [{n2}] exceeds the maximum sequence length "
                        f"[{max_len - extra}], when taking special tokens into account"
                    )
                n1 = max_len - extra - n2
            elif truncate == "second":
                if n1 > max_len - extra:
                    n1 = n1 if whole_first else len(self.encode(first_text).ids)
                    raise BadRequest(
                        "Attempting truncation [second] but input is too large for the first sequence. "
                        f"The tokenized input length [{n1}] exceeds the maximum sequence length "
                        f"[{max_len - extra}], when taking special tokens into account"
                    )
                n2 = max_len - extra - n1
            elif truncate == "balanced":
                half = (max_len - extra) // 2
                if n2 > half:
                    n1 = min(n1, half)
                else:
                    n1 = min(n1, max_len - n2 - extra)
                n2 = min(n2, max_len - n1 - extra)
            else:
                raise BadRequest(
                    f"Input too large. The tokenized input length [{num_tokens}] exceeds the maximum "
                    f"sequence length [{max_len}]"
                )
            truncated = True
        if truncated or num_tokens <= max_len:
            return Tokenization(
                [self._pair_window(first, n1, second, 0, n2, -1)], truncated=truncated, inner=second
            )

        room = max_len - extra - n1
        if room <= 0:
            raise IllegalArgument(
                f"Unable to do sequence pair tokenization: the first sequence [{n1 + extra} tokens] "
                f"is longer than the max sequence length [{max_len} tokens]"
            )
        if span > room:
            raise IllegalArgument(
                "Unable to do sequence pair tokenization: the combined first sequence, span length and "
                f"delimiting tokens [{n1} + {span} + {extra} = {n1 + span + extra} tokens] is longer than "
                f"the max sequence length [{max_len} tokens]. Reduce the size of the [span] window."
            )
        windows: list[Window] = []
        words = second.word_ids
        split_start = 0
        split_end = 0
        span_prev = -1
        while split_end < n2:
            split_end = min(split_start + room, n2)
            if split_end != n2:
                while split_end > split_start + 1 and words[split_end] == words[split_end - 1]:
                    split_end -= 1
            windows.append(self._pair_window(first, n1, second, split_start, split_end, span_prev))
            span_prev = span
            prev_start = split_start
            split_start = split_end - span
            if split_start <= prev_start:
                raise IllegalArgument(
                    "Tokenization cannot be satisfied with the current span setting. "
                    "Consider decreasing the span setting"
                )
            if split_start < n2:
                while split_start > prev_start + 1 and words[split_start] == words[split_start - 1]:
                    split_start -= 1
                    span_prev += 1
        return Tokenization(windows, truncated=False, inner=second)


def build_tokenizer(vocabulary: Mapping[str, Any], tokenization: Mapping[str, Any]) -> NlpTokenizer:
    """An ``NlpTokenizer`` from the uploaded vocabulary document and a normalized tokenization object."""
    settings = TokenizerSettings.from_tokenization(tokenization)
    words = vocabulary.get("vocabulary") or []
    if not words:
        raise IllegalArgument("[vocabulary] must not be empty")
    return NlpTokenizer(
        settings,
        [str(w) for w in words],
        merges=vocabulary.get("merges"),
        scores=vocabulary.get("scores"),
    )
