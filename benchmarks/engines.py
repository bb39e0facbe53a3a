"""Every CPU engine and precision on the same window batches, in one run: tokens/s, ratio to ONNX
Runtime fp32, and what each changes in the scores (max |p difference|, F1 difference at the card's
threshold, against ONNX Runtime fp32).

Two workloads from the same test documents, scored by every variant in turn (best of ``--repeats``;
the machine is shared, so the ratios measured in this one run are the result):

- ``16x256``: batches of 16 full 256-token windows (the issue's measurement);
- ``filter``: the documents through the shared pipeline with the filter's 1024-padded-token batches
  (``tokfilter.scoring.DEFAULT_MAX_BATCH_TOKENS``), which also gives the F1.

    python benchmarks/engines.py [--model artifacts/models/token_classifier] [--corpus artifacts/corpus] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.training.classifier.check_engine import compare_scores
from tokfilter.engines import BF16_CPU_FLAGS, PRECISIONS, choose_engine, cpu_flags, make_window_scorer, openvino_installed
from tokfilter.training.classifier.train import load_split, sample_docs, score_split
from tokfilter.windows import WindowSequences, load_tokenizer, pad_batch

from interleaved import best_of_interleaved

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REFERENCE = ("onnxruntime", "fp32")
FIXED_BATCH = 16


def variants() -> list[tuple[str, str]]:
    """(engine, precision) pairs this machine can run: bf16 on OpenVINO only with bf16 instructions."""
    out = [("onnxruntime", p) for p in PRECISIONS["onnxruntime"]]
    if openvino_installed():
        bf16 = any(f in cpu_flags() for f in BF16_CPU_FLAGS)
        out += [("openvino", p) for p in PRECISIONS["openvino"] if p != "bf16" or bf16]
    out += [("torch", "fp32"), ("torch", "bf16")]
    return out


def fixed_batches(docs: list[dict], tokenizer, max_length: int, stride: int, max_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches of ``FIXED_BATCH`` full-length windows cut from ``docs``."""
    sequences = WindowSequences.for_tokenizer(tokenizer, max_length, stride)
    full = []
    for enc in tokenizer.encode_batch([d["text"] for d in docs], add_special_tokens=False):
        ids = np.asarray(enc.ids, dtype=np.int64)
        full += [s for s in (sequences.sequence(ids, w) for w in sequences.plan(len(ids))) if len(s) == max_length]
    batches = [pad_batch(full[i:i + FIXED_BATCH]) for i in range(0, len(full) - FIXED_BATCH + 1, FIXED_BATCH)]
    return batches[:max_batches]


def run(model_dir: Path, corpus_dir: Path, split: str, max_docs: int, max_batches: int, repeats: int, threads: int) -> dict:
    docs = sample_docs(load_split(corpus_dir, split), max_docs)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    scorers = {(e, p): make_window_scorer(model_dir, e, p, threads=threads) for e, p in variants()}
    card = scorers[REFERENCE].card
    batches = fixed_batches(docs, tokenizer, card.max_length, card.stride, max_batches)
    if not batches:
        raise SystemExit(f"no {FIXED_BATCH} full {card.max_length}-token windows in {len(docs)} documents: pass more --max-docs")
    fixed_tokens = int(sum(mask.sum() for _, mask in batches))
    doc_tokens = int(sum(len(e.ids) for e in tokenizer.encode_batch([d["text"] for d in docs], add_special_tokens=False)))
    fixed_best, fixed_out = best_of_interleaved(
        {key: lambda s=s: [s(ids, mask) for ids, mask in batches] for key, s in scorers.items()}, repeats)
    filter_best, filter_out = best_of_interleaved(
        {key: lambda s=s: score_split(s, card.max_length, card.stride, tokenizer, docs, card.task) for key, s in scorers.items()},
        repeats)
    labels, reference = filter_out[REFERENCE]
    rows = []
    for key in scorers:
        fixed_diff = max(float(np.max(np.abs(a - b)[mask.astype(bool)] if a.ndim == 2 else np.abs(a - b)))
                         for a, b, (_, mask) in zip(fixed_out[key], fixed_out[REFERENCE], batches))
        parity = compare_scores(labels, reference, filter_out[key][1], card.threshold)
        rows.append({
            "engine": key[0], "precision": key[1],
            "fixed_tokens_per_s": round(fixed_tokens / fixed_best[key], 1),
            "fixed_ratio": round(fixed_best[REFERENCE] / fixed_best[key], 3),
            "filter_tokens_per_s": round(doc_tokens / filter_best[key], 1),
            "filter_ratio": round(filter_best[REFERENCE] / filter_best[key], 3),
            "max_abs_prob_diff": round(max(fixed_diff, parity["max_abs_prob_diff"]), 5),
            "f1": round(parity["f1"], 4), "f1_diff": round(parity["f1_diff"], 4), "parity_passed": parity["passed"],
        })
    flags = cpu_flags()
    return {
        "model_dir": str(model_dir), "task": card.task, "num_layers": card.num_layers, "max_length": card.max_length,
        "split": split, "docs": len(docs), "doc_tokens": doc_tokens, "fixed_batches": len(batches), "fixed_tokens": fixed_tokens,
        "threads": threads, "repeats": repeats, "threshold": card.threshold,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus ({cpu_model()}), shared with other jobs",
        "cpu_bf16_flags": sorted(f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if f in flags),
        "auto_choice": vars(choose_engine(model_dir)), "rows": rows,
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_results(result: dict, name: str = "engines") -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {r['engine']} | {r['precision']} | {r['fixed_tokens_per_s']:.0f} | {r['fixed_ratio']:.2f}x | {r['filter_tokens_per_s']:.0f} "
        f"| {r['filter_ratio']:.2f}x | {r['max_abs_prob_diff']:.4f} | {r['f1']:.4f} | {r['f1_diff']:+.4f} | {'yes' if r['parity_passed'] else 'NO'} |"
        for r in result["rows"])
    auto = result["auto_choice"]
    (RESULTS_DIR / f"{name}.md").write_text(
        f"# CPU engines ({result['task']} model, {result['num_layers']} layers, `{result['model_dir']}`)\n\n"
        f"{result['machine']}; CPU flags: {', '.join(result['cpu_bf16_flags']) or 'none of the bf16/int8 ones'}. "
        f"{result['threads']} threads per engine, best of {result['repeats']}, variants interleaved. "
        f"`16x{result['max_length']}`: {result['fixed_batches']} batches of 16 full {result['max_length']}-token windows ({result['fixed_tokens']} tokens); "
        f"`filter`: {result['docs']} {result['split']} documents ({result['doc_tokens']} tokens) through the shared pipeline "
        f"in 1024-padded-token batches. Differences are against ONNX Runtime fp32; F1 at the card threshold "
        f"{result['threshold']:.3f} on the `filter` workload; parity gate: F1 within 0.005.\n\n"
        f"| engine | precision | 16x{result['max_length']} tokens/s | vs ORT fp32 | filter tokens/s | vs ORT fp32 | max abs p diff | F1 | F1 diff | parity |\n"
        f"|---|---|---|---|---|---|---|---|---|---|\n{rows}\n\n"
        f"`auto` on this machine: **{auto['engine']} {auto['precision']}** ({auto['reason']}).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=paths.TOKEN_MODEL_DIR)
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-docs", type=int, default=150)
    parser.add_argument("--max-batches", type=int, default=8, help="16x256 batches to time (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="engines", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    result = run(args.model, args.corpus, args.split, args.max_docs, args.max_batches, args.repeats, args.threads)
    write_results(result, args.name)
    print((RESULTS_DIR / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
