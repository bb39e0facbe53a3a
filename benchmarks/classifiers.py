"""The default classifier, timed and scored: what issues 2 and 12 ask of it, measured in one run.

Trains the joint classifier (one encoder, token and document heads: what `make demo` trains) with
the default configuration through the `tokfilter train-classifier` command a user would type
(training, calibration on validation, ONNX fp32 + int8 export), timing the whole command; then
scores the held-out test split with `tokfilter eval-classifier` in fp32 and in int8. Goals:
training <= 20 minutes on 2 cores, token F1 >= 0.95 on the test split, document F1 >= 0.90, int8
F1 within 0.01 of fp32.

    python benchmarks/classifiers.py [--models-dir artifacts/models] [--corpus artifacts/corpus] [--real-text DIR]

With ``--real-text`` (the shared realtext passages; skipped with a message when missing) the
model's F1 on mixed real documents (benchmarks/real_text.py, test split) is reported beside the
test-split F1: the synthetic split alone overstates what the model finds in real prose.

A model already in ``--models-dir`` is kept and not timed again unless ``--retrain`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokfilter import paths
from tokfilter.modelcard import load_model_card
from tokfilter.scoring import ScoringPipeline

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOALS = {"train_minutes_max": 20.0, "token_f1_min": 0.95, "doc_f1_min": 0.90, "int8_f1_gap_max": 0.01}
TASK, MODEL_NAME = "joint", "joint_classifier"


def tokfilter_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "tokfilter.cli", *argv]


def train_timed(task: str, corpus: Path, model_dir: Path) -> float:
    """Run `tokfilter train-classifier` with its defaults; wall seconds of the whole command."""
    started = time.perf_counter()
    subprocess.run(tokfilter_command("train-classifier", "--task", task, "--corpus", str(corpus), "--out", str(model_dir)),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def evaluate(corpus: Path, model_dir: Path, precision: str, out_dir: Path) -> dict:
    """`tokfilter eval-classifier` on the test split: token scores and the document head's."""
    reply = subprocess.run(
        tokfilter_command("eval-classifier", "--json", "--corpus", str(corpus), "--precision", precision, "--out", str(out_dir),
                          "--token-model", str(model_dir)),
        check=True, capture_output=True, text=True,
    )
    return json.loads(reply.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    model_dir = args.models_dir / MODEL_NAME
    if args.retrain and model_dir.exists():
        shutil.rmtree(model_dir)
    train_seconds = None
    if (model_dir / "model.int8.onnx").is_file():
        print(f"{MODEL_NAME}: kept the model in {model_dir} (not timed; --retrain to retrain)", flush=True)
    else:
        print(f"training {MODEL_NAME} with the default configuration ...", flush=True)
        train_seconds = round(train_timed(TASK, args.corpus, model_dir), 1)
        print(f"  {train_seconds / 60:.1f} min", flush=True)
    with tempfile.TemporaryDirectory() as scratch:  # eval-classifier writes pr_curve.png; the fp32 one is kept
        metrics = {p: evaluate(args.corpus, model_dir, p, Path(scratch) / p) for p in ("fp32", "int8")}
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(scratch) / "fp32" / "pr_curve.png", args.out / "classifiers_pr_curve.png")
    real_text = mixed_real_documents(model_dir, args.real_text, args.corpus) if args.real_text else None
    card = load_model_card(model_dir)
    fp32, int8 = metrics["fp32"], metrics["int8"]
    minutes = None if train_seconds is None else train_seconds / 60
    goals = {
        "train_minutes<=20": None if minutes is None else minutes <= GOALS["train_minutes_max"],
        "token_f1>=0.95": fp32["token_f1"] >= GOALS["token_f1_min"],
        "doc_f1>=0.90": fp32["doc_f1"] >= GOALS["doc_f1_min"],
        "int8_token_f1_within_0.01": abs(int8["token_f1"] - fp32["token_f1"]) <= GOALS["int8_f1_gap_max"],
        "int8_doc_f1_within_0.01": abs(int8["doc_f1"] - fp32["doc_f1"]) <= GOALS["int8_f1_gap_max"],
    }
    return {
        "benchmark": "classifiers", "corpus": str(args.corpus), "model_dir": str(model_dir),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_avg_end": list(os.getloadavg()),
        "train_seconds": train_seconds, "train_minutes": None if minutes is None else round(minutes, 2),
        "train_config": card.extra.get("train_config"), "train": card.metrics.get("train"),
        "validation": card.metrics, "test_fp32": fp32, "test_int8": int8, "real_text_mixed": real_text, "goals": goals,
    }


