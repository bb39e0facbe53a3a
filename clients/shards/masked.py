"""The training-side reader of masked shards (stable API for the pretraining code).

    from tokfilter.clients import MaskedShards
    ds = MaskedShards("artifacts/shards", seq_len=256, threshold=0.5, mode="mask")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    for input_ids, targets, loss_weights in loader:      # int64, int64, float32; each [B, seq_len]
        loss = (F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                * loss_weights.flatten()).sum() / loss_weights.sum().clamp(min=1)

The shards' documents (each followed by an end-of-text token) form one token stream, cut into
``num_samples`` sequences of ``seq_len + 1`` tokens that overlap by one token: sample ``k`` covers
stream positions ``[k*seq_len, (k+1)*seq_len]``, so every target is predicted exactly once.

Modes (``threshold`` applies to token probabilities; ``doc_threshold``, default ``threshold``, to
document scores):
  * ``nomask``: every weight is 1 (the unfiltered baseline).
  * ``document``: documents whose document score >= ``doc_threshold`` are dropped from the stream.
  * ``mask``: weight 0 where the *target* token is flagged (probability >= threshold). The input
    position that predicts a flagged token is what is masked, not the flagged input itself.
  * ``remove``: flagged ids become the ``[hidden]`` id in inputs and targets, and their targets have
    weight 0, so the model never sees nor learns the forgotten tokens.

Samples are dealt round-robin to (rank, DataLoader worker) pairs: rank and world size come from the
arguments, else from ``torch.distributed`` when it is initialised. Together the pairs cover every
sample exactly once. ``shuffle_seed`` permutes the sample order identically on every rank first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tokfilter.clients.shards.writer import open_shards
from tokfilter.errors import TokfilterError

MODES = ("nomask", "document", "mask", "remove")


def flagged_tokens(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Which tokens a threshold flags: probability >= threshold, compared in float32."""
    return np.asarray(probs, dtype=np.float32) >= np.float32(threshold)


class MaskedShards(IterableDataset):
    """Yields ``(input_ids, targets, loss_weights)`` of length ``seq_len`` from a shard directory."""

    def __init__(
        self,
        shard_dir: Path | str,
        seq_len: int,
        threshold: float | None = 0.5,
        mode: str = "mask",
        doc_threshold: float | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_seed: int | None = None,
    ):
        if mode not in MODES:
            raise TokfilterError(f"mode must be one of {MODES}, got {mode!r}")
        if seq_len < 1:
            raise TokfilterError(f"seq_len must be >= 1, got {seq_len}")
        self.shard_dir = Path(shard_dir)
        self.manifest, shards = open_shards(self.shard_dir)
        if threshold is None:  # the token threshold the shards were written with (the model card's, or --threshold)
            threshold = float(self.manifest["threshold"])
        if not 0.0 <= threshold <= 1.0:
            raise TokfilterError(f"threshold must be in [0, 1], got {threshold}")
        self.seq_len = seq_len
        self.threshold = threshold
        self.doc_threshold = threshold if doc_threshold is None else doc_threshold
        self.mode = mode
        self.rank, self.world_size = rank, world_size
        self.shuffle_seed = shuffle_seed
        self.eot_id = int(self.manifest["eot_id"])
        self.hidden_id = self.manifest.get("hidden_id")
        if mode == "remove" and self.hidden_id is None:
            raise TokfilterError(f"mode 'remove' needs a [hidden] token, but the target tokenizer of {shard_dir} has none")
        self._pieces, self._piece_starts = self._stream_pieces(shards)
        self.num_tokens = int(self._piece_starts[-1])
        self.num_samples = max(0, (self.num_tokens - 1) // seq_len)

    def _stream_pieces(self, shards: list) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """The token stream as memory-mapped pieces (whole shards, or in ``document`` mode the kept
        documents with their end-of-text tokens) and the stream offset where each piece starts."""
        pieces = []
        for s in shards:
            if self.mode != "document":
                pieces.append((s.ids, s.probs))
                continue
            kept = s.doc_scores < self.doc_threshold
            for start, length in zip(s.starts[kept], s.lengths[kept]):
                pieces.append((s.ids[start : start + length + 1], s.probs[start : start + length + 1]))
        starts = np.concatenate([[0], np.cumsum([len(ids) for ids, _ in pieces], dtype=np.int64)])
        return pieces, starts

    def _slice(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream positions ``[lo, hi)`` as (int64 ids, float32 probs)."""
        first = int(np.searchsorted(self._piece_starts, lo, side="right")) - 1
        ids, probs = [], []
        i = first
        while i < len(self._pieces) and self._piece_starts[i] < hi:
            a = max(lo - self._piece_starts[i], 0)
            b = min(hi - self._piece_starts[i], len(self._pieces[i][0]))
            ids.append(self._pieces[i][0][a:b])
            probs.append(self._pieces[i][1][a:b])
            i += 1
        return np.concatenate(ids).astype(np.int64), np.concatenate(probs).astype(np.float32)

    def __len__(self) -> int:
        """Samples this rank's workers yield together (DataLoader uses it for progress)."""
        rank, world = self._rank_world()
        return len(range(rank, self.num_samples, world))

    def _rank_world(self) -> tuple[int, int]:
        if self.world_size is not None:
            rank, world = self.rank or 0, self.world_size
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise TokfilterError(f"rank must be in [0, world_size={world}), got {rank}")
        return rank, world

    def sample_indices(self) -> np.ndarray:
        """Indices of the samples this (rank, worker) yields, in order."""
        rank, world = self._rank_world()
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = np.arange(self.num_samples)
        if self.shuffle_seed is not None:
            order = np.random.default_rng(self.shuffle_seed).permutation(self.num_samples)
        return order[rank::world][worker::n_workers]

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample ``k`` of the stream: ``(input_ids, targets, loss_weights)``."""
        ids, probs = self._slice(k * self.seq_len, (k + 1) * self.seq_len + 1)
        flagged = flagged_tokens(probs, self.threshold)
        weights = np.ones(self.seq_len, dtype=np.float32)
        if self.mode in ("mask", "remove"):
            weights[flagged[1:]] = 0.0
        if self.mode == "remove":
            ids = np.where(flagged, np.int64(self.hidden_id), ids)
        return torch.from_numpy(ids[:-1].copy()), torch.from_numpy(ids[1:].copy()), torch.from_numpy(weights)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for k in self.sample_indices():
            yield self.sample(int(k))
