"""Build time of the demo corpus (goal: default size < 3 min on the 2-core machine) and the cost of
lexicon matching relative to plain word tokenization of the same text, in one run.

    nice python benchmarks/corpus_build.py [--size default] [--seed 0]

Writes benchmarks/results/corpus_build.{json,md}. The machine is shared: the matcher/tokenizer
ratio is the result; absolute seconds and MB/s are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from tokfilter.training.corpus.build import SPLITS, build_corpus, default_lexicon, load_sources, read_corpus
from tokfilter.training.corpus.weak_labels import WORD

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUILD_GOAL_SECONDS = 180.0


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(size: str, seed: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    load_sources()
    default_lexicon()
    load_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = build_corpus(tmp, seed=seed, size=size)
        build_seconds = time.perf_counter() - t0 + load_seconds  # a cold build also loads the sources
        texts = [doc["text"] for split in SPLITS for doc in read_corpus(Path(tmp) / f"{split}.jsonl")]
    sample = texts[: max(1, len(texts) // 10)]
    megabytes = sum(len(t) for t in sample) / 1e6
    lexicon = default_lexicon()
    tokenize_seconds = _best_of(repeats, lambda: [WORD.findall(t.lower()) for t in sample])
    match_seconds = _best_of(repeats, lambda: [lexicon.matches(t) for t in sample])
    return {
        "size": size,
        "seed": seed,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, shared",
        "docs": manifest["docs"],
        "megabytes": round(manifest["chars"] / 1e6, 2),
        "tokens": manifest["tokens"],
        "medicine_token_share": manifest["medicine_token_share"],
        "mixed_doc_share": manifest["mixed_doc_share"],
        "load_seconds": round(load_seconds, 1),
        "build_seconds_cold": round(build_seconds, 1),
        "build_goal_seconds": BUILD_GOAL_SECONDS,
        "build_within_goal": build_seconds < BUILD_GOAL_SECONDS,
        "match_sample_megabytes": round(megabytes, 2),
        "lexicon_terms": len(lexicon.terms),
        "tokenize_mb_per_s": round(megabytes / tokenize_seconds, 2),
        "match_mb_per_s": round(megabytes / match_seconds, 2),
        "match_over_tokenize_ratio": round(match_seconds / tokenize_seconds, 2),
    }


def write_results(result: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "corpus_build.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["# Corpus build", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in result.items()]
    (RESULTS_DIR / "corpus_build.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run(args.size, args.seed, args.repeats)
    write_results(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
