"""Windowing of long documents and stitching of window scores back onto characters.

Long documents are never truncated. A document's tokens are cut into windows of at most
``max_length`` tokens counting the tokenizer's special tokens ([CLS] and [SEP] for BERT);
consecutive windows overlap by ``stride`` tokens. :class:`WindowSequences` builds the model input
of each window, the one way training, export checks, scoring and benchmarks all make it.

Stitching rule for overlaps: the overlap between two consecutive windows is split at its midpoint;
a token before the midpoint takes its score from the earlier window, a token from the midpoint on
from the later one. So every token is scored exactly once, by the window in which it has the most
context on its short side.

From token scores to characters (``char_probabilities``): a character inside a token gets that
token's probability (the highest, if tokens overlap); a character between two tokens (white space,
characters the tokenizer drops) gets the lower of its two neighbours, so the space between two
flagged words is flagged and the space beside a benign word is not; characters before the first or
after the last token get 0. Spans and projections onto other tokenizers are both read from these
character probabilities, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from tokfilter.errors import TokfilterError


@dataclass(frozen=True)
class Window:
    """Content tokens ``[start, end)`` of a document; tokens ``[keep_start, keep_end)`` take their
    scores from this window."""

    start: int
    end: int
    keep_start: int
    keep_end: int


@dataclass(frozen=True)
class Span:
    """A half-open character range ``[start, end)`` with the highest token probability inside."""

    start: int
    end: int
    score: float


def plan_windows(n_tokens: int, max_content: int, stride: int) -> list[Window]:
    """Cover ``n_tokens`` tokens with windows of ``max_content`` tokens overlapping by ``stride``.

    An empty document still gets one (empty) window, so it has a document score.
    """
    if max_content < 1:
        raise ValueError(f"max_content must be >= 1, got {max_content}")
    if not 0 <= stride < max_content:
        raise ValueError(f"stride must be in [0, max_content), got {stride} for max_content {max_content}")
    if n_tokens <= max_content:
        return [Window(0, n_tokens, 0, n_tokens)]
    step = max_content - stride
    starts = list(range(0, n_tokens - max_content, step)) + [n_tokens - max_content]
    ends = [s + max_content for s in starts]
    cuts = [0] + [(starts[i + 1] + ends[i]) // 2 for i in range(len(starts) - 1)] + [n_tokens]
    return [Window(s, e, cuts[i], cuts[i + 1]) for i, (s, e) in enumerate(zip(starts, ends))]


def special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Ids the tokenizer's post-processor puts before and after the content of a single sequence
    ([CLS] and [SEP] for BERT, <s> and </s> for RoBERTa), read from an encoding, never assumed."""
    enc = tokenizer.encode("a", add_special_tokens=True)
    mask = enc.special_tokens_mask
    n_prefix = next((i for i, m in enumerate(mask) if not m), len(mask))
    n_suffix = next((i for i, m in enumerate(reversed(mask)) if not m), 0)
    return list(enc.ids[:n_prefix]), list(enc.ids[len(mask) - n_suffix :])


@dataclass(frozen=True)
class WindowSequences:
    """The model inputs of a document's windows: ``prefix + content[start:end] + suffix`` with at
    most ``max_length`` ids in all, consecutive windows overlapping by ``stride`` content tokens
    (capped below the window's content length)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_length: int
    stride: int

    def __post_init__(self) -> None:
        n_special = len(self.prefix) + len(self.suffix)
        if self.max_length <= n_special:
            raise TokfilterError(f"max_length must exceed the {n_special} special tokens, got {self.max_length}")

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, max_length: int, stride: int) -> "WindowSequences":
        prefix, suffix = special_tokens(tokenizer)
        return cls(tuple(prefix), tuple(suffix), max_length, stride)

    @property
    def max_content(self) -> int:
        return self.max_length - len(self.prefix) - len(self.suffix)

    def plan(self, n_tokens: int) -> list[Window]:
        """The windows of a document of ``n_tokens`` content tokens (``plan_windows``)."""
        return plan_windows(n_tokens, self.max_content, min(self.stride, self.max_content - 1))

    def plan_batch(self, n_tokens: np.ndarray) -> "WindowPlan":
        """The windows of a buffer of documents of ``n_tokens`` content tokens (``plan_windows_batch``)."""
        return plan_windows_batch(n_tokens, self.max_content, min(self.stride, self.max_content - 1))

    def sequence(self, ids: np.ndarray, window: Window) -> np.ndarray:
        """The int64 model input of ``window`` of a document's content ``ids``."""
        return np.concatenate([self.prefix, ids[window.start : window.end], self.suffix]).astype(np.int64)

    def aligned(self, values: np.ndarray, window: Window, fill: int) -> np.ndarray:
        """Per-content-token ``values`` of ``window`` placed at their positions in its sequence, and
        ``fill`` at the special tokens' (training labels: the ignore index)."""
        return np.concatenate([np.full(len(self.prefix), fill), values[window.start : window.end],
                               np.full(len(self.suffix), fill)]).astype(np.int64)

    def content(self, per_position: np.ndarray, window: Window) -> np.ndarray:
        """The outputs at ``window``'s content positions of a per-position model output row."""
        return per_position[len(self.prefix) : len(self.prefix) + window.end - window.start]


