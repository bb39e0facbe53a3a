"""int8 vs fp32 ONNX Runtime speed of an exported classifier, with the F1 of each, in one run.

Both precisions score the same test documents through the shared scoring pipeline, alternately,
``--repeats`` times each; the best time of each is kept (the machine is shared: the ratio measured
in one run is the result, absolute tokens/s are only indicative).

    python benchmarks/onnx_int8.py [--model artifacts/models/token_classifier] [--max-docs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from tokfilter import paths
from tokfilter.inference import MODEL_FILES, OnnxWindowScorer
from tokfilter.training.classifier.train import binary_metrics, load_split, sample_docs, score_split
from tokfilter.windows import load_tokenizer

from interleaved import best_of_interleaved

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run(model_dir: Path, corpus_dir: Path, split: str, max_docs: int, repeats: int, threads: int) -> dict:
    docs = sample_docs(load_split(corpus_dir, split), max_docs)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    scorers = {p: OnnxWindowScorer(model_dir, precision=p, threads=threads) for p in MODEL_FILES}
    card = scorers["fp32"].card
    best, outputs = best_of_interleaved(
        {p: lambda s=s: score_split(s, card.max_length, card.stride, tokenizer, docs, card.task) for p, s in scorers.items()}, repeats)
    n_tokens = int(sum(len(e.ids) for e in tokenizer.encode_batch([d["text"] for d in docs], add_special_tokens=False)))
    result = {
        "model_dir": str(model_dir),
        "task": card.task,
        "num_layers": card.num_layers,
        "max_length": card.max_length,
        "split": split,
        "docs": len(docs),
        "tokens": n_tokens,
        "threads": threads,
        "repeats": repeats,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, shared",
        "threshold": card.threshold,
    }
    for precision in MODEL_FILES:
        labels, scores = outputs[precision]
        metrics = binary_metrics(labels, scores, card.threshold)
        result[f"{precision}_seconds"] = round(best[precision], 3)
        result[f"{precision}_tokens_per_s"] = round(n_tokens / best[precision], 1)
        result[f"{precision}_f1"] = round(metrics["f1"], 4)
    result["int8_speedup"] = round(best["fp32"] / best["int8"], 3)
    result["int8_f1_minus_fp32_f1"] = round(result["int8_f1"] - result["fp32_f1"], 4)
    return result


def write_results(result: dict, name: str = "onnx_int8") -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {p} | {result[f'{p}_tokens_per_s']:.0f} | {result[f'{p}_seconds']:.2f} | {result[f'{p}_f1']:.4f} |" for p in MODEL_FILES
    )
    (RESULTS_DIR / f"{name}.md").write_text(
        f"# ONNX Runtime int8 vs fp32 ({result['task']} model, {result['num_layers']} layers)\n\n"
        f"{result['docs']} {result['split']} documents, {result['tokens']} tokens, {result['threads']} threads, "
        f"best of {result['repeats']}; {result['machine']}.\n\n"
        f"| precision | tokens/s | seconds | F1 at threshold {result['threshold']:.3f} |\n|---|---|---|---|\n{rows}\n\n"
        f"**int8 speed-up over fp32: {result['int8_speedup']:.2f}x**, F1 difference {result['int8_f1_minus_fp32_f1']:+.4f}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=paths.TOKEN_MODEL_DIR)
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-docs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = run(args.model, args.corpus, args.split, args.max_docs, args.repeats, args.threads)
    write_results(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
