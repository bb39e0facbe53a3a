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
    width = max((len(s) for s in sequences), default=0)
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
