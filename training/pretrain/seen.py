"""Which training-split items a run actually trained on.

A run with a budget below one pass sees only part of the training split, so "absorbed knowledge"
can only be asked of the items whose text was among its targets. The order of the samples is fixed
by the seed (``MaskedShards`` with ``shuffle_seed = seed * 1000 + epoch``, the order
``pretrain.train.shard_batches`` uses), so the samples of its first ``steps`` batches can be listed
again after the fact; an item counts as seen when every token of its passage was a target.
Filtered runs of the same seed read the same stream further (their budget counts unmasked tokens),
so the items an unfiltered run saw were in every token-filtered run's stream too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tokfilter.errors import TokfilterError


def consumed_samples(num_samples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Sample indices of the first ``steps`` batches (``drop_last``: a pass yields
    ``num_samples // batch_size`` batches), over as many shuffled passes as they take."""
    per_epoch = num_samples // batch_size
    if per_epoch < 1:
        raise TokfilterError(f"shards: {num_samples} samples make no batch of {batch_size}")
    taken, epoch, remaining = [], 0, steps
    while remaining > 0:
        n = min(remaining, per_epoch)
        order = np.random.default_rng(seed * 1000 + epoch).permutation(num_samples)
        taken.append(order[: n * batch_size])
        remaining -= n
        epoch += 1
    return np.unique(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)


def target_coverage(num_tokens: int, seq_len: int, samples: np.ndarray) -> np.ndarray:
    """True at every stream position that was a target: sample ``k`` predicts positions
    ``k*seq_len + 1 .. (k+1)*seq_len``."""
    covered = np.zeros(num_tokens, dtype=bool)
    for k in samples:
        covered[k * seq_len + 1 : (k + 1) * seq_len + 1] = True
    return covered


def seen_item_ids(shards_dir: Path, train_jsonl: Path, tokenizer_path: Path, seq_len: int, batch_size: int,
                  steps: int, seed: int) -> set[str]:
    """Item ids of the training passages whose every token was a target of the first ``steps``
    batches of an unfiltered run on ``shards_dir``."""
    from tokfilter.clients import MaskedShards
    from tokfilter.clients.projection import TargetTokenizer
    from tokfilter.clients.shards.writer import open_shards

    stream = MaskedShards(shards_dir, seq_len, mode="nomask")
    covered = target_coverage(stream.num_tokens, seq_len,
                              consumed_samples(stream.num_samples, batch_size, steps, seed))
    docs = {}
    with open(train_jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                docs[doc["id"]] = doc
    _, shards = open_shards(shards_dir)
    tokenizer = TargetTokenizer(tokenizer_path)
    seen, offset = set(), 0
    for shard in shards:
        for doc_id, start, length in zip(shard.doc_ids, shard.starts, shard.lengths):
            doc = docs.get(doc_id)
            position = offset + int(start)
            if doc is None or not covered[position : position + int(length)].any():
                continue
            encoding = tokenizer.encode([doc["text"]])[0]
            if len(encoding.ids) != length:
                raise TokfilterError(f"shards: document {doc_id} has {length} tokens in {shards_dir} but "
                                     f"{len(encoding.ids)} with {tokenizer_path}: another tokenizer or corpus")
            for passage in doc["meta"]["passages"]:
                inside = np.nonzero((encoding.starts < passage["end"]) & (encoding.ends > passage["start"]))[0]
                if len(inside) and covered[position + inside].all():
                    seen.add(passage["item_id"])
        offset += len(shard.ids)
    return seen


def seen_items_of_run(run_dir: Path, shards_dir: Path, corpus_dir: Path, tokenizer_path: Path) -> set[str]:
    """``seen_item_ids`` for a finished run, from its ``summary.json`` (steps, seq_len, batch size, seed)."""
    summary_path = Path(run_dir) / "summary.json"
    if not summary_path.is_file():
        raise TokfilterError(f"run: {summary_path} not found (a run directory written by `tokfilter pretrain`)")
    summary = json.loads(summary_path.read_text())
    config = summary["config"]
    return seen_item_ids(Path(shards_dir), Path(corpus_dir) / "train.jsonl", Path(tokenizer_path), config["seq_len"],
                         config["batch_size"], summary["steps"], config["seed"])
