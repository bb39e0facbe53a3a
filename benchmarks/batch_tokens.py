"""Padded tokens per ONNX Runtime call on a CPU: the choice of
``tokfilter.scoring.DEFAULT_MAX_BATCH_TOKENS``.

The same documents as ``benchmarks/serve.py`` (short test documents and long ones made of ten)
go through the in-process scoring pipeline (token and document model) with each budget of padded
tokens per call, in fp32 and int8, interleaved, ``--repeats`` times; the best time of each is
kept. Speed-ups are against 8192 tokens per call (tokfilter's budget before this benchmark) of the
same precision. The last column is how far the probabilities move when only the budget changes:
fp32 ones do not (padding is masked); int8 ones do, because dynamic quantization takes one
activation scale per tensor of a call, which spans the whole batch.

    python benchmarks/batch_tokens.py [--docs 64] [--budgets 512,1024,2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.inference import MODEL_FILES, OnnxWindowScorer
from tokfilter.scoring import DEFAULT_MAX_BATCH_TOKENS, ScoringPipeline

from interleaved import best_of_interleaved
from serve import benchmark_texts

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BASELINE_BUDGET = 8192


def run(models_dir: Path, corpus_dir: Path, n_docs: int, budgets: list[int], repeats: int, threads: int) -> dict:
    texts = benchmark_texts(corpus_dir, n_docs)
    token_dir, doc_dir = models_dir / "token_classifier", models_dir / "doc_classifier"
    scorers = {(p, d): OnnxWindowScorer(d, precision=p, threads=threads) for p in MODEL_FILES for d in (token_dir, doc_dir)}
    pipelines = {(p, b): ScoringPipeline.from_model_dirs(token_dir, doc_dir, make_scorer=lambda d, p=p: scorers[(p, d)], max_batch_tokens=b)
                 for p in MODEL_FILES for b in budgets}
    n_tokens = int(sum(len(e.ids) for e in pipelines[("fp32", BASELINE_BUDGET)].encode(texts)))
    best, scored = best_of_interleaved({key: lambda p=p: p.score(texts) for key, p in pipelines.items()}, repeats)
    probs = {key: np.concatenate([np.append(s.token_probs, s.doc_score) for s in docs]) for key, docs in scored.items()}
    rows = []
    for (precision, budget), seconds in best.items():
        baseline = (precision, BASELINE_BUDGET)
        rows.append({"precision": precision, "max_batch_tokens": budget, "seconds": round(seconds, 3),
                     "tokens_per_s": round(n_tokens / seconds, 1), "speedup_over_baseline": round(best[baseline] / seconds, 3),
                     "max_abs_prob_diff_vs_baseline": float(np.max(np.abs(probs[(precision, budget)] - probs[baseline])))})
    return {"benchmark": "batch_tokens", "models_dir": str(models_dir), "documents": len(texts), "tokens": n_tokens,
            "threads": threads, "repeats": repeats, "baseline_budget": BASELINE_BUDGET, "default": DEFAULT_MAX_BATCH_TOKENS,
            "machine": {"platform": f"{platform.machine()} {os.cpu_count()} cpus, shared", "load_avg_end": list(os.getloadavg())},
            "rows": rows}


def markdown(result: dict) -> str:
    lines = ["# Padded tokens per ONNX Runtime call on a CPU (benchmarks/batch_tokens.py)", "",
             f"{result['documents']} documents, {result['tokens']} tokens, token and document model in process, "
             f"{result['threads']} threads, best of {result['repeats']}; {result['machine']['platform']}. "
             f"Speed-up and probability difference: against {result['baseline_budget']} tokens per call of the same precision. "
             f"tokfilter's default now: {result['default']}. fp32 scores do not depend on the batching; int8 ones do "
             "(dynamic quantization takes one activation scale per tensor of a call).", "",
             "| precision | max_batch_tokens | tokens/s | speed-up | max abs prob diff |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['precision']} | {r['max_batch_tokens']} | {r['tokens_per_s']:.0f} | {r['speedup_over_baseline']:.2f}x | "
              f"{r['max_abs_prob_diff_vs_baseline']:.1e} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--budgets", default="512,1024,2048", help=f"comma-separated ({BASELINE_BUDGET}, the baseline, is always added)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    budgets = sorted({int(b) for b in args.budgets.split(",")} | {BASELINE_BUDGET})
    result = run(args.models_dir, args.corpus, args.docs, budgets, args.repeats, args.threads)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "batch_tokens.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS_DIR / "batch_tokens.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
