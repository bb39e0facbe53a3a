"""Held-out MEDLINE abstracts: how much research biology a model calls medicine, beside research medicine.

The real-text benchmark's biology is a textbook; users' biology is also research prose. MEDLINE
abstracts of the corpus's test split (its item hash: never trained on by a model of the default
build) are given a side by the regression of the labelled items (training/corpus/passage_domains.py:
medicine at P >= 0.8, biology at <= 0.2) and scored whole, a seeded sample per side. The sides are
a regression's, not a reader's, so compare models in one run rather than read the shares as truths.

    python benchmarks/medline_heldout.py --model NAME=DIR [--model NAME=DIR ...] [--per-side 200]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.scoring import ScoringPipeline
from tokfilter.training.corpus import sources
from tokfilter.training.corpus.build import assign_splits, load_labelled_sources
from tokfilter.training.corpus.domains import FORGET, RETAIN
from tokfilter.training.corpus.passage_domains import sided_items

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def heldout_abstracts(per_side: int, seed: int = 0) -> dict[str, list[str]]:
    """A seeded sample of test-split abstracts per side (an abstract shares no term, definition or
    group with another item, so its split is the one build-corpus gives it)."""
    items, _, _ = load_labelled_sources()
    abstracts, _ = sources.load_medline_abstracts()
    split_of = assign_splits(abstracts, seed)
    test = [a for a in abstracts if split_of[a.item_id] == "test"]
    sides: dict[str, list[str]] = {FORGET: [], RETAIN: []}
    for abstract, side in sided_items(items, test):
        sides[side].append(abstract.definition)
    rng = random.Random(seed)
    return {side: rng.sample(texts, min(per_side, len(texts))) for side, texts in sides.items()}


def flagged_share(pipeline: ScoringPipeline, texts: list[str]) -> float:
    """Share of the classifier's tokens at or above the card threshold, over all texts (as
    real_text.py counts a domain's flagged share)."""
    probs = np.concatenate([s.token_probs for s in pipeline.score(texts)])
    return float(np.mean(probs >= pipeline.threshold))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", metavar="NAME=DIR",
                        help=f"token or joint model, repeatable (default default={paths.JOINT_MODEL_DIR})")
    parser.add_argument("--per-side", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    texts = heldout_abstracts(args.per_side)
    rows = {}
    for spec in args.model or [f"default={paths.JOINT_MODEL_DIR}"]:
        name, _, model_dir = spec.partition("=")
        pipeline = ScoringPipeline.from_model_dirs(Path(model_dir), None)
        rows[name] = {"model": model_dir, **{side: flagged_share(pipeline, t) for side, t in texts.items()}}
        print(f"{name}: medicine {rows[name]['medicine']:.1%}, biology {rows[name]['biology']:.1%}", flush=True)
    result = {"benchmark": "medline_heldout", "abstracts_per_side": {s: len(t) for s, t in texts.items()}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "medline_heldout.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Held-out MEDLINE abstracts (benchmarks/medline_heldout.py)", "",
             f"Test-split abstracts, {args.per_side} per side (sides from the labelled-item regression); "
             "flagged share of the classifier's tokens at the card threshold.", "",
             "| model | medicine-side abstracts | biology-side abstracts |", "|---|---:|---:|"]
    lines += [f"| `{n}` | {r['medicine']:.1%} | {r['biology']:.1%} |" for n, r in rows.items()]
    (args.out / "medline_heldout.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
