"""End-to-end throughput of `tokfilter filter` against the raw model, and the cascade's saving.

One run, same documents, same machine:
  * raw: the token and document models alone (in-process ONNX Runtime) on the padded window batches
    the filter gives them (buffers of ``--buffer-docs`` documents, token-budget batches), timed
    around the model calls only: the ceiling for the filter.
  * end to end: ``run_local`` (read JSONL, tokenize, window, batch, both models, stitch, project
    onto the target tokenizer, write shards and manifest), model loading included.
  * cascade: end to end with ``--doc-prefilter LOW`` (default: the document model card's
    95%-recall threshold); token-model compute saved, and the flagged
    target tokens of the full run that the cascade loses (token recall lost).
Each timing is the best of ``--repeats`` runs, raw and end to end interleaved (the machine is shared).
Goal: end to end >= 0.8x raw. Writes benchmarks/results/filter.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.shards.writer import open_shards
from tokfilter.inference import OnnxWindowScorer
from tokfilter.modelcard import load_model_card
from tokfilter.scoring import ScoringPipeline, plan_batches
from tokfilter.windows import pad_batch

RESULTS = Path(__file__).resolve().parent / "results"


def raw_model_seconds(pipeline: ScoringPipeline, texts: list[str], buffer_docs: int) -> float:
    """Seconds spent inside the two models' calls on the filter's window batches."""
    total = 0.0
    for lo in range(0, len(texts), buffer_docs):
        encoded = pipeline.encode(texts[lo : lo + buffer_docs])
        for model in (pipeline.token_model, pipeline.doc_model):
            _, _, sequences = pipeline.window_inputs(model, encoded)
            for batch in plan_batches([len(s) for s in sequences], pipeline.max_batch_tokens, pipeline.max_batch_size):
                ids, mask = pad_batch([sequences[i] for i in batch])
                start = time.perf_counter()
                model.scorer(ids, mask)
                total += time.perf_counter() - start
    return total


def flagged_by_doc(out_dir: Path, threshold: float) -> dict[str, np.ndarray]:
    _, shards = open_shards(out_dir)
    return {d: np.asarray(s.probs[a : a + n], np.float32) >= threshold
            for s in shards for d, a, n in zip(s.doc_ids, s.starts, s.lengths)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR / "test.jsonl")
    parser.add_argument("--max-docs", type=int, default=300, help="bounded subset of the corpus")
    parser.add_argument("--doc-prefilter", type=float, metavar="LOW",
                        help="cascade cut (default: the document model's 95%%-recall threshold)")
    parser.add_argument("--buffer-docs", type=int, default=FilterSettings.buffer_docs)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--token-model", default=FilterSettings.token_model)
    parser.add_argument("--doc-model", default=FilterSettings.doc_model)
    parser.add_argument("--target-tokenizer", default=FilterSettings.target_tokenizer)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.doc_prefilter is None:
        args.doc_prefilter = load_model_card(args.doc_model).threshold_recall95
    lines = args.corpus.read_text().splitlines()[: args.max_docs]
    texts = [json.loads(line)["text"] for line in lines]
    settings = FilterSettings(token_model=args.token_model, doc_model=args.doc_model, target_tokenizer=args.target_tokenizer,
                              buffer_docs=args.buffer_docs, threads=args.threads)
    pipeline = ScoringPipeline.from_model_dirs(
        settings.token_model, settings.doc_model, make_scorer=lambda d: OnnxWindowScorer(d, threads=args.threads))
    n_tokens = sum(len(e.ids) for e in pipeline.encode(texts))
    raw_model_seconds(pipeline, texts[: args.buffer_docs], args.buffer_docs)  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset = tmp / "subset.jsonl"
        subset.write_text("\n".join(lines) + "\n")
        raw_s, e2e_s, cascade_s = [], [], []
        for r in range(args.repeats):
            raw_s.append(raw_model_seconds(pipeline, texts, args.buffer_docs))
            start = time.perf_counter()
            full = run_local([str(subset)], tmp / f"full{r}", settings, show_progress=False)
            e2e_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            cascade = run_local([str(subset)], tmp / f"cascade{r}", replace(settings, doc_prefilter=args.doc_prefilter),
                                show_progress=False)
            cascade_s.append(time.perf_counter() - start)
        threshold = full["threshold"]
        full_flags, cascade_flags = flagged_by_doc(tmp / "full0", threshold), flagged_by_doc(tmp / "cascade0", threshold)
    assert full["counts"]["classifier_tokens"] == n_tokens
    flagged = sum(int(f.sum()) for f in full_flags.values())
    lost = sum(int((f & ~cascade_flags[d]).sum()) for d, f in full_flags.items())
    c = cascade["counts"]
    raw_tps, e2e_tps, cascade_tps = n_tokens / min(raw_s), n_tokens / min(e2e_s), n_tokens / min(cascade_s)
    result = {
        "corpus": str(args.corpus), "docs": len(texts), "classifier_tokens": n_tokens,
        "target_tokens": full["counts"]["tokens"], "buffer_docs": args.buffer_docs, "repeats": args.repeats,
        "raw_model_tokens_per_s": raw_tps, "end_to_end_tokens_per_s": e2e_tps,
        "end_to_end_docs_per_s": len(texts) / min(e2e_s), "ratio_end_to_end_to_raw": e2e_tps / raw_tps, "goal_ratio": 0.8,
        "seconds": {"raw": raw_s, "end_to_end": e2e_s, "cascade": cascade_s},
        "cascade": {
            "doc_prefilter": args.doc_prefilter, "prefiltered_docs": c["prefiltered_docs"],
            "token_model_compute_saved": 1 - c["token_model_tokens"] / c["classifier_tokens"],
            "end_to_end_tokens_per_s": cascade_tps, "speedup": cascade_tps / e2e_tps,
            "flagged_target_tokens_full": flagged, "flagged_target_tokens_lost": lost,
            "token_recall_lost": lost / max(flagged, 1),
        },
        "threshold": threshold, "models": {"token": full["token_model"], "doc": full["doc_model"]},
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "filter.json").write_text(json.dumps(result, indent=2) + "\n")
    k = result["cascade"]
    md = "\n".join([
        "# `tokfilter filter` throughput (in-process ONNX Runtime, fp32)", "",
        f"{len(texts)} documents of `{args.corpus}`, {n_tokens} classifier tokens, best of {args.repeats}; "
        f"{result['machine']['cpu_count']} cores, shared. Models: `{args.token_model}` and `{args.doc_model}` "
        f"({load_model_card(args.token_model).num_layers or '?'} layers, max_length {full['token_model']['max_length']}).", "",
        "| path | classifier tokens/s | ratio to raw |", "|---|---:|---:|",
        f"| raw models (token + document, model calls only) | {raw_tps:,.0f} | 1.00 |",
        f"| `tokfilter filter` end to end | {e2e_tps:,.0f} | {e2e_tps / raw_tps:.2f} (goal >= 0.80) |",
        f"| end to end, `--doc-prefilter {args.doc_prefilter:.3f}` | {cascade_tps:,.0f} | {cascade_tps / raw_tps:.2f} |", "",
        f"Cascade: {k['prefiltered_docs']} of {len(texts)} documents skipped the token model, "
        f"saving {k['token_model_compute_saved']:.1%} of its compute; token recall lost: {k['token_recall_lost']:.2%} "
        f"({lost} of {flagged} flagged target tokens at threshold {threshold:.3f}).", "",
    ])
    (args.out / "filter.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
