"""Which exported graph ONNX Runtime runs fastest: the export choice of ``training/classifier/export.py``.

The same token model (the pretrained encoder cut to the default depth, with a fresh head: speed
does not depend on the weights) is exported three ways, each in fp32 and int8:

- ``dynamo, sdpa``: the dynamo exporter on transformers' default SDPA attention (the baseline,
  what tokfilter exported before);
- ``dynamo, eager``: the dynamo exporter on eager attention (matmul, masked add, softmax);
- ``torchscript, eager``: ``export_onnx``, what tokfilter exports now.

Each scores the same test documents through the shared scoring pipeline, interleaved,
``--repeats`` times; the best time of each is kept, and every ratio is against the baseline of
the same run.

    python benchmarks/export_graph.py [--max-docs 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from tokfilter import paths
from tokfilter.inference import MODEL_FILES, OnnxWindowScorer
from tokfilter.modelcard import load_model_card
from tokfilter.training.classifier.export import OPSET, example_inputs, export_onnx, quantize_int8, quiet_exporters
from tokfilter.training.classifier.train import build_model, load_split, sample_docs, score_split
from tokfilter.windows import load_tokenizer

from interleaved import best_of_interleaved

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BASELINE = "dynamo, sdpa"


def export_dynamo(model: torch.nn.Module, path: Path) -> None:
    """The dynamo exporter with dynamic batch and sequence axes (the baseline's export)."""
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=2, max=512)
    with quiet_exporters():
        torch.onnx.export(model.eval(), example_inputs(), str(path), dynamo=True, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                          external_data=False, optimize=True)


def build_variants(card_dir: Path, layers: int, work: Path) -> dict[str, Path]:
    """One model folder per export variant, each with the card and tokenizer of ``card_dir``."""
    def dynamo_eager(model: torch.nn.Module, path: Path) -> None:
        model.model.set_attn_implementation("eager")
        export_dynamo(model, path)

    exports = {BASELINE: export_dynamo, "dynamo, eager": dynamo_eager,
               "torchscript, eager": lambda model, path: export_onnx(model, path, "token")}
    dirs = {}
    for name, export in exports.items():
        model_dir = work / name.replace(", ", "_")
        model_dir.mkdir()
        for file in ("tokfilter.json", "tokenizer.json"):
            shutil.copyfile(card_dir / file, model_dir / file)
        export(build_model("token", layers, seed=0), model_dir / MODEL_FILES["fp32"])
        quantize_int8(model_dir / MODEL_FILES["fp32"], model_dir / MODEL_FILES["int8"])
        dirs[name] = model_dir
        print(f"exported {name}", flush=True)
    return dirs


def run(card_dir: Path, corpus_dir: Path, max_docs: int, repeats: int, threads: int) -> dict:
    card = load_model_card(card_dir)
    docs = sample_docs(load_split(corpus_dir, "test"), max_docs)
    tokenizer = load_tokenizer(card_dir / "tokenizer.json")
    n_tokens = int(sum(len(e.ids) for e in tokenizer.encode_batch([d["text"] for d in docs], add_special_tokens=False)))
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_variants(card_dir, card.num_layers, Path(tmp))
        scorers = {(name, p): OnnxWindowScorer(d, precision=p, threads=threads) for name, d in dirs.items() for p in MODEL_FILES}
        best, scores = best_of_interleaved(
            {key: lambda s=s: score_split(s, card.max_length, card.stride, tokenizer, docs, card.task)[1] for key, s in scorers.items()},
            repeats)
    rows = []
    for (name, precision), seconds in best.items():
        base = best[(BASELINE, precision)]
        rows.append({"export": name, "precision": precision, "seconds": round(seconds, 3),
                     "tokens_per_s": round(n_tokens / seconds, 1), "speedup_over_baseline": round(base / seconds, 3),
                     "max_abs_prob_diff_vs_baseline": float(np.max(np.abs(scores[(name, precision)] - scores[(BASELINE, precision)])))})
    return {"benchmark": "export_graph", "layers": card.num_layers, "max_length": card.max_length, "documents": len(docs),
            "tokens": n_tokens, "threads": threads, "repeats": repeats, "baseline": BASELINE,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, shared", "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# Exported graph vs ONNX Runtime speed (token model, {result['layers']} layers)", "",
             f"{result['documents']} test documents, {result['tokens']} tokens, {result['threads']} threads, best of "
             f"{result['repeats']}; {result['machine']}. Baseline: `{result['baseline']}` of the same precision. "
             "fp32 probabilities differ from the baseline's by rounding; int8 ones also by what the "
             "quantizer finds to quantize in each graph (the int8 F1 of the exported models: engines.md).", "",
             "| export | precision | tokens/s | speed-up | max abs prob diff |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['export']} | {r['precision']} | {r['tokens_per_s']:.0f} | {r['speedup_over_baseline']:.2f}x | "
              f"{r['max_abs_prob_diff_vs_baseline']:.1e} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card-from", type=Path, default=paths.MODELS_DIR / "token_classifier",
                        help="model folder whose card (depth, max_length, stride) and tokenizer the variants use")
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--max-docs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    result = run(args.card_from, args.corpus, args.max_docs, args.repeats, args.threads)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "export_graph.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS_DIR / "export_graph.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
