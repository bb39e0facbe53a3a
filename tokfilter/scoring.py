"""The one document-scoring pipeline of the project.

Every path that scores documents goes through :class:`ScoringPipeline`: in-process ONNX Runtime,
the Triton client (``FilterClient``), the REST gateway, the Triton ``filter_text`` model and the
corpus filter. Steps: tokenize once (offsets in code points) -> plan windows per model
(``tokfilter.windows``) -> group windows into batches bounded by a padded-token budget, sorted by
length so that a batch pads little -> call a *window scorer* -> stitch -> character
probabilities and spans.

A window scorer is any callable ``(input_ids [B, S], attention_mask [B, S]) -> probs``: ``[B, S]``
p(forget) per position for the token model, ``[B]`` for the document model, and both as a pair
``([B, S], [B])`` for a joint model (one encoder, two heads: ``ScoredModel.joint``), which gives
token and document scores from one call per window batch. That is all a backend has to provide
(``tokfilter.engines.make_window_scorer``'s engines, a Triton gRPC call, ...;
``tokfilter.inference.window_probabilities`` turns any engine's raw outputs into this).

Document score of a long document: the highest window score (a document is as "forget" as its most
forget-like window), so a long document is never judged on its first window only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from tokfilter.errors import TokfilterError
from tokfilter.modelcard import ModelCard, load_model_card
from tokfilter.piece_cache import PieceCachedEncoder
from tokfilter.windows import (
    Span,
    Window,
    WindowSequences,
    char_probabilities,
    char_probabilities_batch,
    load_tokenizer,
    pad_batch,
    reference_pad_batch,
    reference_spans_from_char_probs,
    segment_starts,
    spans_batch,
    special_tokens,
    split_segments,
    stitch_window_scores,
    stitch_windows,
    window_batch,
)

WindowScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Padded tokens per model call. On a CPU small batches stay in cache: 1024 scores 1.1-1.2x the
# tokens/s of 8192, fp32 and int8 (benchmarks/results/batch_tokens.md). A GPU needs large batches to fill.
DEFAULT_MAX_BATCH_TOKENS = 1024
CUDA_MAX_BATCH_TOKENS = 32768
# Padded tokens per request to a server, which regroups them into model calls of its own budget:
# large requests amortize the round trip.
DEFAULT_REQUEST_TOKENS = 8192
DEFAULT_MAX_BATCH_SIZE = 64
HIDDEN_TOKEN = "[hidden]"


def max_batch_tokens_for(device: str) -> int:
    """The default padded tokens per model call on ``device`` (cpu|cuda)."""
    return CUDA_MAX_BATCH_TOKENS if device == "cuda" else DEFAULT_MAX_BATCH_TOKENS


@dataclass
class DocumentScores:
    """Scores of one document. ``offsets`` are half-open code-point offsets of ``token_ids``."""

    doc_score: float | None
    token_ids: np.ndarray  # int64 [n]
    offsets: np.ndarray  # int64 [n, 2]
    token_probs: np.ndarray  # float32 [n]
    char_probs: np.ndarray  # float32 [len(text)]
    spans: list[Span]
    threshold: float

    @property
    def flagged_fraction(self) -> float:
        """Fraction of tokens at or above the threshold (0 for an empty document)."""
        if len(self.token_probs) == 0:
            return 0.0
        return float(np.mean(self.token_probs >= self.threshold))

    def summary(self, tokens: bool = False) -> dict:
        """The JSON form served to clients: document score, spans and flagged-token fraction; with
        ``tokens``, also each classifier token's code-point offsets and probability (float32 values),
        from which a client derives spans at any threshold (``tokfilter.windows`` rule)."""
        summary = {
            "doc_score": self.doc_score,
            "spans": [{"start": s.start, "end": s.end, "score": s.score} for s in self.spans],
            "flagged_fraction": self.flagged_fraction,
        }
        if tokens:
            summary["tokens"] = {"offsets": self.offsets.tolist(), "probs": self.token_probs.tolist()}
        return summary


@dataclass(frozen=True)
class EncodedText:
    """Content tokens of a text (no special tokens) and their code-point offsets."""

    ids: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True)
class ScoredModel:
    """A window scorer with the windowing its model was trained for; ``joint``: its scorer returns
    (token probs, window probs)."""

    scorer: WindowScorer
    max_length: int
    stride: int
    joint: bool = False

    @classmethod
    def from_card(cls, scorer: WindowScorer, card: ModelCard) -> "ScoredModel":
        return cls(scorer, card.max_length, card.stride, card.joint)


@dataclass(frozen=True)
class WindowScores:
    """A document's windows and, per window, its content-token probabilities and its window score
    (None where the model has no such head)."""

    windows: list[Window]
    token_probs: list
    doc_probs: list


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Group item indices into batches whose padded size (count x longest) fits ``max_batch_tokens``.

    Items are taken longest first, so each batch holds similar lengths and pads little. An item
    longer than the budget gets a batch of its own.
    """
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError(f"max_batch_tokens and max_batch_size must be >= 1, got {max_batch_tokens}, {max_batch_size}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[list[int]] = []
    width = count = 0
    for i, length in zip(order.tolist(), lengths[order].tolist()):
        if batches and count < max_batch_size and (count + 1) * width <= max_batch_tokens:
            batches[-1].append(i)
            count += 1
        else:
            batches.append([i])
            width, count = length, 1
    return batches


def reference_plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """``plan_batches`` with a Python sort and lookups per item."""
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError(f"max_batch_tokens and max_batch_size must be >= 1, got {max_batch_tokens}, {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]]
            if len(batch) < max_batch_size and (len(batch) + 1) * width <= max_batch_tokens:
                batch.append(i)
                continue
        batches.append([i])
    return batches


def score_window_requests(scorer: WindowScorer, ids: list[np.ndarray], masks: list[np.ndarray], per_token: bool, max_batch_tokens: int,
                          joint: bool = False) -> list:
    """Score the windows of several requests (``ids[r]``, ``masks[r]``: [n_r, width_r]) in
    length-sorted sub-batches of at most ``max_batch_tokens`` padded tokens.

    Returns per request float32 [n_r, width_r] for a token model (0 past a window's last attended
    token) or [n_r, 1] for a document model; for a ``joint`` model (scorer returns both), the pair
    ([n_r, width_r], [n_r, 1]). A window is cut after its last attended position, so a mask with
    holes keeps them.
    """
    rows = [(r, i) for r, a in enumerate(ids) for i in range(a.shape[0])]
    lengths = [int(np.flatnonzero(masks[r][i]).max(initial=0)) + 1 for r, i in rows]
    token_out = [np.zeros(a.shape, dtype=np.float32) for a in ids] if per_token or joint else None
    doc_out = [np.zeros((a.shape[0], 1), dtype=np.float32) for a in ids] if joint or not per_token else None
    for batch in plan_batches(lengths, max_batch_tokens, max(len(rows), 1)):
        batch_ids, _ = pad_batch([ids[rows[k][0]][rows[k][1], : lengths[k]] for k in batch])
        batch_masks, _ = pad_batch([masks[rows[k][0]][rows[k][1], : lengths[k]] for k in batch])  # padded with 0
        tokens, docs = batch_heads(joint, per_token, scorer(batch_ids, batch_masks), len(batch))
        for row, k in enumerate(batch):
            r, i = rows[k]
            if tokens is not None:
                token_out[r][i, : lengths[k]] = tokens[row, : lengths[k]]
            if docs is not None:
                doc_out[r][i, 0] = docs[row]
    if joint:
        return list(zip(token_out, doc_out))
    return token_out if per_token else doc_out


def safe_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by '?', so it can be tokenized; lengths unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def hide_spans(text: str, spans: Sequence[Span], hidden: str = HIDDEN_TOKEN) -> str:
    """``text`` with each span replaced by ``hidden`` (spans sorted and disjoint)."""
    parts, pos = [], 0
    for span in spans:
        parts += [text[pos : span.start], hidden]
        pos = span.end
    parts.append(text[pos:])
    return "".join(parts)


class ScoringPipeline:
    """Tokenize, window, batch, score and stitch documents with a token model and an optional
    document model sharing one tokenizer, or with one joint model (``token_model.joint``), which
    gives both scores from one pass.

    ``executor``: when given, batches are scored concurrently on it (its worker count bounds the
    requests in flight, e.g. to a remote server); otherwise in the calling thread.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        token_model: ScoredModel,
        threshold: float,
        doc_model: ScoredModel | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        executor: Executor | None = None,
    ):
        self.tokenizer = tokenizer
        self.token_model = token_model
        self.doc_model = doc_model
        self.threshold = threshold
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.executor = executor
        self.encoder = PieceCachedEncoder(tokenizer)
        self.prefix, self.suffix = special_tokens(tokenizer)
        if token_model.joint and doc_model is not None:
            raise TokfilterError("a joint model scores documents itself: give no separate document model with it")
        for model in filter(None, (token_model, doc_model)):
            self.windows_of(model)  # refuses a max_length without room for content

    @classmethod
    def from_model_dirs(
        cls,
        token_dir: Path | str,
        doc_dir: Path | str | None = None,
        make_scorer: Callable[[Path], WindowScorer] | None = None,
        **kwargs,
    ) -> "ScoringPipeline":
        """Pipeline over exported model directories; ``make_scorer(model_dir)`` builds each model's
        scorer (default: in process on the engine ``auto`` picks, ``tokfilter.engines``). A joint
        ``token_dir`` scores documents with its own document head: ``doc_dir`` is then unused."""
        if make_scorer is None:
            from tokfilter.engines import make_window_scorer

            make_scorer = make_window_scorer
        token_dir = Path(token_dir)
        token_card = load_model_card(token_dir)
        tokenizer = load_tokenizer(token_dir / "tokenizer.json")
        doc_model = None
        if doc_dir is not None and not token_card.joint:
            doc_dir = Path(doc_dir)
            check_same_tokenizer(token_dir, doc_dir)
            doc_model = ScoredModel.from_card(make_scorer(doc_dir), load_model_card(doc_dir))
        token_model = ScoredModel.from_card(make_scorer(token_dir), token_card)
        return cls(tokenizer, token_model, token_card.threshold, doc_model, **kwargs)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Content tokens and code-point offsets of each text, without truncation."""
        ids, offsets, counts = self.encoder.encode([safe_text(t) for t in texts])
        return [EncodedText(i, o) for i, o in zip(split_segments(ids, counts), split_segments(offsets, counts))]

    def score(self, texts: Sequence[str], threshold: float | None = None) -> list[DocumentScores]:
        """Scores of each text: token probabilities, character probabilities, spans, document score."""
        threshold = self.threshold if threshold is None else threshold
        encoded = self.encode(texts)
        token_probs, doc_scores = self._score_windows(self.token_model, encoded, per_token=True)
        if self.doc_model is not None:
            _, doc_scores = self._score_windows(self.doc_model, encoded, per_token=False)
        token_counts = np.fromiter((len(e.ids) for e in encoded), dtype=np.int64, count=len(encoded))
        char_counts = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        offsets = np.concatenate([e.offsets for e in encoded]) if encoded else np.zeros((0, 2), np.int64)
        chars = char_probabilities_batch(offsets, token_probs, token_counts, char_counts)
        spans = spans_batch(chars, char_counts, threshold)
        doc_probs, doc_chars = split_segments(token_probs, token_counts), split_segments(chars, char_counts)
        return [
            DocumentScores(None if doc_scores is None else float(doc_scores[i]), enc.ids, enc.offsets, doc_probs[i],
                           doc_chars[i], spans[i], threshold)
            for i, enc in enumerate(encoded)
        ]

    @property
    def scores_documents(self) -> bool:
        """Whether ``score`` gives document scores (a document model, or a joint model)."""
        return self.doc_model is not None or self.token_model.joint

    def score_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Document scores only, float32 [len(texts)]: the cheap first pass of a separate document
        model; a joint model runs its whole pass (no cheaper)."""
        if not self.scores_documents:
            raise TokfilterError("this pipeline has no document model")
        model = self.token_model if self.token_model.joint else self.doc_model
        return self._score_windows(model, self.encode(texts), per_token=False)[1]

    def windows_of(self, model: ScoredModel) -> WindowSequences:
        """How ``model``'s inputs are cut from a document: its windowing and this tokenizer's special tokens."""
        return WindowSequences(tuple(self.prefix), tuple(self.suffix), model.max_length, model.stride)

    def window_inputs(
        self, model: ScoredModel, encoded: list[EncodedText]
    ) -> tuple[list[list[Window]], list[tuple[int, Window]], list[np.ndarray]]:
        """Each document's windows, every window as (document index, window), and its model input."""
        windows = self.windows_of(model)
        plans = [windows.plan(len(enc.ids)) for enc in encoded]
        items = [(d, w) for d, plan in enumerate(plans) for w in plan]
        return plans, items, [windows.sequence(encoded[d].ids, w) for d, w in items]

    def _score_windows(
        self, model: ScoredModel, encoded: list[EncodedText], per_token: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(The buffer's per-token scores, concatenated in document order, when ``per_token``;
        each document's score, the highest of its windows', from a document or joint model), both
        from one ``model`` call per window batch."""
        sequences = self.windows_of(model)
        token_counts = np.fromiter((len(e.ids) for e in encoded), dtype=np.int64, count=len(encoded))
        token_starts = segment_starts(token_counts)
        ids = np.concatenate([e.ids for e in encoded]) if encoded else np.zeros(0, np.int64)
        plan = sequences.plan_batch(token_counts)
        lengths = plan.end - plan.start + len(self.prefix) + len(self.suffix)
        batches = plan_batches(lengths, self.max_batch_tokens, self.max_batch_size)

        def run(batch: list[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
            """(token probs [B, S] or None, window probs [B] or None) of a batch."""
            return batch_heads(model.joint, per_token, model.scorer(*window_batch(sequences, ids, token_starts, plan, batch)), len(batch))

        outputs = self.executor.map(run, batches) if self.executor else map(run, batches)
        token_probs = np.zeros(len(ids), dtype=np.float32) if per_token else None
        doc_scores = np.full(len(encoded), -np.inf, dtype=np.float32) if model.joint or not per_token else None
        for batch, (batch_tokens, batch_docs) in zip(batches, outputs):
            if token_probs is not None:
                stitch_windows(token_probs, token_starts, plan, batch, batch_tokens, len(self.prefix))
            if doc_scores is not None:
                np.maximum.at(doc_scores, plan.doc[batch], batch_docs)
        return token_probs, doc_scores


def batch_heads(joint: bool, per_token: bool, out, batch_size: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A window scorer's output for a batch as (token probs [B, S] or None, window probs [B] or
    None): a joint model gives both, a token model the first, a document model the second."""
    if joint:
        return np.asarray(out[0], dtype=np.float32), np.asarray(out[1], dtype=np.float32).reshape(-1)
    out = np.asarray(out, dtype=np.float32)
    return (out, None) if per_token else (None, out.reshape(batch_size, -1)[:, 0])


# ------------------------------------------------------------------------------------- references
# Today's simple forms of the pipeline's steps (one document, one window at a time): the baseline of
# the property tests (tests/test_client_fast.py) and of benchmarks/client.py.


def reference_encode_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[EncodedText]:
    """``ScoringPipeline.encode`` with the library's ``encode_batch``, one encoding at a time."""
    encodings = tokenizer.encode_batch([safe_text(t) for t in texts], add_special_tokens=False)
    return [
        EncodedText(np.asarray(e.ids, dtype=np.int64), np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2))
        for e in encodings
    ]


def reference_score_windows(
    pipeline: ScoringPipeline, model: ScoredModel, encoded: list[EncodedText], per_token: bool
) -> list[WindowScores]:
    """Windows of each document and, for each window, its content-token scores (``per_token``:
    a token model's, or a joint model's) and its window score (a document or joint model's)."""
    windows = pipeline.windows_of(model)
    plans, items, sequences = pipeline.window_inputs(model, encoded)
    batches = reference_plan_batches([len(s) for s in sequences], pipeline.max_batch_tokens, pipeline.max_batch_size)

    def run(batch: list[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
        ids, mask = reference_pad_batch([sequences[i] for i in batch])
        return batch_heads(model.joint, per_token, model.scorer(ids, mask), len(batch))

    outputs = pipeline.executor.map(run, batches) if pipeline.executor else map(run, batches)
    token_out: list = [None] * len(items)
    doc_out: list = [None] * len(items)
    for batch, (token_probs, doc_probs) in zip(batches, outputs):
        for row, i in enumerate(batch):
            if token_probs is not None:
                token_out[i] = windows.content(token_probs[row], items[i][1])
            if doc_probs is not None:
                doc_out[i] = float(doc_probs[row])
    result = [WindowScores(plan, [], []) for plan in plans]
    for (d, _), tok, doc in zip(items, token_out, doc_out):
        result[d].token_probs.append(tok)
        result[d].doc_probs.append(doc)
    return result


def reference_score(pipeline: ScoringPipeline, texts: Sequence[str], threshold: float | None = None) -> list[DocumentScores]:
    """``ScoringPipeline.score`` one document, one window at a time."""
    threshold = pipeline.threshold if threshold is None else threshold
    encoded = reference_encode_texts(pipeline.tokenizer, texts)
    token_scores = reference_score_windows(pipeline, pipeline.token_model, encoded, per_token=True)
    if pipeline.token_model.joint:
        doc_scores = token_scores
    else:
        doc_scores = reference_score_windows(pipeline, pipeline.doc_model, encoded, per_token=False) if pipeline.doc_model else None
    results = []
    for i, (text, enc) in enumerate(zip(texts, encoded)):
        probs = stitch_window_scores(len(enc.ids), token_scores[i].windows, token_scores[i].token_probs)
        chars = char_probabilities(enc.offsets, probs, len(text))
        doc_score = float(max(doc_scores[i].doc_probs)) if doc_scores else None
        results.append(DocumentScores(doc_score, enc.ids, enc.offsets, probs, chars,
                                      reference_spans_from_char_probs(chars, threshold), threshold))
    return results


def check_same_tokenizer(token_dir: Path, doc_dir: Path) -> None:
    """The two models share one tokenization; refuse a pair whose tokenizers differ."""
    a, b = token_dir / "tokenizer.json", doc_dir / "tokenizer.json"
    for path in (a, b):
        if not path.is_file():
            raise TokfilterError(f"tokenizer file not found: {path}")
    if a.read_bytes() != b.read_bytes():
        raise TokfilterError(f"{a} and {b} differ: the token and document models must share one tokenizer")