def mixed_real_documents(token_dir: Path, data_dir: Path, corpus: Path) -> dict | None:
    """Token metrics on the mixed real documents of benchmarks/real_text.py (test split, less those
    sharing text with the training corpus); None without the data."""
    from real_text import DOMAINS, load_passages, load_sentence_labels, mixed_metrics, unseen_mixed_documents

    if not all((data_dir / f"{d}.jsonl").is_file() for d in DOMAINS):
        print(f"real text data not found in {data_dir}: mixed real-document F1 not measured", flush=True)
        return None
    _, mixed, _ = unseen_mixed_documents(load_passages(data_dir, "test"), [corpus])
    metrics, _ = mixed_metrics(ScoringPipeline.from_model_dirs(token_dir), mixed, load_sentence_labels())
    return {"data": str(data_dir), **{k: metrics[k] for k in ("mixed_docs", "mixed_token_precision", "mixed_token_recall",
                                                               "mixed_token_f1", "mixed_token_auroc", "context_ratio")},
            "sentence_labelled": metrics["sentence_labelled"]}


def markdown(result: dict) -> str:
    fp32, int8, cfg = result["test_fp32"], result["test_int8"], result["train_config"]
    precision = result["train"].get("train_precision", "fp32")  # cards before --precision trained in fp32
    timing = (f"{result['train_minutes']:.1f} min ({result['train']['train_windows_per_s']:.1f} windows/s while training, {precision})"
              if result["train_minutes"] is not None else "not timed in this run (the model was kept)")
    rows = [
        ("token precision", "token_precision"), ("token recall", "token_recall"), ("token F1", "token_f1"),
        ("token AUROC", "token_auroc"), ("token F1, class-balanced", "token_f1_balanced"),
        ("flagged token fraction", "flagged_fraction"), ("document precision", "doc_precision"),
        ("document recall", "doc_recall"), ("document F1", "doc_f1"),
        ("document recall at the 95%-recall threshold", "doc_recall_at_threshold_recall95"),
        ("document precision at the 95%-recall threshold", "doc_precision_at_threshold_recall95"),
    ]
    lines = [
        "# Default classifier: training time and test-split metrics (benchmarks/classifiers.py)", "",
        f"Corpus `{result['corpus']}`; {result['machine']}. Training (the `tokfilter train-classifier --task joint` command: "
        f"fine-tuning, calibration on validation, ONNX fp32 + int8 export): **{timing}**. Joint model (one encoder, "
        f"token and document heads): {cfg['layers']} layers, {cfg['max_steps']} steps of {cfg['batch_size']} windows.", "",
        f"Test split, {fp32['n_docs']} documents, {fp32['n_tokens']:,} tokens ({fp32['positive_token_fraction']:.1%} "
        f"positive), at the saved thresholds (token {fp32['threshold']:.3f}, document {fp32['doc_threshold']:.3f}; "
        "best F1 on validation; document scores from the document head):", "",
        "| metric | fp32 | int8 |", "|---|---:|---:|",
    ]
    lines += [f"| {label} | {fp32[key]:.4f} | {int8[key]:.4f} |" for label, key in rows]
    real = result.get("real_text_mixed")
    if real:
        lines += ["", f"Mixed real documents ([real_text.md](real_text.md), test split: {real['mixed_docs']} real biology and "
                  f"general paragraphs with 1-2 real medical sentences inserted), fp32: token F1 **{real['mixed_token_f1']:.4f}** "
                  f"(precision {real['mixed_token_precision']:.4f}, recall {real['mixed_token_recall']:.4f}, AUROC "
                  f"{real['mixed_token_auroc']:.4f}, context ratio {real['context_ratio']:.3f}) beside the test split's "
                  f"{fp32['token_f1']:.4f}."]
        labelled = real.get("sentence_labelled", {})
        if labelled.get("available"):
            lines += ["", f"With the sentence labels (only the inserted sentences that read as medicine alone are positives; "
                      f"benchmarks/data/realtext_sentence_labels.md): token F1 **{labelled['token_f1']:.4f}** (precision "
                      f"{labelled['token_precision']:.4f}, recall {labelled['token_recall']:.4f}, AUROC {labelled['token_auroc']:.4f}, "
                      f"context ratio {labelled['context_ratio']:.3f})."]
    lines += ["", "| goal | met |", "|---|:-:|"]
    lines += [f"| {goal} | {'n/a' if met is None else 'yes' if met else 'no'} |" for goal, met in result["goals"].items()]
    lines += ["", "![precision-recall](classifiers_pr_curve.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--retrain", action="store_true", help="delete and retrain models already in --models-dir")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--real-text", type=Path, metavar="DIR",
                        help="realtext passages (../shared/data/realtext): mixed real-document F1 beside the test split's")
    args = parser.parse_args()
    if not (args.corpus / "test.jsonl").is_file():
        raise SystemExit(f"corpus not found: {args.corpus / 'test.jsonl'} (run `tokfilter build-corpus` or pass --corpus)")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classifiers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "classifiers.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
