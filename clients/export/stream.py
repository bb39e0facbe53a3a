"""The streaming core of ``tokfilter export``: masked shards in, blocks of (ids, label mask, document
lengths) out, with exactly ``MaskedShards``' semantics for each mode.

Every format writer sees the same token stream MaskedShards cuts into samples: the documents (each
followed by its end-of-text token) in shard order, in ``document`` mode only the kept ones. Next to
each token id is its *label mask* bit: False where that token must never be a training target
(MaskedShards gives the position predicting it weight 0). In ``remove`` mode the flagged ids are
already ``[hidden]``. Shards are memory-mapped and processed a block of whole documents at a time
(``block_tokens``, or one document when it is longer), with numpy only, so memory stays bounded and
no Python runs per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from tokfilter.clients.shards.masked import MODES
from tokfilter.clients.shards.writer import Shard, open_shard, read_manifest
from tokfilter.errors import TokfilterError
from tokfilter.progress import progress_bar

DEFAULT_BLOCK_TOKENS = 1 << 24
_FLOAT16_POSITIVE_INF = 0x7C00  # bits of +inf; larger non-negative int16 views are NaNs


@dataclass(frozen=True)
class Block:
    """Consecutive whole documents of one source shard (``part``, its index in the manifest)."""

    part: int
    ids: np.ndarray  # the shards' dtype (uint16 or uint32); [hidden] in place of flagged ids in `remove`
    label_mask: np.ndarray  # bool, same length: False = never a training target
    doc_lengths: np.ndarray  # int64, tokens of each document including its end-of-text token
    source_tokens: int  # tokens of the shard this block covers (more than len(ids) when `document` drops some)


@dataclass(frozen=True)
class StreamInfo:
    """What a writer needs to describe its output (and a trainer to read it)."""

    dtype: np.dtype
    eot_id: int
    hidden_id: int | None
    vocab_size: int | None
    mode: str
    threshold: float
    doc_threshold: float
    parts: int  # shards in the manifest
    tokens: int  # tokens in the shards (before `document` drops any)

    def describe(self) -> dict:
        return {"dtype": self.dtype.name, "eot_id": self.eot_id, "hidden_id": self.hidden_id,
                "vocab_size": self.vocab_size, "mode": self.mode, "threshold": self.threshold,
                "doc_threshold": self.doc_threshold}


def flagged_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """``probs.astype(np.float32) >= threshold`` (MaskedShards' test) for float16 ``probs``, 30x faster.

    float16 -> float32 is exact and monotone, so the test is ``p >= h`` for ``h`` the smallest float16
    whose float32 value reaches the float32 threshold; for non-negative float16 values that order is
    the order of their bits read as int16, and NaN bit patterns sit above +inf's."""
    probs = np.asarray(probs)
    if probs.dtype != np.float16:
        raise TypeError(f"probs must be float16, got {probs.dtype}")
    t32 = np.float32(threshold)
    h = np.float16(t32)
    if np.float32(h) < t32:
        h = np.nextafter(h, np.float16(np.inf))
    h_bits = int(np.array(h).view(np.int16))
    if not 0 < h_bits <= _FLOAT16_POSITIVE_INF:  # threshold 0 (where -0.0 counts) or beyond float16
        return probs.astype(np.float32) >= t32
    bits = probs.view(np.int16)
    return (bits >= h_bits) & (bits <= _FLOAT16_POSITIVE_INF)


class ShardStream:
    """The token stream of a shard directory under one mode: ``info`` and ``blocks()``."""

    def __init__(self, shard_dir: Path | str, mode: str, threshold: float | None = None,
                 doc_threshold: float | None = None, block_tokens: int = DEFAULT_BLOCK_TOKENS):
        if mode not in MODES:
            raise TokfilterError(f"mode must be one of {MODES}, got {mode!r}")
        if block_tokens < 1:
            raise TokfilterError(f"block_tokens must be >= 1, got {block_tokens}")
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(self.shard_dir)
        threshold = float(self.manifest["threshold"]) if threshold is None else float(threshold)
        doc_threshold = threshold if doc_threshold is None else float(doc_threshold)
        for name, value in (("threshold", threshold), ("doc_threshold", doc_threshold)):
            if not 0.0 <= value <= 1.0:
                raise TokfilterError(f"{name} must be in [0, 1], got {value}")
        hidden_id = self.manifest.get("hidden_id")
        if mode == "remove" and hidden_id is None:
            raise TokfilterError(f"mode 'remove' needs a [hidden] token, but the target tokenizer of {shard_dir} has none")
        self.block_tokens = block_tokens
        self.info = StreamInfo(
            dtype=np.dtype(self.manifest["dtype"]), eot_id=int(self.manifest["eot_id"]),
            hidden_id=None if hidden_id is None else int(hidden_id),
            vocab_size=self.manifest.get("target_tokenizer", {}).get("vocab_size"), mode=mode,
            threshold=threshold, doc_threshold=doc_threshold, parts=len(self.manifest["shards"]),
            tokens=sum(int(s["tokens"]) for s in self.manifest["shards"]),
        )

    def blocks(self) -> Iterator[Block]:
        for part, entry in enumerate(self.manifest["shards"]):
            yield from self._shard_blocks(part, open_shard(self.shard_dir, entry["name"]))

    def _shard_blocks(self, part: int, shard: Shard) -> Iterator[Block]:
        doc_lengths = shard.lengths + 1  # each document's end-of-text token
        if int(doc_lengths.sum()) != len(shard.ids) or len(shard.probs) != len(shard.ids):
            raise TokfilterError(f"{self.shard_dir}/{shard.name}: documents, ids and probs disagree in length")
        ends = np.cumsum(doc_lengths)
        first = 0
        while first < len(doc_lengths):
            lo = int(ends[first] - doc_lengths[first])
            last = max(first + 1, int(np.searchsorted(ends, lo + self.block_tokens, side="right")))
            yield self._block(part, shard, first, last, lo, int(ends[last - 1]))
            first = last

    def _block(self, part: int, shard: Shard, first: int, last: int, lo: int, hi: int) -> Block:
        """Documents ``[first, last)`` of ``shard`` (tokens ``[lo, hi)``) under the mode; in ``document``
        mode possibly none of them."""
        info = self.info
        ids, lengths = np.asarray(shard.ids[lo:hi]), shard.lengths[first:last] + 1
        if info.mode == "document":
            kept = shard.doc_scores[first:last] < info.doc_threshold
            if not kept.all():
                ids, lengths = ids[np.repeat(kept, lengths)], lengths[kept]
            return Block(part, ids, np.ones(len(ids), dtype=bool), lengths, hi - lo)
        if info.mode == "nomask":
            return Block(part, ids, np.ones(len(ids), dtype=bool), lengths, hi - lo)
        flagged = flagged_mask(shard.probs[lo:hi], info.threshold)
        if info.mode == "remove":
            ids = ids.copy()
            ids[flagged] = info.hidden_id
        return Block(part, ids, ~flagged, lengths, hi - lo)


class Progress:
    """Shard tokens processed, tokens/s and ETA on stderr (tqdm); silent when disabled."""

    def __init__(self, total_tokens: int, enabled: bool, desc: str = "export"):
        self.bar = progress_bar(enabled, total=total_tokens, unit="tok", unit_scale=True, desc=desc)

    def update(self, tokens: int) -> None:
        self.bar.update(tokens)

    def close(self) -> None:
        self.bar.close()
