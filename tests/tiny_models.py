"""Tiny Hugging Face models for tests: random weights from fixed seeds, tokenizers built offline.

``build_tiny_model(task_type, tmp_path, tokenizer="bert")`` writes a model folder (config,
weights, tokenizer files) that ``transformers`` and ``inferq.tracing.trace_hf_model`` load the
way they load a hub model. Tokenizers: ``bert`` and ``mpnet`` (WordPiece, a vocabulary written
here), ``roberta`` (byte-level BPE trained here on a small corpus), ``xlm_roberta`` (a Unigram
sentencepiece model trained here with the ``tokenizers`` library).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
CLASSIFICATION_LABELS = ["NEGATIVE", "NEUTRAL", "POSITIVE"]
ZERO_SHOT_LABELS = ["contradiction", "neutral", "entailment"]

WORDS = [
    "the",
    "a",
    "an",
    "is",
    "was",
    "in",
    "of",
    "to",
    "and",
    "for",
    "on",
    "at",
    "by",
    "with",
    "from",
    "as",
    "it",
    "this",
    "that",
    "be",
    "are",
    "were",
    "has",
    "have",
    "elastic",
    "search",
    "paris",
    "france",
    "capital",
    "city",
    "mountain",
    "view",
    "london",
    "berlin",
    "tokyo",
    "new",
    "york",
    "company",
    "headquartered",
    "based",
    "founded",
    "example",
    "sentence",
    "meaning",
    "life",
    "guide",
    "question",
    "answer",
    "what",
    "who",
    "where",
    "when",
    "how",
    "why",
    "hello",
    "world",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "cafe",
    "resume",
    "naive",
    "rain",
    "spain",
    "john",
    "smith",
    "maria",
    "garcia",
    "inferq",
    "model",
    "cluster",
    "inference",
    "text",
    "label",
    "news",
    "sport",
    "politics",
    "music",
    "science",
    "weather",
    "happy",
    "sad",
    "good",
    "bad",
    "great",
    "terrible",
    "love",
    "hate",
    "movie",
    "book",
    "long",
    "short",
    "very",
]
CJK = list("中文日本語東京北京上海你好世界人")
EXTRA_CHARS = list("éèàçüöñ") + ["😀", "🚀"]

CORPUS = [
    "The capital of France is Paris.",
    "Elastic is headquartered in Mountain View, and search is what it does.",
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "John Smith and Maria Garcia were in London, Berlin and Tokyo.",
    "What is the meaning of life? The guide says it is 42.",
    "Café, résumé, naïve: the rain in Spain stays mainly in the plain.",
    "中文 日本語 東京 北京 上海 你好 世界 😀 🚀",
    "inferq is an inference cluster for text models; news, sport, politics, music and science.",
    "I love this movie, it is great. I hate that book, it is terrible and very long.",
] * 3


def _bert_vocab(lowercase: bool) -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list(string.ascii_lowercase) + ([] if lowercase else list(string.ascii_uppercase))
    chars = letters + list(string.digits) + list(string.punctuation) + CJK + EXTRA_CHARS
    pieces = ["##" + c for c in letters + list(string.digits)] + ["##" + c for c in EXTRA_CHARS[:7]]
    words = list(dict.fromkeys(WORDS + ["##s", "##ing", "##ed", "##er"]))
    vocab = specials + list(dict.fromkeys(chars)) + pieces + [w for w in words if w not in chars]
    return list(dict.fromkeys(vocab))


def _mpnet_vocab() -> list[str]:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>"]
    rest = [t for t in _bert_vocab(lowercase=True) if not t.startswith("[")]
    return specials + rest


def _write_wordpiece_tokenizer(folder: Path, kind: str, max_length: int) -> int:
    import transformers

    tokenizer: Any
    if kind == "bert":
        vocab = _bert_vocab(lowercase=True)
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = transformers.BertTokenizerFast(
            vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=max_length
        )
    else:
        vocab = _mpnet_vocab()
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = transformers.MPNetTokenizerFast(
            vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=max_length
        )
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _write_roberta_tokenizer(folder: Path, max_length: int) -> int:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS + WORDS, trainer=trainer)
    tok.model.save(str(folder))  # vocab.json + merges.txt
    import json

    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = transformers.RobertaTokenizerFast(
        vocab_file=str(folder / "vocab.json"),
        merges_file=str(folder / "merges.txt"),
        add_prefix_space=False,
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _write_xlm_roberta_tokenizer(folder: Path, max_length: int) -> int:
    import transformers
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS + WORDS, trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = (
        processors.TemplateProcessing(  # as Hugging Face converts XLM-R's sentencepiece model
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", bos), ("</s>", eos)],
        )
    )
    tokenizer = transformers.XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(str(folder))
    return int(tok.get_vocab_size())


def _model_config(tokenizer: str, vocab_size: int, task_type: str, pad_id: int) -> Any:
    import transformers

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.2,
        "pad_token_id": pad_id,
    }
    if task_type == "ner":
        common["id2label"] = dict(enumerate(NER_LABELS))
        common["label2id"] = {label: i for i, label in enumerate(NER_LABELS)}
    elif task_type == "text_classification":
        common["id2label"] = dict(enumerate(CLASSIFICATION_LABELS))
        common["label2id"] = {label: i for i, label in enumerate(CLASSIFICATION_LABELS)}
    elif task_type == "zero_shot_classification":
        common["id2label"] = dict(enumerate(ZERO_SHOT_LABELS))
        common["label2id"] = {label: i for i, label in enumerate(ZERO_SHOT_LABELS)}
    elif task_type == "text_similarity":
        common["num_labels"] = 1
    if tokenizer == "bert":
        return transformers.BertConfig(max_position_embeddings=512, type_vocab_size=2, **common)
    if tokenizer == "mpnet":
        return transformers.MPNetConfig(max_position_embeddings=514, **common)
    if tokenizer == "roberta":
        return transformers.RobertaConfig(max_position_embeddings=514, type_vocab_size=1, **common)
    if tokenizer == "xlm_roberta":
        return transformers.XLMRobertaConfig(max_position_embeddings=514, type_vocab_size=1, **common)
    raise ValueError(f"unknown tokenizer [{tokenizer}]")


_MODEL_CLASSES = {
    "text_embedding": "AutoModel",
    "pass_through": "AutoModel",
    "fill_mask": "AutoModelForMaskedLM",
    "text_expansion": "AutoModelForMaskedLM",
    "ner": "AutoModelForTokenClassification",
    "text_classification": "AutoModelForSequenceClassification",
    "zero_shot_classification": "AutoModelForSequenceClassification",
    "text_similarity": "AutoModelForSequenceClassification",
    "question_answering": "AutoModelForQuestionAnswering",
}


def write_tokenizer(folder: Path, tokenizer: str, max_length: int = 512) -> int:
    """Write the tokenizer files of a ``tokenizer`` family into ``folder``; return the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer in ("bert", "mpnet"):
        return _write_wordpiece_tokenizer(folder, tokenizer, max_length)
    if tokenizer == "roberta":
        return _write_roberta_tokenizer(folder, max_length)
    if tokenizer == "xlm_roberta":
        return _write_xlm_roberta_tokenizer(folder, max_length)
    raise ValueError(f"unknown tokenizer [{tokenizer}]")


def build_tiny_model(
    task_type: str, tmp_path: Path, tokenizer: str = "bert", *, seed: int = 0, max_length: int = 512
) -> Path:
    """Write a tiny random model for ``task_type`` with a ``tokenizer`` family; return its folder."""
    import torch
    import transformers

    folder = Path(tmp_path) / f"tiny-{tokenizer}-{task_type}-{seed}"
    vocab_size = write_tokenizer(folder, tokenizer, max_length)
    loaded = transformers.AutoTokenizer.from_pretrained(str(folder))
    config = _model_config(tokenizer, vocab_size, task_type, int(loaded.pad_token_id))
    torch.manual_seed(seed)
    model_class = getattr(transformers, _MODEL_CLASSES[task_type])
    model = model_class.from_config(config)
    model.eval()
    model.save_pretrained(str(folder))
    return folder
