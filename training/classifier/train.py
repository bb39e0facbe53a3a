"""Token and document classifiers of the forget domain (medicine): data, model, training, calibration.

Token labels come from the corpus' weak ``label_spans``: a token is positive when any of its
characters lies inside a label span (partial overlap counts: a word piece half inside a medical
term is still medical; missing a medical piece costs more than flagging a neighbour). Special
tokens get no label (-100).

Documents longer than one window are cut by ``tokfilter.windows.WindowSequences``, the builder
scoring uses, so a model is trained on exactly the sequences it is served. The document
classifier is trained on windows, a window being positive when it overlaps a medicine passage, and a
document's score is the maximum over its windows: a document is positive when it contains a
medicine passage anywhere.

The joint task trains one encoder with both heads (``JointClassifier``) on the same windows, each
window carrying its token labels and its window label; one exported graph then gives token and
document scores from one pass.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from tokfilter import paths
from tokfilter.classifier_model import (  # noqa: F401 (re-exported)
    DocumentClassifier,
    JointClassifier,
    TokenClassifier,
    build_model,
    encoder_path,
)
from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.training.corpus.domains import FORGET
from tokfilter.training.precision import PRECISIONS, autocast, resolve_precision
from tokfilter.scoring import ScoredModel, ScoringPipeline, safe_text
from tokfilter.windows import WindowSequences, pad_batch

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = ["retain", "forget"]
TASKS = ("token", "document", "joint")
IGNORE = -100
# Measured with `make demo` on an idle 2-core machine (3 layers, 16 x 256-token windows, fp32, attention
# dropout 0.1): ~10 windows/s for the token task, ~9 for the document task, and ~1.5 minutes of
# calibration and export each; 300 + 200 steps took ~17 minutes.
# Joint: one encoder for both heads, now trained in bf16 on AMX CPUs without attention dropout
# (classifier_model.ATTENTION_DROPOUT): 35.5 windows/s here against 14 before. Steps decided on the
# real-text dev split (benchmarks/results/real_text_dev_steps): mixed real-document token F1 0.790 at
# 800 steps, 0.812 at 1200, 0.809 at 1600. 1200 steps train in 9.0 minutes here; a day at 0.6x this
# machine's speed (500 fp32 steps once ran at 8.1 windows/s against 13.2) would take ~15, inside the
# 20-minute budget with calibration and export, where 1600 would not be. A CPU without AMX trains in
# fp32 at ~26 windows/s (one-step measurement): ~12.3 minutes.
DEFAULT_MAX_STEPS = {"token": 300, "document": 200, "joint": 1200}
# Learning rate per task. Joint: 2e-4, decided on validation and on the real-text dev split (same 500 steps,
# default corpus): validation token F1 0.949 -> 0.960, document F1 0.978 -> 0.984, mixed real-document
# token F1 on the dev split 0.679 -> 0.710 against 1e-4.
DEFAULT_LR = {"token": 1e-4, "document": 1e-4, "joint": 2e-4}

# Weight of the window loss in the joint task's loss (token CE + DOC_LOSS_WEIGHT x window CE). Both are
# means of a 2-class cross-entropy, so they sit on one scale; the token loss averages over ~16 x 254
# token positions and the window loss over 16 windows, so each window label counts far more than
# one token label already: 1.0 leaves the two heads equal partners.
DOC_LOSS_WEIGHT = 1.0

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class TrainConfig:
    """Training settings; the defaults fit the 20-minute budget on 2 cores (see DEFAULT_MAX_STEPS). A
    ``max_steps`` or ``lr`` left at None takes the task's default."""

    task: str = "token"
    layers: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    lr: float | None = None
    max_length: int = 256
    stride: int = 64
    seed: int = 0
    label_noise: float = 0.0
    warmup_fraction: float = 0.06
    positive_fraction: float = 0.5
    calibration_docs: int = 800  # validation documents scored for calibration (seeded sample)
    init: str | None = None  # an exported classifier of the same task and depth to fine-tune, instead of fresh heads
    precision: str = "auto"  # fp32, bf16 (autocast; weights and losses stay fp32) or auto (bf16 on AMX or AVX512-BF16 CPUs)

    def __post_init__(self) -> None:  # an unknown task keeps None here; validate_config names the task
        if self.max_steps is None:
            self.max_steps = DEFAULT_MAX_STEPS.get(self.task)
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.task)


