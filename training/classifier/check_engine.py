"""``tokfilter check-engine``: the parity gate of an engine/precision against ONNX Runtime fp32.

Scores documents of a corpus split (validation by default: the test split stays for reporting)
through the shared pipeline with the engine and with ONNX Runtime fp32, the reference, and reports
the max |p(forget) difference| over real tokens (documents, for a document model) and the F1 of
each at the model card's threshold against the corpus labels. The engine passes when its F1 is
within ``F1_TOLERANCE`` of the reference's. ``--record`` saves the result next to the model
(``engine_checks.json``, tied to the model file's sha256), where ``auto`` refuses a failed engine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.digest import file_sha256
from tokfilter.engines import CHECKS_FILE, ENGINES, engine_line, make_window_scorer, recorded_checks
from tokfilter.errors import TokfilterError
from tokfilter.inference import MODEL_FILES
from tokfilter.windows import load_tokenizer

F1_TOLERANCE = 0.005


def compare_scores(labels: np.ndarray, reference: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Max |difference| of two score vectors, each one's F1 at ``threshold``, and the flags that differ."""
    from tokfilter.training.classifier.train import binary_metrics

    ref_f1 = binary_metrics(labels, reference, threshold)["f1"]
    f1 = binary_metrics(labels, scores, threshold)["f1"]
    return {
        "max_abs_prob_diff": float(np.max(np.abs(scores - reference), initial=0.0)),
        "reference_f1": ref_f1,
        "f1": f1,
        "f1_diff": f1 - ref_f1,
        "flags_changed": int(np.sum((scores >= threshold) != (reference >= threshold))),
        "n": int(len(labels)),
        "passed": bool(abs(f1 - ref_f1) <= F1_TOLERANCE),
    }


def check_engine(model_dir: Path | str, docs: list[dict], engine: str, precision: str | None = None,
                 threads: int | None = None) -> dict:
    """Parity of ``engine``/``precision`` with ONNX Runtime fp32 on ``docs`` (corpus documents with
    ``meta.label_spans``); the F1 is token F1 for a token model, document F1 for a document model;
    a joint model is checked on both heads (the document head's keys prefixed ``doc_``) and passes
    when both do."""
    from tokfilter.training.classifier.train import score_heads

    model_dir = Path(model_dir)
    scorer = make_window_scorer(model_dir, engine, precision, threads)
    reference = make_window_scorer(model_dir, "onnxruntime", "fp32", threads)
    card, tokenizer = scorer.card, load_tokenizer(model_dir / "tokenizer.json")
    ref_heads = score_heads(reference, card.max_length, card.stride, tokenizer, docs, card.task)
    heads = score_heads(scorer, card.max_length, card.stride, tokenizer, docs, card.task)
    check = {"model": card.name, "engine": scorer.engine, "precision": scorer.precision, "ran": engine_line(scorer),
             "onnx_sha256": file_sha256(model_dir / MODEL_FILES["fp32"]), "threshold": card.threshold, "docs": len(docs)}
    own_head = "token" if card.joint else card.task
    labels, ref_scores = ref_heads[own_head]
    check |= compare_scores(labels, ref_scores, heads[own_head][1], card.threshold)
    if card.joint:
        labels, ref_scores = ref_heads["document"]
        doc = compare_scores(labels, ref_scores, heads["document"][1], card.doc_threshold)
        check |= {"doc_threshold": card.doc_threshold} | {f"doc_{k}": v for k, v in doc.items()}
        check["passed"] = check["passed"] and doc["passed"]
    return check


def record_check(model_dir: Path | str, check: dict) -> Path:
    """Save ``check`` into the model's ``engine_checks.json`` (one entry per engine and precision)."""
    checks = recorded_checks(model_dir)
    checks[f"{check['engine']} {check['precision']}"] = check
    path = Path(model_dir) / CHECKS_FILE
    path.write_text(json.dumps(checks, indent=2, sort_keys=True) + "\n")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="exported classifier (model.onnx, tokfilter.json, tokenizer.json)")
    parser.add_argument("--engine", choices=ENGINES, default="auto")
    parser.add_argument("--precision", default=None, help="fp32|bf16|int8|fp16 (default: the engine's)")
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR, help="corpus dir holding <split>.jsonl")
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--max-docs", type=int, default=200, help="seeded sample of documents to score (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: TOKFILTER_ORT_THREADS or all cores)")
    parser.add_argument("--record", action="store_true", help=f"save the result in MODEL_DIR/{CHECKS_FILE}, where auto reads it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from tokfilter.training.classifier.train import load_split, sample_docs

    if args.max_docs < 1:
        raise TokfilterError(f"--max-docs must be >= 1, got {args.max_docs}")
    docs = sample_docs(load_split(args.corpus, args.split), args.max_docs)
    check = check_engine(args.model_dir, docs, args.engine, args.precision, args.threads)
    if args.record:
        check["recorded_in"] = str(record_check(args.model_dir, check))
    if args.json:
        print(json.dumps(check))
    else:
        for key, value in check.items():
            print(f"{key:20s} {value}")
    if not check["passed"]:
        print(f"tokfilter check-engine: {check['engine']} {check['precision']} FAILED: F1 differs from ONNX Runtime fp32 by "
              f"{check['f1_diff']:+.4f}" + (f" (document head {check['doc_f1_diff']:+.4f})" if "doc_f1_diff" in check else "")
              + f" (tolerance {F1_TOLERANCE})")
        return 1
    return 0
