"""``tokfilter eval-classifier``: test-split metrics of the exported classifiers, scored by ONNX Runtime.

Token metrics use the classifier's own tokens, labelled from ``label_spans`` as in training, at the
threshold saved in the token model's card: on the natural distribution of the split, and on a
class-balanced token set (all positive tokens and as many negatives drawn at random, seeded), as in
the paper. Document metrics use the document model's card threshold; the recall at its
``threshold_recall95`` is reported too, since that threshold gates the cascade. A joint model
(``--token-model`` a joint export) is both: its document head is scored with its ``doc_threshold``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.errors import TokfilterError
from tokfilter.inference import MODEL_FILES, OnnxWindowScorer
from tokfilter.modelcard import load_model_card
from tokfilter.training.classifier.train import binary_metrics, load_split, sample_docs, score_split
from tokfilter.windows import load_tokenizer

PR_CURVE_FILE = "pr_curve.png"


def balanced_subset(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of all tokens of the rarer class plus as many of the other class, drawn at random."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    rng = np.random.default_rng(seed)
    n = min(len(pos), len(neg))
    return np.sort(np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]))


def score_model(model_dir: Path, docs: list[dict], precision: str, head: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(labels, scores, threshold, 95%-recall threshold) of the ``head`` (token|document) of an
    exported model on ``docs``."""
    scorer = OnnxWindowScorer(model_dir, precision=precision)
    card = scorer.card
    labels, scores = score_split(scorer, card.max_length, card.stride, load_tokenizer(model_dir / "tokenizer.json"), docs, card.task, head)
    if card.joint and head == "document":
        return labels, scores, card.doc_threshold, card.doc_threshold_recall95
    return labels, scores, card.threshold, card.threshold_recall95


def evaluate(corpus_dir: Path, token_dir: Path, doc_dir: Path | None, split: str = "test", precision: str = "fp32",
             out_dir: Path | None = None, max_docs: int | None = None) -> dict:
    """Metrics of both models on ``split`` (``doc_dir`` None: the document head of a joint
    ``token_dir``, else the default document model); writes the precision-recall curve PNG to ``out_dir``."""
    from sklearn.metrics import roc_auc_score

    if max_docs is not None and max_docs < 1:
        raise TokfilterError(f"--max-docs must be >= 1, got {max_docs}")
    docs = sample_docs(load_split(corpus_dir, split), max_docs)
    if doc_dir is None:
        doc_dir = token_dir if load_model_card(token_dir).joint else paths.DOC_MODEL_DIR
    tok_labels, tok_scores, tok_threshold, _ = score_model(Path(token_dir), docs, precision, "token")
    doc_labels, doc_scores, doc_threshold, doc_threshold_recall95 = score_model(Path(doc_dir), docs, precision, "document")
    natural = binary_metrics(tok_labels, tok_scores, tok_threshold)
    subset = balanced_subset(tok_labels)
    balanced = binary_metrics(tok_labels[subset], tok_scores[subset], tok_threshold)
    docs_at_best = binary_metrics(doc_labels, doc_scores, doc_threshold)
    docs_at_r95 = binary_metrics(doc_labels, doc_scores, doc_threshold_recall95)
    both_classes = 0 < tok_labels.sum() < len(tok_labels)
    result = {
        "split": split,
        "precision_mode": precision,
        "n_docs": len(docs),
        "n_tokens": int(len(tok_labels)),
        "positive_token_fraction": round(float(tok_labels.mean()), 4),
        "token_precision": natural["precision"],
        "token_recall": natural["recall"],
        "token_f1": natural["f1"],
        "token_auroc": float(roc_auc_score(tok_labels, tok_scores)) if both_classes else None,
        "token_f1_balanced": balanced["f1"],
        "token_precision_balanced": balanced["precision"],
        "token_recall_balanced": balanced["recall"],
        "flagged_fraction": natural["flagged_fraction"],
        "threshold": tok_threshold,
        "doc_f1": docs_at_best["f1"],
        "doc_precision": docs_at_best["precision"],
        "doc_recall": docs_at_best["recall"],
        "doc_flagged_fraction": docs_at_best["flagged_fraction"],
        "doc_threshold": doc_threshold,
        "doc_threshold_recall95": doc_threshold_recall95,
        "doc_recall_at_threshold_recall95": docs_at_r95["recall"],
        "doc_precision_at_threshold_recall95": docs_at_r95["precision"],
    }
    out_dir = Path(out_dir or token_dir)
    result["pr_curve"] = str(plot_pr_curves(out_dir / PR_CURVE_FILE, (tok_labels, tok_scores, tok_threshold),
                                            (doc_labels, doc_scores, doc_threshold)))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def plot_pr_curves(path: Path, token: tuple, document: tuple) -> Path:
    """Precision-recall curves of the token and document models, each with its threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (labels, scores, threshold) in (("token", token), ("document", document)):
        if labels.min(initial=1) == labels.max(initial=0):
            continue
        p, r, _ = precision_recall_curve(labels, scores)
        ax.plot(r, p, label=name)
        at = binary_metrics(labels, scores, threshold)
        ax.scatter([at["recall"]], [at["precision"]], marker="o", zorder=3)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title("precision-recall (dots: saved thresholds)")
    ax.legend(loc="lower left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR, help="corpus dir holding <split>.jsonl")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--token-model", type=Path, default=paths.JOINT_MODEL_DIR,
                        help="token model, or a joint model (default: %(default)s)")
    parser.add_argument("--doc-model", type=Path, default=None,
                        help=f"document model (default: the token model's document head if it is joint, else {paths.DOC_MODEL_DIR})")
    parser.add_argument("--precision", choices=sorted(MODEL_FILES), default="fp32", help="which exported model to score")
    parser.add_argument("--out", type=Path, default=None, help="folder of the PR curve PNG (default: the token model dir)")
    parser.add_argument("--max-docs", type=int, default=None, help="score a seeded sample of this many documents (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    result = evaluate(args.corpus, args.token_model, args.doc_model, args.split, args.precision, args.out, args.max_docs)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:38s} {value}")
    return 0