# ---------------------------------------------------------------------------------------------- data


def load_split(corpus_dir: Path | str, split: str, allow_empty: bool = False) -> list[dict]:
    """All documents of ``{corpus_dir}/{split}.jsonl``; a missing, empty (unless ``allow_empty``) or
    malformed file is a user error."""
    from tokfilter.training.corpus.build import read_corpus

    path = Path(corpus_dir) / f"{split}.jsonl"
    docs = list(read_corpus(path))
    for line_no, doc in enumerate(docs, 1):
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str) or not isinstance(doc.get("meta"), dict):
            raise TokfilterError(f"{path}: document {line_no}: a corpus document needs a string 'text' and an object 'meta'")
    if not docs and not allow_empty:
        raise TokfilterError(f"corpus file {path} is empty: need at least 1 document")
    return docs


CorpusSource = tuple[Path, int]  # a corpus dir and how many times its train documents are read


def parse_corpus_source(value: str | Path) -> CorpusSource:
    """``DIR`` or ``DIR:N``: a corpus dir whose train documents are read N times (default 1), so a
    small corpus (say, your own text labelled by ``tokfilter label``) can be mixed into a large one."""
    text = str(value)
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        repeat = int(tail)
        if repeat < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: the repeat count after ':' must be >= 1")
        return Path(head), repeat
    return Path(text), 1


def load_corpora(corpora: Sequence[CorpusSource], split: str) -> list[dict]:
    """The ``split`` documents of every corpus (one of several may have none); train documents
    repeated as each source asks."""
    docs: list[dict] = []
    for corpus_dir, repeat in corpora:
        docs += load_split(corpus_dir, split, allow_empty=len(corpora) > 1) * (repeat if split == "train" else 1)
    if not docs:
        raise TokfilterError(f"no {split} documents in {', '.join(str(d) for d, _ in corpora)}: need at least 1")
    return docs


def corpora_digest(corpora: Sequence[CorpusSource]) -> str:
    """The data digest of a model card: one corpus read once keeps its train.jsonl's own digest."""
    digests = [file_sha256(Path(corpus_dir) / "train.jsonl") for corpus_dir, _ in corpora]
    if len(corpora) == 1 and corpora[0][1] == 1:
        return "sha256:" + digests[0]
    mix = "\n".join(f"{digest} x{repeat}" for digest, (_, repeat) in zip(digests, corpora))
    return "sha256:" + hashlib.sha256(mix.encode()).hexdigest()


def sample_docs(docs: list[dict], max_docs: int | None, seed: int = 0) -> list[dict]:
    """At most ``max_docs`` documents, a seeded uniform sample in corpus order (keeps the natural mix)."""
    if max_docs is None or len(docs) <= max_docs:
        return docs
    keep = np.sort(np.random.default_rng(seed).choice(len(docs), max_docs, replace=False))
    return [docs[i] for i in keep]


