"""ner: per-token IOB tags averaged over each word, grouped into entities with character offsets.

Long inputs windowed with ``span`` are merged: every token takes its scores from the window in
which it sits farthest from a cut edge, so each token is judged with the most context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import IllegalArgument
from workers.tasks.base import BaseTask, Prepared
from workers.tokenization import Window


@dataclass(frozen=True)
class IobTag:
    tag: str
    entity: str  # "O" for outside

    @staticmethod
    def parse(label: str) -> IobTag:
        upper = label.upper()
        if upper[:2] in ("B-", "I-", "B_", "I_"):
            return IobTag(label, upper[2:])
        if upper == "O":
            return IobTag(label, "O")
        raise IllegalArgument(f"classification label [{label}] is not an entity I-O-B tag.")

    @property
    def is_beginning(self) -> bool:
        return self.tag[:1] in ("b", "B")

    @property
    def is_none(self) -> bool:
        return self.tag in ("o", "O")


@dataclass(frozen=True)
class TaggedWord:
    start: int
    end: int
    tag: IobTag
    score: float


def token_probabilities(
    windows: Sequence[Window], output: np.ndarray, num_labels: int
) -> dict[int, np.ndarray]:
    """Softmax scores per token of the text (by index in its inner tokenization), merged over windows."""
    best: dict[int, tuple[float, np.ndarray]] = {}
    last = len(windows) - 1
    for w, window in enumerate(windows):
        positions = [i for i, seq in enumerate(window.sequence_ids) if seq == 0]
        if not positions:
            continue
        logits = np.asarray(output[w][positions][:, :num_labels], dtype=np.float64)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        count = len(positions)
        for k in range(count):
            left = float(k) if w > 0 else float("inf")
            right = float(count - 1 - k) if w < last else float("inf")
            margin = min(left, right)
            token = window.first_token + k
            if token not in best or margin > best[token][0]:
                best[token] = (margin, probs[k])
    return {token: probs for token, (_, probs) in best.items()}


def tag_words(
    text: str,
    probabilities: Mapping[int, np.ndarray],
    word_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    tags: Sequence[IobTag],
) -> list[TaggedWord]:
    """Average each word's token scores and tag the word with the best label.

    Tokens with no visible text (zero-width or whitespace-only offsets) are left out.
    """
    words: list[TaggedWord] = []
    tokens = [t for t in sorted(probabilities) if text[offsets[t][0] : offsets[t][1]].strip()]
    i = 0
    while i < len(tokens):
        j = i
        while (
            j + 1 < len(tokens)
            and tokens[j + 1] == tokens[j] + 1
            and word_ids[tokens[j + 1]] == word_ids[tokens[i]]
        ):
            j += 1
        scores = np.mean([probabilities[t] for t in tokens[i : j + 1]], axis=0)
        best = int(np.argmax(scores))
        words.append(
            TaggedWord(offsets[tokens[i]][0], offsets[tokens[j]][1], tags[best], float(scores[best]))
        )
        i = j + 1
    return words


def group_entities(words: Sequence[TaggedWord], text: str, lower_case: bool) -> list[dict[str, Any]]:
    """B-X I-X B-X → two entities; the entity score is the mean of its words' scores."""
    entities: list[dict[str, Any]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.tag.is_none:
            i += 1
            continue
        j = i + 1
        total = word.score
        while j < len(words) and not words[j].tag.is_beginning and words[j].tag.entity == word.tag.entity:
            total += words[j].score
            j += 1
        start, end = word.start, words[j - 1].end
        entity_text = text[start:end]
        entities.append(
            {
                "entity": entity_text.lower() if lower_case else entity_text,
                "class_name": word.tag.entity,
                "class_probability": total / (j - i),
                "start_pos": start,
                "end_pos": end,
            }
        )
        i = j
    return entities


def annotated_text(text: str, entities: Sequence[Mapping[str, Any]]) -> str:
    """ "[Elastic](ORG&Elastic) is in [Mountain View](LOC&Mountain+View)"."""
    parts = []
    position = 0
    for entity in entities:
        start, end = int(entity["start_pos"]), int(entity["end_pos"])
        if start < 0:
            continue
        parts.append(text[position:start])
        segment = text[start:end]
        parts.append(f"[{segment}]({entity['class_name']}&{segment.replace(' ', '+')})")
        position = end
    parts.append(text[position:])
    return "".join(parts)


def ner_result(
    text: str,
    windows: Sequence[Window],
    output: np.ndarray,
    word_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    labels: Sequence[str],
    lower_case: bool,
    results_field: str,
    truncated: bool,
) -> dict[str, Any]:
    tags = [IobTag.parse(label) for label in labels]
    probabilities = token_probabilities(windows, output, len(tags))
    words = tag_words(text, probabilities, word_ids, offsets, tags)
    entities = group_entities(words, text, lower_case)
    result: dict[str, Any] = {results_field: annotated_text(text, entities), "entities": entities}
    if truncated:
        result["is_truncated"] = True
    return result


class NerTask(BaseTask):
    name = "ner"

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        inner = prepared.tokenization.inner
        assert inner is not None
        return ner_result(
            prepared.text,
            prepared.rows,
            output,
            inner.word_ids,
            inner.offsets,
            prepared.config["classification_labels"],
            self.tokenizer.settings.do_lower_case,
            prepared.config["results_field"],
            prepared.tokenization.truncated,
        )