def stitch_window_scores(n_tokens: int, windows: list[Window], window_scores: list[np.ndarray]) -> np.ndarray:
    """Assemble per-token scores of a document from the scores of its windows' content tokens."""
    out = np.zeros(n_tokens, dtype=np.float32)
    for w, scores in zip(windows, window_scores):
        if len(scores) != w.end - w.start:
            raise ValueError(f"window {w} has {w.end - w.start} tokens but {len(scores)} scores")
        out[w.keep_start : w.keep_end] = scores[w.keep_start - w.start : w.keep_end - w.start]
    return out


def char_probabilities(offsets: np.ndarray, token_probs: np.ndarray, n_chars: int) -> np.ndarray:
    """Per-character probabilities of a text of ``n_chars`` characters (see the module docstring)."""
    probs = np.full(n_chars, -1.0, dtype=np.float32)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    token_probs = np.asarray(token_probs, dtype=np.float32)
    if n_chars == 0:
        return np.zeros(0, dtype=np.float32)
    lengths = np.clip(offsets[:, 1] - offsets[:, 0], 0, None)
    if lengths.sum() == 0:
        return np.zeros(n_chars, dtype=np.float32)
    firsts = np.repeat(offsets[:, 0] - np.cumsum(lengths) + lengths, lengths)
    idx = firsts + np.arange(lengths.sum())
    np.maximum.at(probs, idx, np.repeat(token_probs, lengths))
    covered = probs >= 0
    positions = np.arange(n_chars)
    # value of the nearest covered character on each side (-1 where there is none)
    last = np.maximum.accumulate(np.where(covered, positions, -1))
    nxt = np.minimum.accumulate(np.where(covered, positions, n_chars)[::-1])[::-1]
    has_prev, has_next = last >= 0, nxt < n_chars
    prev_val = np.where(has_prev, probs[np.clip(last, 0, n_chars - 1)], 0.0)
    next_val = np.where(has_next, probs[np.clip(nxt, 0, n_chars - 1)], 0.0)
    gap = np.where(has_prev & has_next, np.minimum(prev_val, next_val), 0.0)
    return np.where(covered, probs, gap).astype(np.float32)


def spans_from_char_probs(char_probs: np.ndarray, threshold: float) -> list[Span]:
    """Maximal runs of characters with probability >= ``threshold`` (compared in float32)."""
    (spans,) = spans_batch(np.asarray(char_probs), np.array([len(char_probs)]), threshold)
    return spans


def reference_spans_from_char_probs(char_probs: np.ndarray, threshold: float) -> list[Span]:
    """``spans_from_char_probs`` one span at a time: the baseline of its tests and benchmark."""
    flagged = np.asarray(char_probs, dtype=np.float32) >= np.float32(threshold)
    if not flagged.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flagged.astype(np.int8), [0]])))
    return [
        Span(int(s), int(e), float(np.max(char_probs[s:e]))) for s, e in zip(edges[::2], edges[1::2])
    ]


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Load a ``tokenizer.json`` with truncation and padding off: windowing is ours to do."""
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def pad_batch(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id sequences to the longest with 0; returns int64 ``input_ids`` and
    ``attention_mask``. The mask keeps padded positions out of attention, so the pad id changes no
    output (any tokenizer's [PAD] would do as well as 0)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    mask = np.arange(lengths.max(initial=0)) < lengths[:, None]
    ids = np.zeros(mask.shape, dtype=np.int64)
    if len(sequences):
        ids[mask] = np.concatenate(sequences)  # row-major: each row's ids, in order
    return ids, mask.astype(np.int64)


def reference_pad_batch(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``pad_batch`` one row at a time: the baseline of its tests and benchmark."""
    width = max((len(s) for s in sequences), default=0)
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