def token_labels_from_spans(offsets: np.ndarray, spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """1 for each token with a character of ``[start, end)`` inside a half-open span, else 0 (so a
    zero-width token is 0)."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    labels = np.zeros(len(offsets), dtype=bool)
    for s, e in spans:
        labels |= (np.maximum(offsets[:, 0], s) < np.minimum(offsets[:, 1], e))
    return labels.astype(np.int64)


def forget_passages(doc: dict) -> list[tuple[int, int]]:
    """Character ranges of the document's forget-domain passages: ``meta.forget_domain`` when the
    corpus names one (`tokfilter label --domain`), else medicine."""
    forget = doc["meta"].get("forget_domain", FORGET)
    return [(p["start"], p["end"]) for p in doc["meta"].get("passages", []) if p.get("domain") == forget]


def document_label(doc: dict) -> int:
    """1 when the document contains a medicine passage."""
    return int(bool(forget_passages(doc)))


@dataclass
class EncodedDoc:
    ids: np.ndarray  # content token ids, no special tokens
    offsets: np.ndarray  # [n, 2] character offsets
    token_labels: np.ndarray  # 0/1 per content token (from label_spans)
    passage_labels: np.ndarray  # 0/1 per content token: inside a medicine passage


def encode_documents(tokenizer, docs: list[dict]) -> list[EncodedDoc]:
    """Tokenize documents (no special tokens) and project their labels onto the tokens."""
    encodings = tokenizer.encode_batch([safe_text(d["text"]) for d in docs], add_special_tokens=False)
    out = []
    for doc, enc in zip(docs, encodings):
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        spans = doc["meta"].get("label_spans", [])
        out.append(
            EncodedDoc(
                np.asarray(enc.ids, dtype=np.int64),
                offsets,
                token_labels_from_spans(offsets, spans),
                token_labels_from_spans(offsets, forget_passages(doc)),
            )
        )
    return out


def make_windows(encoded: list[EncodedDoc], task: str, sequences: WindowSequences):
    """Training windows as (model input, labels): per token (-100 on the special tokens), one per
    window, or for the joint task both as (token labels, window label).

    A window's label is 1 when its content overlaps a forget passage, the same rule as the document
    label (a document holds a forget passage), so that max over windows matches it. Not "holds a
    token of ``label_spans``": those are weak lexicon spans, which also hit the odd medical word in
    a biology passage, and would teach the document head the token head's false positives."""
    windows = []
    for doc in encoded:
        for w in sequences.plan(len(doc.ids)):
            ids = sequences.sequence(doc.ids, w)
            token_labels = sequences.aligned(doc.token_labels, w, IGNORE)
            window_label = np.int64(doc.passage_labels[w.start : w.end].any())
            labels = {"token": token_labels, "document": window_label, "joint": (token_labels, window_label)}[task]
            windows.append((ids, labels))
    return windows


def training_windows(tokenizer, docs: list[dict], task: str, sequences: WindowSequences) -> list:
    """``make_windows`` over a training corpus. A corpus read N times (``DIR:N``) repeats the same
    document objects: each is tokenized and windowed once and its windows are listed N times, as
    references, so a small corpus weighted up costs neither the tokenizing nor the memory of copies."""
    unique = list({id(doc): doc for doc in docs}.values())
    per_doc = {id(doc): make_windows([encoded], task, sequences) for doc, encoded in zip(unique, encode_documents(tokenizer, unique))}
    return [window for doc in docs for window in per_doc[id(doc)]]


def window_is_positive(labels) -> bool:
    """A window holding the forget class: any positive token label, or a positive window label."""
    parts = labels if isinstance(labels, tuple) else (labels,)
    return any(bool(np.any(np.asarray(part) == 1)) for part in parts)


def upsample_positive_windows(n_samples: int, positives: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_samples`` windows drawn so that a ``fraction`` of them contain the forget class."""
    pos, neg = np.flatnonzero(positives), np.flatnonzero(~positives)
    if len(pos) == 0 or len(neg) == 0:
        pool = pos if len(pos) else neg
        return rng.choice(pool, size=n_samples)
    n_pos = int(round(n_samples * fraction))
    idx = np.concatenate([rng.choice(pos, size=n_pos), rng.choice(neg, size=n_samples - n_pos)])
    rng.shuffle(idx)
    return idx


def flip_token_labels(labels: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Flip each 0/1 label with probability ``p`` (label-noise ablation); ignored positions stay."""
    if p <= 0:
        return labels
    flip = (rng.random(labels.shape) < p) & (labels != IGNORE)
    return np.where(flip, 1 - labels, labels)


# --------------------------------------------------------------------------------------------- model


def torch_score_fn(model) -> ScoreFn:
    """p(forget) from a torch classifier, same contract as ``OnnxWindowScorer`` (a joint model:
    token p [B, S] and window p [B])."""

    def score(input_ids: np.ndarray, attention_mask: np.ndarray):
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        probs = [torch.softmax(logits.float(), -1)[..., 1].numpy() for logits in (out if isinstance(out, tuple) else (out,))]
        return tuple(probs) if isinstance(out, tuple) else probs[0]

    return score


def training_loss(model, windows: list, batch: np.ndarray, task: str, label_noise: float, rng: np.random.Generator,
                  precision: str = "fp32") -> torch.Tensor:
    """Cross-entropy of a batch of windows: per token, per window, or for the joint task token CE +
    ``DOC_LOSS_WEIGHT`` x window CE. Label noise flips the token task's token labels and the
    document task's window labels (the joint task's token labels only). Under bf16 the encoder runs
    in autocast and the losses are taken on float32 logits."""
    ids, mask = pad_batch([windows[i][0] for i in batch])
    labels = [windows[i][1] for i in batch]
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    with autocast(precision, "cpu"):
        out = model(torch.from_numpy(ids), torch.from_numpy(mask))
    out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
    if task == "document":
        return loss_fn(out, torch.from_numpy(flip_token_labels(np.array(labels, dtype=np.int64), label_noise, rng)))
    token_labels = np.full(ids.shape, IGNORE, dtype=np.int64)
    for row, label in enumerate(labels):
        label = label[0] if task == "joint" else label
        token_labels[row, : len(label)] = label
    token_logits = out[0] if task == "joint" else out
    loss = loss_fn(token_logits.reshape(-1, 2), torch.from_numpy(flip_token_labels(token_labels, label_noise, rng)).reshape(-1))
    if task == "joint":
        window_labels = np.array([label[1] for label in labels], dtype=np.int64)
        loss = loss + DOC_LOSS_WEIGHT * loss_fn(out[1], torch.from_numpy(window_labels))
    return loss


# ------------------------------------------------------------------------------------------ training


def train_model(model, windows: list, config: TrainConfig, log=sys.stderr) -> dict:
    """Fine-tune on windows (positives upsampled to ``positive_fraction``); prints windows/s and ETA."""
    precision = resolve_precision(config.precision, "cpu", bf16_on_avx512=True)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    positives = np.array([window_is_positive(lab) for _, lab in windows])
    order = upsample_positive_windows(config.max_steps * config.batch_size, positives, config.positive_fraction, rng)
    # fused: one pass over the parameters (the word embeddings are 2/3 of them) instead of a dozen;
    # the same AdamW. Its step: 20 ms against 120-128 (foreach) on 2 cores, ~10% of a training step;
    # dev-split parity: benchmarks/results/real_text_dev_anatomy/README.md
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, fused=True)
    warmup = max(1, int(config.warmup_fraction * config.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (config.max_steps - step) / max(1, config.max_steps - warmup)))
    )
    model.train()
    start, last_print, losses = time.perf_counter(), 0.0, []
    for step in range(config.max_steps):
        batch = order[step * config.batch_size : (step + 1) * config.batch_size]
        loss = training_loss(model, windows, batch, config.task, config.label_noise, rng, precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        elapsed = time.perf_counter() - start
        if elapsed - last_print >= 10 or step + 1 == config.max_steps:
            last_print = elapsed
            rate = (step + 1) * config.batch_size / elapsed
            eta = (config.max_steps - step - 1) * config.batch_size / rate
            print(
                f"[train {config.task}] step {step + 1}/{config.max_steps} loss {np.mean(losses[-20:]):.4f} "
                f"{rate:.1f} windows/s ({precision}) ETA {eta:.0f}s",
                file=log,
                flush=True,
            )
    elapsed = time.perf_counter() - start
    return {
        "train_seconds": round(elapsed, 1),
        "train_windows_per_s": round(config.max_steps * config.batch_size / max(elapsed, 1e-9), 2),
        "train_precision": precision,
        "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
        "train_windows_available": len(windows),
        "train_positive_windows": int(positives.sum()),
    }


# ------------------------------------------------------------------------------- scoring, calibration


def score_heads(scorer: ScoreFn, max_length: int, stride: int, tokenizer, docs: list[dict], task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Flat (labels, p(forget)) of each head of a ``task`` model through the shared
    ``ScoringPipeline``: "token", one row per content token (labels from ``label_spans``), and
    "document", one per document (max over windows); a joint model gives both from one pass."""
    texts = [d["text"] for d in docs]
    doc_labels = np.array([document_label(d) for d in docs], dtype=np.int64)
    if task == "document":
        model = ScoredModel(scorer, max_length, stride)
        return {"document": (doc_labels, ScoringPipeline(tokenizer, model, 0.5, doc_model=model).score_documents(texts))}
    results = ScoringPipeline(tokenizer, ScoredModel(scorer, max_length, stride, joint=task == "joint"), 0.5).score(texts)
    labels = [token_labels_from_spans(r.offsets, d["meta"].get("label_spans", [])) for r, d in zip(results, docs)]
    heads = {"token": (np.concatenate(labels), np.concatenate([r.token_probs for r in results]))}
    if task == "joint":
        heads["document"] = (doc_labels, np.array([r.doc_score for r in results], dtype=np.float32))
    return heads


def score_split(scorer: ScoreFn, max_length: int, stride: int, tokenizer, docs: list[dict], task: str, head: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p(forget)) of one head (default: the ``task`` model's own; a joint model needs ``head``)."""
    return score_heads(scorer, max_length, stride, tokenizer, docs, task)[head or task]


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1 and flagged fraction at ``threshold`` (score >= threshold is flagged)."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp = int((pred & labels).sum())
    precision = tp / max(int(pred.sum()), 1)
    recall = tp / max(int(labels.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1, "flagged_fraction": float(pred.mean()) if len(pred) else 0.0}


def calibrate_thresholds(labels: np.ndarray, scores: np.ndarray, target_recall: float = 0.95) -> tuple[float, float]:
    """(best-F1 threshold, highest threshold whose recall is >= ``target_recall``)."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels).astype(int)
    if labels.min(initial=1) == labels.max(initial=0):
        raise TokfilterError("calibration needs both classes in the validation split; it has only one")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = float(thresholds[int(np.argmax(f1))])
    reaching = np.flatnonzero(recall[:-1] >= target_recall)
    recall95 = float(thresholds[reaching.max()]) if len(reaching) else float(thresholds.min())
    return best, recall95


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--task", choices=TASKS, required=True,
                        help="token or document classifier, or joint: one encoder with both heads (one pass scores both)")
    parser.add_argument("--corpus", action="append", type=parse_corpus_source, default=None, metavar="DIR[:N]",
                        help="corpus dir with train/validation jsonl (default artifacts/corpus); repeatable, ':N' reads "
                             "its train documents N times")
    parser.add_argument("--out", type=Path, default=None, help="model dir (default artifacts/models/<task>_classifier)")
    parser.add_argument("--layers", type=int, default=d.layers, help="encoder layers kept (1-6)")
    parser.add_argument("--max-steps", type=int, default=None, help=f"optimizer steps (default per task: {DEFAULT_MAX_STEPS})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default per task: {DEFAULT_LR})")
    parser.add_argument("--max-length", type=int, default=d.max_length, help="window length incl. [CLS]/[SEP]")
    parser.add_argument("--stride", type=int, default=d.stride, help="overlap of consecutive windows, in tokens")
    parser.add_argument("--label-noise", type=float, default=d.label_noise, help="flip each token label with this probability")
    parser.add_argument("--calibration-docs", type=int, default=d.calibration_docs,
                        help="validation documents (a seeded sample) scored to calibrate the thresholds")
    parser.add_argument("--init", default=None, metavar="MODEL_DIR",
                        help="start from this exported classifier (same --task and --layers) instead of fresh heads: "
                             "fine-tune the default model on a corpus of your own")
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="fp32, bf16 autocast, or auto: bf16 where the CPU has AMX tiles or AVX512-BF16 "
                             "(windows/s of a step, bf16 against fp32: 41 vs 26 on AMX, 20 vs 12 on an AMD EPYC)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def validate_config(config: TrainConfig) -> None:
    """Bad settings -> a message naming the field and its limit."""
    if config.task not in TASKS:
        raise TokfilterError(f"--task must be one of {TASKS}, got {config.task!r}")
    if not 1 <= config.layers <= 6:
        raise TokfilterError(f"--layers must be in [1, 6] (MiniLM-L6 has 6), got {config.layers}")
    if config.max_steps < 1:
        raise TokfilterError(f"--max-steps must be >= 1, got {config.max_steps}")
    if config.batch_size < 1:
        raise TokfilterError(f"--batch-size must be >= 1, got {config.batch_size}")
    if not 8 <= config.max_length <= 512:
        raise TokfilterError(f"--max-length must be in [8, 512] (encoder positions), got {config.max_length}")
    if not 0 <= config.stride < config.max_length - 2:
        raise TokfilterError(f"--stride must be in [0, max_length - 2) = [0, {config.max_length - 2}), got {config.stride}")
    if not 0 <= config.label_noise <= 0.5:  # 0.5: labels carry no information (the ablation's end point)
        raise TokfilterError(f"--label-noise must be in [0, 0.5], got {config.label_noise}")
    if config.calibration_docs < 1:
        raise TokfilterError(f"--calibration-docs must be >= 1, got {config.calibration_docs}")
    if not config.lr > 0:
        raise TokfilterError(f"--lr must be > 0, got {config.lr}")
    resolve_precision(config.precision, "cpu")  # names the field and the choices


def train_classifier(config: TrainConfig, corpus: Path | Sequence[CorpusSource], out_dir: Path, threads: int | None = None,
                     log=sys.stderr) -> dict:
    """Train, calibrate on validation, export ONNX fp32 + int8 and write the model card; returns the card.
    ``corpus``: a corpus dir, or several as (dir, times its train documents are read)."""
    from tokfilter.training.classifier.export import export_classifier
    from tokfilter.windows import load_tokenizer

    validate_config(config)
    if config.init is not None:
        check_init(config)  # before the corpus is read
    corpora = [(Path(corpus), 1)] if isinstance(corpus, (str, Path)) else [(Path(d), n) for d, n in corpus]
    train_docs = load_corpora(corpora, "train")
    val_docs = sample_docs(load_corpora(corpora, "validation"), config.calibration_docs, config.seed)
    if threads:
        torch.set_num_threads(threads)
    tokenizer_path = encoder_path() / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path)
    sequences = WindowSequences.for_tokenizer(tokenizer, config.max_length, config.stride)
    windows = training_windows(tokenizer, train_docs, config.task, sequences)
    print(f"[train {config.task}] {len(train_docs)} docs -> {len(windows)} windows", file=log, flush=True)
    model = initial_model(config)
    stats = train_model(model, windows, config, log=log)
    card = export_classifier(
        model,
        config,
        tokenizer_path,
        out_dir,
        val_docs=val_docs,
        data_digest=corpora_digest(corpora),  # names its algorithm
        train_stats=stats,
        log=log,
    )
    return asdict(card)


def initial_model(config: TrainConfig) -> torch.nn.Module:
    """What training starts from: MiniLM-L6's first ``layers`` layers with fresh heads, or with
    ``init`` the weights of an exported classifier (its ``model.onnx``; ``check_init`` has passed), so
    that a model of one's own corpus can start from the default one instead of from scratch."""
    if config.init is None:
        return build_model(config.task, config.layers, config.seed)
    from tokfilter.torch_engine import torch_module_from_onnx

    torch.manual_seed(config.seed)  # the data order and dropout, as for a fresh model
    module, _ = torch_module_from_onnx(config.init)
    return module.train()


def check_init(config: TrainConfig) -> None:
    """``--init`` names an exported classifier of the task, depth and tokenizer being trained."""
    from tokfilter.modelcard import load_model_card

    init = Path(config.init)
    card = load_model_card(init)
    if card.task != config.task:
        raise TokfilterError(f"--init {init} is a {card.task} model; --task {config.task} fine-tunes a {config.task} model")
    if card.num_layers != config.layers:
        raise TokfilterError(f"--init {init} has {card.num_layers} encoder layers; pass --layers {card.num_layers}")
    if file_sha256(init / "tokenizer.json") != file_sha256(encoder_path() / "tokenizer.json"):
        raise TokfilterError(f"--init {init}: its tokenizer.json is not the encoder's ({ENCODER_NAME}); it cannot be fine-tuned here")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The settings the flags give; without --max-steps or --lr, the task's defaults."""
    return TrainConfig(
        task=args.task, layers=args.layers, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        max_length=args.max_length, stride=args.stride, seed=args.seed, label_noise=args.label_noise,
        calibration_docs=args.calibration_docs, init=args.init, precision=args.precision,
    )


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out = args.out or {"token": paths.TOKEN_MODEL_DIR, "document": paths.DOC_MODEL_DIR, "joint": paths.JOINT_MODEL_DIR}[args.task]
    card = train_classifier(config, args.corpus or [(paths.CORPUS_DIR, 1)], out, threads=args.threads)
    print(json.dumps({"model_dir": str(out), "threshold": card["threshold"], "threshold_recall95": card["threshold_recall95"],
                      "doc_threshold": card["doc_threshold"], "doc_threshold_recall95": card["doc_threshold_recall95"],
                      "metrics": card["metrics"]}, indent=2))
    return 0
