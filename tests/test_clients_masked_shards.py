"""Shard writer and the training reader MaskedShards: masking position, modes, rank/worker split."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.clients import MaskedShards
from tokfilter.clients.shards.writer import MANIFEST, ShardWriter, open_shards, remove_unlisted_shards
from tokfilter.errors import TokfilterError

EOT, HIDDEN = 0, 1


def write_shards(out_dir, docs, shard_tokens=8, threshold=0.5, dtype="uint16"):
    """docs: list of (doc_id, ids, probs, doc_score)."""
    manifest = {"format": "tokfilter-shards", "version": 1, "dtype": dtype, "eot_id": EOT,
                "hidden_id": HIDDEN, "threshold": threshold, "inputs": [{"path": "x", "records_read": 0}]}
    writer = ShardWriter(out_dir, manifest, shard_tokens=shard_tokens)
    for i, (doc_id, ids, probs, score) in enumerate(docs):
        writer.add(doc_id, np.asarray(ids), np.asarray(probs), score)
        writer.advance(0, i + 1)
        writer.flush_if_full()
    writer.close()
    return out_dir


def test_writer_round_trip_and_manifest(tmp_path):
    docs = [("a", [5, 6, 7], [0.0, 0.9, 0.1], 0.2), ("b", [8] * 10, [0.6] * 10, 0.9), ("c", [], [], 0.0)]
    write_shards(tmp_path, docs, shard_tokens=4)
    manifest, shards = open_shards(tmp_path)
    assert manifest["complete"] and manifest["inputs"][0]["records_read"] == 3
    assert manifest["counts"] == {"docs": 3, "tokens": 13, "flagged": 11}
    assert [s.doc_ids for s in shards] == [["a"], ["b"], ["c"]]
    assert shards[0].ids.tolist() == [5, 6, 7, EOT] and shards[0].ids.dtype == np.uint16
    assert shards[0].probs.dtype == np.float16 and shards[0].probs[-1] == 0
    assert shards[1].doc_scores.tolist() == pytest.approx([0.9])
    assert shards[2].ids.tolist() == [EOT] and shards[2].lengths.tolist() == [0]
    assert not list(tmp_path.glob("*.tmp"))


def test_unlisted_shards_of_a_killed_run_are_removed(tmp_path):
    write_shards(tmp_path, [("a", [5, 6], [0, 0], 0.0)])
    (tmp_path / "shard-00001.ids.npy").write_bytes(b"partial")
    (tmp_path / "shard-00001.probs.npy.tmp").write_bytes(b"partial")
    removed = remove_unlisted_shards(tmp_path, json.loads((tmp_path / MANIFEST).read_text()))
    assert sorted(p.name for p in removed) == ["shard-00001.ids.npy", "shard-00001.probs.npy.tmp"]
    assert (tmp_path / "shard-00000.ids.npy").exists()


def test_mask_is_on_the_target_position(tmp_path):
    write_shards(tmp_path, [("a", [10, 11, 12, 13], [0.0, 0.0, 0.9, 0.0], 0.1)])
    (inputs, targets, weights), = list(MaskedShards(tmp_path, seq_len=4, threshold=0.5, mode="mask"))
    assert inputs.tolist() == [10, 11, 12, 13] and targets.tolist() == [11, 12, 13, EOT]
    # token 12 is flagged: the position whose *target* is 12 (index 1) gets weight 0, not index 2
    assert weights.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert inputs.dtype == targets.dtype == torch.int64 and weights.dtype == torch.float32


def test_remove_hides_flagged_ids_in_inputs_and_targets(tmp_path):
    write_shards(tmp_path, [("a", [10, 11, 12, 13], [0.0, 0.0, 0.9, 0.0], 0.1)])
    (inputs, targets, weights), = list(MaskedShards(tmp_path, seq_len=4, threshold=0.5, mode="remove"))
    assert inputs.tolist() == [10, 11, HIDDEN, 13] and targets.tolist() == [11, HIDDEN, 13, EOT]
    assert weights.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_nomask_and_threshold(tmp_path):
    write_shards(tmp_path, [("a", [10, 11, 12, 13], [0.0, 0.0, 0.7, 0.0], 0.1)])
    (_, _, weights), = list(MaskedShards(tmp_path, seq_len=4, threshold=0.5, mode="nomask"))
    assert weights.tolist() == [1.0] * 4
    (_, _, weights), = list(MaskedShards(tmp_path, seq_len=4, threshold=0.8, mode="mask"))
    assert weights.tolist() == [1.0] * 4


def test_threshold_none_is_the_manifests(tmp_path):
    write_shards(tmp_path, [("a", [10, 11, 12, 13], [0.0, 0.0, 0.7, 0.0], 0.1)], threshold=0.8)
    ds = MaskedShards(tmp_path, seq_len=4, threshold=None, mode="mask")
    assert ds.threshold == 0.8  # 0.7 stays below it: nothing masked
    (_, _, weights), = list(ds)
    assert weights.tolist() == [1.0] * 4


def test_document_mode_drops_documents_over_the_doc_threshold(tmp_path):
    docs = [("a", [10, 11], [0, 0], 0.1), ("b", [20, 21], [0.9, 0.9], 0.8), ("c", [30, 31, 32], [0, 0, 0], 0.3)]
    write_shards(tmp_path, docs, shard_tokens=4)
    ds = MaskedShards(tmp_path, seq_len=6, threshold=0.5, mode="document")
    (inputs, targets, weights), = list(ds)
    assert inputs.tolist() == [10, 11, EOT, 30, 31, 32] and targets.tolist() == [11, EOT, 30, 31, 32, EOT]
    assert weights.tolist() == [1.0] * 6
    assert MaskedShards(tmp_path, seq_len=6, threshold=0.5, mode="document", doc_threshold=0.9).num_samples == 1


def test_bad_arguments_name_the_field(tmp_path):
    write_shards(tmp_path, [("a", [10, 11], [0, 0], 0.1)])
    with pytest.raises(TokfilterError, match="mode must be one of"):
        MaskedShards(tmp_path, seq_len=4, mode="blur")
    with pytest.raises(TokfilterError, match="seq_len must be >= 1"):
        MaskedShards(tmp_path, seq_len=0)
    with pytest.raises(TokfilterError, match="no manifest.json"):
        MaskedShards(tmp_path / "missing", seq_len=4)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=8), seq_len=st.integers(1, 12),
       shard_tokens=st.integers(1, 40))
def test_samples_tile_the_stream_with_every_target_once(tmp_path_factory, lengths, seq_len, shard_tokens):
    out = tmp_path_factory.mktemp("s")
    rng = np.random.default_rng(len(lengths) * 100 + seq_len)
    docs = [(str(i), rng.integers(2, 500, n), rng.random(n), 0.0) for i, n in enumerate(lengths)]
    write_shards(out, docs, shard_tokens=shard_tokens)
    stream = np.concatenate([np.append(ids, EOT) for _, ids, _, _ in docs])
    ds = MaskedShards(out, seq_len=seq_len, mode="nomask")
    samples = list(ds)
    assert len(samples) == (len(stream) - 1) // seq_len
    if samples:
        targets = torch.cat([t for _, t, _ in samples]).numpy()
        inputs = torch.cat([i for i, _, _ in samples]).numpy()
        assert (targets == stream[1 : 1 + len(targets)]).all()
        assert (inputs == stream[: len(inputs)]).all()


@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_ranks_and_workers_partition_the_samples(tmp_path, shuffle_seed):
    bounds = np.cumsum([2] + [7 * i + 3 for i in range(12)])  # distinct ids: no two samples are equal
    docs = [(str(i), np.arange(bounds[i], bounds[i + 1]), np.zeros(bounds[i + 1] - bounds[i]), 0.0) for i in range(12)]
    write_shards(tmp_path, docs, shard_tokens=50)
    full = MaskedShards(tmp_path, seq_len=5, mode="nomask")
    assert full.num_samples > 20
    seen = []
    for rank in range(2):
        ds = MaskedShards(tmp_path, seq_len=5, mode="nomask", rank=rank, world_size=2, shuffle_seed=shuffle_seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        got = [tuple(x.tolist()) for x, _, _ in loader]
        assert len(got) == len(ds)
        seen += got
    expected = [tuple(full.sample(k)[0].tolist()) for k in range(full.num_samples)]
    assert sorted(seen) == sorted(expected)
    assert len(set(seen)) == len(seen) == full.num_samples
