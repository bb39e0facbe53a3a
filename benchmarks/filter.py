"""End-to-end throughput of `tokfilter filter`: today's two models against one joint model, and the cascade.

One run, same documents, same machine, for each configuration: the two-model fp32 pipeline
(``--token-model`` + ``--doc-model``, the baseline) and, with ``--joint-model``, the joint model
(one encoder, token and document heads, one pass) on each ``--joint-engines`` ENGINE:PRECISION
(default ONNX Runtime fp32 and int8, OpenVINO bf16; ``tokfilter.engines``):
  * raw: the models alone (in process, on the configuration's engine) on the padded window batches the filter gives
    them (buffers of ``--buffer-docs`` documents, token-budget batches), timed around the model
    calls only: the ceiling for the filter.
  * end to end: ``run_local`` (read JSONL, tokenize, window, batch, models, stitch, project onto
    the target tokenizer, write shards and manifest), model loading included.
  * quality on the same documents: token F1 (labels from ``label_spans``, at the token threshold of
    the card) and document F1 (a document holds a forget passage; at the document threshold: the
    document model's, or the joint model's ``doc_threshold``), so "within 0.01" can be checked.
  * cascade (two models only): end to end with ``--doc-prefilter LOW`` (default: the document
    model card's 95%-recall threshold); token-model compute saved, and the flagged target tokens
    of the full run that the cascade loses (token recall lost). A joint model has no cheaper first
    pass, so no cascade.
Each timing is the best of ``--repeats`` runs, configurations interleaved (the machine is shared).
Goals: end to end >= 0.8x its own raw; joint end to end >= 4x the two-model fp32 end to end with
token and document F1 within 0.01. Writes benchmarks/results/filter.json and .md.
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
from tokfilter.engines import make_window_scorer
from tokfilter.modelcard import load_model_card
from tokfilter.scoring import ScoringPipeline, plan_batches
from tokfilter.training.classifier.train import binary_metrics, document_label, token_labels_from_spans
from tokfilter.windows import pad_batch

RESULTS = Path(__file__).resolve().parent / "results"


def raw_model_seconds(pipeline: ScoringPipeline, texts: list[str], buffer_docs: int) -> float:
    """Seconds spent inside the models' calls (token and document model, or the joint model) on the
    filter's window batches."""
    total = 0.0
    for lo in range(0, len(texts), buffer_docs):
        encoded = pipeline.encode(texts[lo : lo + buffer_docs])
        for model in filter(None, (pipeline.token_model, pipeline.doc_model)):
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


def quality(score, token_threshold: float, docs: list[dict], doc_threshold: float) -> dict:
    """Token and document precision/recall/F1 on labelled ``docs`` of ``score`` (texts -> document
    scores: a pipeline's ``score``, a FilterClient's ``filter``) at the given thresholds."""
    scored = score([d["text"] for d in docs])
    token_labels = np.concatenate([token_labels_from_spans(r.offsets, d["meta"].get("label_spans", [])) for r, d in zip(scored, docs)])
    token = binary_metrics(token_labels, np.concatenate([r.token_probs for r in scored]), token_threshold)
    document = binary_metrics(np.array([document_label(d) for d in docs]), np.array([r.doc_score for r in scored]), doc_threshold)
    return {"token_f1": token["f1"], "token_precision": token["precision"], "token_recall": token["recall"],
            "doc_f1": document["f1"], "doc_precision": document["precision"], "doc_recall": document["recall"]}


def configurations(args: argparse.Namespace) -> dict[str, tuple[FilterSettings, float]]:
    """name -> (filter settings, document threshold): the two-model fp32 baseline first, then the
    joint model at each asked-for precision."""
    base = FilterSettings(token_model=args.token_model, doc_model=args.doc_model, target_tokenizer=args.target_tokenizer,
                          buffer_docs=args.buffer_docs, threads=args.threads, runtime="onnxruntime", precision="fp32")
    configs = {"two models fp32": (base, load_model_card(args.doc_model).threshold)}
    if args.joint_model:
        card = load_model_card(args.joint_model)
        if not card.joint:
            raise SystemExit(f"--joint-model {args.joint_model} is not a joint model (task {card.task!r})")
        for engine_precision in args.joint_engines.split(","):
            engine, _, precision = engine_precision.partition(":")
            configs[f"joint {engine} {precision}"] = (
                replace(base, token_model=args.joint_model, runtime=engine, precision=precision), card.doc_threshold)
    return configs