# ------------------------------------------------------------------------------------ batched forms
# A buffer of documents as flat arrays: each document's tokens (or characters) one after the other,
# document d's at ``segment_starts(counts)[d]``. One numpy pass per buffer replaces one pass (of tens
# of small numpy calls) per document; the per-document functions above are their reference.


def segment_starts(counts: np.ndarray) -> np.ndarray:
    """Where each of consecutive segments of ``counts`` items starts in their concatenation."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def split_segments(array: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Views of ``array``'s consecutive segments of ``counts`` items (one per count, even none)."""
    return np.split(array, segment_starts(counts)[1:]) if len(counts) else []


def segment_ids(counts: np.ndarray) -> np.ndarray:
    """The segment index of every item of the concatenation."""
    return np.repeat(np.arange(len(counts)), counts)


@dataclass(frozen=True)
class WindowPlan:
    """The windows of a buffer of documents, one entry per window, in document order (the arrays
    of ``plan_windows``' ``Window`` fields, with each window's document index)."""

    doc: np.ndarray
    start: np.ndarray
    end: np.ndarray
    keep_start: np.ndarray
    keep_end: np.ndarray

    def __len__(self) -> int:
        return len(self.doc)


def plan_windows_batch(n_tokens: np.ndarray, max_content: int, stride: int) -> WindowPlan:
    """``plan_windows`` of every document of a buffer, as one ``WindowPlan``."""
    plan_windows(0, max_content, stride)  # the same checks of max_content and stride
    n = np.asarray(n_tokens, dtype=np.int64)
    step = max_content - stride
    count = np.where(n > max_content, -(-(n - max_content) // step) + 1, 1)
    doc = segment_ids(count)
    k = np.arange(len(doc)) - segment_starts(count)[doc]  # window index within its document
    last = k == count[doc] - 1
    n_doc = n[doc]
    start = np.where(last, np.maximum(n_doc - max_content, 0), k * step)
    end = np.minimum(start + max_content, n_doc)
    keep_start = np.zeros(len(doc), dtype=np.int64)
    later = np.flatnonzero(k > 0)
    keep_start[later] = (start[later] + end[later - 1]) // 2
    keep_end = np.empty(len(doc), dtype=np.int64)
    keep_end[:-1] = keep_start[1:]
    keep_end[last] = n_doc[last]
    return WindowPlan(doc, start, end, keep_start, keep_end)


def window_batch(sequences: WindowSequences, ids: np.ndarray, token_starts: np.ndarray, plan: WindowPlan,
                 rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pad_batch`` of the model inputs (``WindowSequences.sequence``) of windows ``rows`` of
    ``plan``, gathered from the buffer's flat content ``ids`` (document d's at ``token_starts[d]``)."""
    n_prefix, n_suffix = len(sequences.prefix), len(sequences.suffix)
    rows = np.asarray(rows, dtype=np.int64)
    content = plan.end[rows] - plan.start[rows]
    lengths = content + n_prefix + n_suffix
    position = np.arange(lengths.max(initial=0)) - n_prefix  # content index of each column
    is_content = (position >= 0) & (position < content[:, None])
    source = (token_starts[plan.doc[rows]] + plan.start[rows])[:, None] + position
    input_ids = np.zeros(is_content.shape, dtype=np.int64)
    input_ids[is_content] = ids[source[is_content]]
    input_ids[:, :n_prefix] = sequences.prefix
    for j, token in enumerate(sequences.suffix):
        input_ids[np.arange(len(rows)), n_prefix + content + j] = token
    mask = (position + n_prefix < lengths[:, None]).astype(np.int64)
    return input_ids, mask


def stitch_windows(out: np.ndarray, token_starts: np.ndarray, plan: WindowPlan, rows: np.ndarray,
                   per_position: np.ndarray, n_prefix: int) -> None:
    """Write into the buffer's flat per-token ``out`` the scores each window of ``rows`` keeps
    (``stitch_window_scores``), read from its model output row ``per_position`` [len(rows), S]
    whose content starts at column ``n_prefix``."""
    rows = np.asarray(rows, dtype=np.int64)
    content = plan.end[rows] - plan.start[rows]
    if len(rows) and per_position.shape[1] < n_prefix + content.max():
        raise ValueError(f"window outputs have {per_position.shape[1]} positions, fewer than {n_prefix} + {content.max()} tokens")
    keep = plan.keep_end[rows] - plan.keep_start[rows]
    row = segment_ids(keep)
    j = np.arange(len(row)) - segment_starts(keep)[row]  # position within the kept tokens
    keep_start = plan.keep_start[rows][row]
    column = n_prefix + keep_start - plan.start[rows][row] + j
    out[token_starts[plan.doc[rows]][row] + keep_start + j] = per_position[row, column]


def char_probabilities_batch(offsets: np.ndarray, token_probs: np.ndarray, token_counts: np.ndarray,
                             char_counts: np.ndarray) -> np.ndarray:
    """``char_probabilities`` of every document of a buffer, concatenated: ``offsets`` [N, 2] (each
    document's own) and ``token_probs`` [N] of all tokens, ``token_counts`` [D], ``char_counts`` [D]."""
    char_counts = np.asarray(char_counts, dtype=np.int64)
    char_starts = segment_starts(char_counts)
    total = int(char_counts.sum())
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    lengths = np.clip(offsets[:, 1] - offsets[:, 0], 0, None)
    firsts = offsets[:, 0] + char_starts[segment_ids(token_counts)]
    covered_chars = np.repeat(firsts - segment_starts(lengths), lengths) + np.arange(lengths.sum())
    probs = np.full(total, -1.0, dtype=np.float32)
    np.maximum.at(probs, covered_chars, np.repeat(np.asarray(token_probs, dtype=np.float32), lengths))
    covered = probs >= 0
    positions = np.arange(total)
    doc = segment_ids(char_counts)
    # nearest covered character on each side within the same document
    last = np.maximum.accumulate(np.where(covered, positions, -1))
    nxt = np.minimum.accumulate(np.where(covered, positions, total)[::-1])[::-1]
    has_prev, has_next = last >= char_starts[doc], nxt < (char_starts + char_counts)[doc]
    prev_val, next_val = probs[np.clip(last, 0, max(total - 1, 0))], probs[np.clip(nxt, 0, max(total - 1, 0))]
    gap = np.where(has_prev & has_next, np.minimum(prev_val, next_val), np.float32(0))
    return np.where(covered, probs, gap).astype(np.float32)


def spans_batch(char_probs: np.ndarray, char_counts: np.ndarray, threshold: float) -> list[list[Span]]:
    """``spans_from_char_probs`` of every document of a buffer from their concatenated ``char_probs``."""
    char_counts = np.asarray(char_counts, dtype=np.int64)
    char_starts = segment_starts(char_counts)
    flagged = np.asarray(char_probs, dtype=np.float32) >= np.float32(threshold)
    doc_start = np.zeros(len(flagged), dtype=bool)
    doc_start[char_starts[char_counts > 0]] = True
    doc_end = np.zeros(len(flagged), dtype=bool)
    doc_end[(char_starts + char_counts - 1)[char_counts > 0]] = True
    before = np.concatenate([[False], flagged[:-1]]) & ~doc_start
    after = np.concatenate([flagged[1:], [False]]) & ~doc_end
    starts = np.flatnonzero(flagged & ~before)
    ends = np.flatnonzero(flagged & ~after) + 1
    bounds = np.stack([starts, ends], axis=1).ravel()
    char_probs = np.asarray(char_probs)
    padded = np.append(char_probs, np.zeros(1, char_probs.dtype))  # reduceat needs indices < len
    maxima = np.maximum.reduceat(padded, bounds)[::2].tolist() if len(bounds) else []
    doc = np.searchsorted(char_starts, starts, side="right") - 1
    local_starts = (starts - char_starts[doc]).tolist()
    local_ends = (ends - char_starts[doc]).tolist()
    spans: list[list[Span]] = [[] for _ in char_counts]
    for d, s, e, m in zip(doc.tolist(), local_starts, local_ends, maxima):
        spans[d].append(Span(s, e, m))
    return spans