def pipeline_of(settings: FilterSettings, threads: int | None) -> ScoringPipeline:
    return ScoringPipeline.from_model_dirs(
        settings.token_model, settings.doc_model,
        make_scorer=lambda d: make_window_scorer(d, engine=settings.runtime, precision=settings.precision, threads=threads))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR / "test.jsonl")
    parser.add_argument("--max-docs", type=int, default=300, help="bounded subset of the corpus")
    parser.add_argument("--doc-prefilter", type=float, metavar="LOW",
                        help="cascade cut (default: the document model's 95%%-recall threshold)")
    parser.add_argument("--buffer-docs", type=int, default=FilterSettings.buffer_docs)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--token-model", default=str(paths.TOKEN_MODEL_DIR), help="token model of the two-model baseline")
    parser.add_argument("--doc-model", default=str(paths.DOC_MODEL_DIR), help="document model of the two-model baseline")
    parser.add_argument("--joint-model", default=str(paths.JOINT_MODEL_DIR) if paths.JOINT_MODEL_DIR.is_dir() else None,
                        help=f"joint model to compare (default: {paths.JOINT_MODEL_DIR} if it exists; else the baseline only)")
    parser.add_argument("--joint-engines", default="onnxruntime:fp32,onnxruntime:int8,openvino:bf16",
                        help="comma-separated ENGINE:PRECISION of the joint model (tokfilter.engines; openvino:bf16 needs "
                             "a CPU with bf16 instructions)")
    parser.add_argument("--target-tokenizer", default=FilterSettings.target_tokenizer)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.doc_prefilter is None:
        args.doc_prefilter = load_model_card(args.doc_model).threshold_recall95
    lines = args.corpus.read_text().splitlines()[: args.max_docs]
    docs = [json.loads(line) for line in lines]
    texts = [d["text"] for d in docs]
    configs = configurations(args)
    pipelines = {name: pipeline_of(settings, args.threads) for name, (settings, _) in configs.items()}
    n_tokens = sum(len(e.ids) for e in pipelines["two models fp32"].encode(texts))
    scores = {name: quality(pipelines[name].score, pipelines[name].threshold, docs, doc_threshold) for name, (_, doc_threshold) in configs.items()}
    for pipeline in pipelines.values():
        raw_model_seconds(pipeline, texts[: args.buffer_docs], args.buffer_docs)  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset = tmp / "subset.jsonl"
        subset.write_text("\n".join(lines) + "\n")
        seconds = {name: {"raw": [], "end_to_end": []} for name in configs} | {"cascade": {"end_to_end": []}}
        manifests = {}
        for r in range(args.repeats):
            for i, (name, (settings, _)) in enumerate(configs.items()):
                seconds[name]["raw"].append(raw_model_seconds(pipelines[name], texts, args.buffer_docs))
                start = time.perf_counter()
                manifests[name] = run_local([str(subset)], tmp / f"{i}_{r}", settings, show_progress=False)
                seconds[name]["end_to_end"].append(time.perf_counter() - start)
            start = time.perf_counter()
            cascade = run_local([str(subset)], tmp / f"cascade{r}", replace(configs["two models fp32"][0], doc_prefilter=args.doc_prefilter),
                                show_progress=False)
            seconds["cascade"]["end_to_end"].append(time.perf_counter() - start)
        full = manifests["two models fp32"]
        threshold = full["threshold"]
        full_flags, cascade_flags = flagged_by_doc(tmp / "0_0", threshold), flagged_by_doc(tmp / "cascade0", threshold)
    assert full["counts"]["classifier_tokens"] == n_tokens
    flagged = sum(int(f.sum()) for f in full_flags.values())
    lost = sum(int((f & ~cascade_flags[d]).sum()) for d, f in full_flags.items())
    c = cascade["counts"]
    rows = {}
    for name in configs:
        raw_tps, e2e_tps = n_tokens / min(seconds[name]["raw"]), n_tokens / min(seconds[name]["end_to_end"])
        rows[name] = {"raw_model_tokens_per_s": raw_tps, "end_to_end_tokens_per_s": e2e_tps, "end_to_end_docs_per_s": len(texts) / min(seconds[name]["end_to_end"]),
                      "ratio_end_to_end_to_raw": e2e_tps / raw_tps, **scores[name],
                      "models": {"token": manifests[name]["token_model"], "doc": manifests[name]["doc_model"]}}
    base = rows["two models fp32"]
    for row in rows.values():
        row["end_to_end_speedup_vs_two_models_fp32"] = row["end_to_end_tokens_per_s"] / base["end_to_end_tokens_per_s"]
        row["token_f1_minus_two_models"] = row["token_f1"] - base["token_f1"]
        row["doc_f1_minus_two_models"] = row["doc_f1"] - base["doc_f1"]
    cascade_tps = n_tokens / min(seconds["cascade"]["end_to_end"])
    result = {
        "corpus": str(args.corpus), "docs": len(texts), "classifier_tokens": n_tokens,
        "target_tokens": full["counts"]["tokens"], "buffer_docs": args.buffer_docs, "repeats": args.repeats,
        "configurations": rows, "goals": {"ratio_end_to_end_to_raw": 0.8, "joint_speedup": 4.0, "f1_within": 0.01},
        "seconds": seconds,
        "cascade": {
            "doc_prefilter": args.doc_prefilter, "prefiltered_docs": c["prefiltered_docs"],
            "token_model_compute_saved": 1 - c["token_model_tokens"] / c["classifier_tokens"],
            "end_to_end_tokens_per_s": cascade_tps, "speedup": cascade_tps / base["end_to_end_tokens_per_s"],
            "flagged_target_tokens_full": flagged, "flagged_target_tokens_lost": lost,
            "token_recall_lost": lost / max(flagged, 1),
        },
        "threshold": threshold,
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "filter.json").write_text(json.dumps(result, indent=2) + "\n")
    k = result["cascade"]
    table = [f"| {name} | {row['raw_model_tokens_per_s']:,.0f} | {row['end_to_end_tokens_per_s']:,.0f} | "
             f"{row['ratio_end_to_end_to_raw']:.2f} | {row['end_to_end_speedup_vs_two_models_fp32']:.2f}x | "
             f"{row['token_f1']:.4f} ({row['token_f1_minus_two_models']:+.4f}) | {row['doc_f1']:.4f} ({row['doc_f1_minus_two_models']:+.4f}) |"
             for name, row in rows.items()]
    md = "\n".join([
        "# `tokfilter filter` throughput and quality (in process, on each configuration's engine)", "",
        f"{len(texts)} documents of `{args.corpus}`, {n_tokens} classifier tokens, best of {args.repeats}, configurations "
        f"interleaved; {result['machine']['cpu_count']} cores, shared. Two models: `{args.token_model}` + `{args.doc_model}` "
        f"({load_model_card(args.token_model).num_layers or '?'} layers, max_length {full['token_model']['max_length']})"
        + (f"; joint model: `{args.joint_model}` ({load_model_card(args.joint_model).num_layers or '?'} layers)." if args.joint_model else "."), "",
        "| configuration | raw models tokens/s | end to end tokens/s | end to end / raw (goal >= 0.80) | end to end vs two models fp32 (goal joint >= 4x) "
        "| token F1 (vs two models) | document F1 (vs two models) |",
        "|---|---:|---:|---:|---:|---:|---:|", *table,
        f"| two models, `--doc-prefilter {args.doc_prefilter:.3f}` | | {cascade_tps:,.0f} | | {k['speedup']:.2f}x | | |", "",
        f"Cascade (two models): {k['prefiltered_docs']} of {len(texts)} documents skipped the token model, "
        f"saving {k['token_model_compute_saved']:.1%} of its compute; token recall lost: {k['token_recall_lost']:.2%} "
        f"({lost} of {flagged} flagged target tokens at threshold {threshold:.3f}). F1: token at each model's token "
        "threshold, document at its document threshold (calibrated on validation, not on these documents).", "",
    ])
    (args.out / "filter.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
