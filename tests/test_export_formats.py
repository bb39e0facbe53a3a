"""tokfilter export: every format, read back by its framework's own reader, carries exactly the
token stream and label mask MaskedShards yields, for every mode (and the flagging rule, property-tested)."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_clients_masked_shards import EOT, HIDDEN, write_shards

from tokfilter.cli import main as cli_main
from tokfilter.clients import MaskedShards
from tokfilter.clients.export import export_shards
from tokfilter.clients.export.stream import flagged_mask
from tokfilter.clients.shards.masked import MODES
from tokfilter.errors import TokfilterError

VOCAB = {"uint16": 600, "uint32": 70_000}  # shards' dtype -> the ids' range (uint32 above 65,536 ids)
# (threshold, doc_threshold) passed to export and MaskedShards; None: the manifest's 0.5
THRESHOLDS = [(None, None), (0.3, 0.7)]


@pytest.fixture(scope="module", params=["uint16", "uint32"])
def shard_dir(request, tmp_path_factory) -> Path:
    """Three shards of documents of mixed lengths (one empty), probabilities and document scores."""
    rng = np.random.default_rng(7)
    lengths = [5, 0, 17, 3, 40, 9, 1, 25, 12]
    docs = [(f"d{i}", rng.integers(2, VOCAB[request.param], n), rng.random(n), float(rng.random())) for i, n in enumerate(lengths)]
    out = write_shards(tmp_path_factory.mktemp("shards"), docs, shard_tokens=25, threshold=0.5, dtype=request.param)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 3
    return out


def check_against_masked_shards(shard_dir, mode, threshold, doc_threshold, ids, label_mask):
    """``ids``/``label_mask``: the exported stream as a framework read it back. With seq_len 1 every
    MaskedShards sample is one (input, target, weight), so all of the stream is compared."""
    ds = MaskedShards(shard_dir, seq_len=1, threshold=threshold, mode=mode, doc_threshold=doc_threshold)
    ids, label_mask = np.asarray(ids, dtype=np.int64), np.asarray(label_mask, dtype=bool)
    assert len(ids) == len(label_mask) == ds.num_tokens
    samples = [ds.sample(k) for k in range(ds.num_samples)]
    inputs = np.array([x.item() for x, _, _ in samples])
    targets = np.array([t.item() for _, t, _ in samples])
    weights = np.array([w.item() for _, _, w in samples])
    assert (inputs == ids[:-1]).all() and (targets == ids[1:]).all()
    assert (weights == label_mask[1:]).all()  # the first token is never a target
    if mode in ("mask", "remove"):
        assert not label_mask.all()  # the fixture flags tokens at both thresholds: the comparison has teeth
    if mode == "remove":
        assert (ids[~label_mask] == HIDDEN).all()


def export(shard_dir, tmp_path, fmt, mode, threshold, doc_threshold) -> Path:
    out = tmp_path / fmt
    record = export_shards(shard_dir, out, fmt, mode, threshold, doc_threshold, progress=False, block_tokens=16)
    assert record["threshold"] == (0.5 if threshold is None else threshold)
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold,doc_threshold", THRESHOLDS)
def test_olmo_core_numpy_dataset_reads_ids_and_label_mask(shard_dir, tmp_path, mode, threshold, doc_threshold):
    from olmo_core.data import NumpyFSLDataset
    from olmo_core.data.utils import get_labels

    out = export(shard_dir, tmp_path, "olmo-core", mode, threshold, doc_threshold)
    info = json.loads((out / "export.json").read_text())
    files = info["files"]
    ds = NumpyFSLDataset(*[out / f["token_ids"] for f in files], label_mask_paths=[out / f["label_mask"] for f in files],
                         sequence_length=1, pad_token_id=EOT, eos_token_id=EOT, vocab_size=VOCAB[info["dtype"]],
                         dtype=getattr(np, info["dtype"]))
    ds.work_dir = tmp_path / "olmo_work"
    ds.prepare()
    items = [ds[i] for i in range(len(ds))]
    ids = np.concatenate([item["input_ids"].numpy() for item in items])
    label_mask = np.concatenate([item["label_mask"].numpy() for item in items])
    check_against_masked_shards(shard_dir, mode, threshold, doc_threshold, ids, label_mask)
    # OLMo-core's own labels: a masked token is never predicted (-100), the rest are the next ids
    import torch

    labels = get_labels({"input_ids": torch.from_numpy(ids)[None], "label_mask": torch.from_numpy(label_mask)[None]})[0]
    assert (labels[:-1].numpy() == np.where(label_mask[1:], ids[1:], -100)).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold,doc_threshold", THRESHOLDS)
def test_megatron_indexed_datasets_read_tokens_and_loss_mask(shard_dir, tmp_path, mode, threshold, doc_threshold):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = export(shard_dir, tmp_path, "megatron", mode, threshold, doc_threshold)
    tokens, mask = IndexedDataset(str(out / "text_document")), IndexedDataset(str(out / "loss_mask_document"))
    shard_dtype = json.loads((shard_dir / "manifest.json").read_text())["dtype"]
    assert tokens.index.dtype == {"uint16": np.uint16, "uint32": np.int32}[shard_dtype] and mask.index.dtype == np.uint8
    assert (tokens.sequence_lengths == mask.sequence_lengths).all() and (tokens.document_indices == np.arange(len(tokens) + 1)).all()
    docs = [tokens[i] for i in range(len(tokens))]
    assert all(d[-1] == EOT for d in docs)  # one sequence per document, its end-of-text token last
    ids = np.concatenate(docs)
    label_mask = np.concatenate([mask[i] for i in range(len(mask))])
    check_against_masked_shards(shard_dir, mode, threshold, doc_threshold, ids, label_mask)
    # the partial reads GPTDataset makes (document, offset, length) line up in both
    assert (mask.get(len(mask) - 1, offset=1, length=2) == label_mask[-len(docs[-1]) + 1 :][:2]).all()


@pytest.mark.parametrize("extra_token", [True, False])
def test_megatron_gpt_dataset_loss_mask_carries_the_mask(shard_dir, tmp_path, extra_token):
    """In `remove` mode the masked tokens are exactly the [hidden] ids, so every label of every
    GPTDataset sample shows whether its loss must be masked."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    from tokfilter.clients.export.megatron_dataset import MaskedGPTDataset

    class Tokenizer:  # what GPTDataset asks of one
        vocab_size, eod, pad, unique_identifiers = VOCAB["uint32"], EOT, EOT, {"class": "test"}

    out = export(shard_dir, tmp_path, "megatron", "remove", None, None)
    prefix = str(out / "text_document")
    config = GPTDatasetConfig(random_seed=1, sequence_length=8, tokenizer=Tokenizer(), reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, path_to_cache=str(tmp_path / "cache"),
                              split="1,0,0", add_extra_token_to_sequence=extra_token)
    tokens = IndexedDataset(prefix)
    ds = MaskedGPTDataset(tokens, prefix, np.arange(len(tokens)), None, Split.train, config)
    masked = 0
    for i in range(len(ds)):
        item = ds[i]
        real = item["labels"] != EOT  # GPTDataset also masks its pad id (here the end-of-text id)
        assert ((item["loss_mask"] == 0) == (item["labels"] == HIDDEN))[real].all()
        masked += int((item["labels"] == HIDDEN).sum())
    assert masked > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold,doc_threshold", THRESHOLDS)
def test_hf_datasets_load_input_ids_and_labels(shard_dir, tmp_path, mode, threshold, doc_threshold):
    import datasets

    out = export(shard_dir, tmp_path, "hf", mode, threshold, doc_threshold)
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert ds.column_names == ["input_ids", "labels"]
    ids = np.concatenate([np.asarray(r, dtype=np.int64) for r in ds["input_ids"]])
    labels = np.concatenate([np.asarray(r, dtype=np.int64) for r in ds["labels"]])
    label_mask = labels != -100
    assert (labels[label_mask] == ids[label_mask]).all()
    check_against_masked_shards(shard_dir, mode, threshold, doc_threshold, ids, label_mask)


def read_mds(out: Path) -> list[dict]:
    """Samples of an MDS dataset, decoded by the format's definition (streaming.base.format.mds):
    mosaicml-streaming itself cannot be installed beside tokfilter (it pins transformers<5)."""
    index = json.loads((out / "index.json").read_text())
    assert index["version"] == 2
    samples = []
    for shard in index["shards"]:
        assert shard["format"] == "mds" and shard["version"] == 2 and shard["compression"] is None
        data = (out / shard["raw_data"]["basename"]).read_bytes()
        assert len(data) == shard["raw_data"]["bytes"]
        n, = struct.unpack_from("<I", data, 0)
        assert n == shard["samples"]
        offsets = np.frombuffer(data, np.uint32, n + 1, 4)
        config = json.loads(data[4 + 4 * (n + 1) : offsets[0]])
        assert {k: config[k] for k in ("column_names", "column_encodings", "column_sizes")} == {
            k: shard[k] for k in ("column_names", "column_encodings", "column_sizes")}
        for begin, end in zip(offsets[:-1], offsets[1:]):
            sample, pos = {}, 0
            raw = data[begin:end]
            sizes = np.frombuffer(raw, np.uint32, len(shard["column_names"]))
            pos = 4 * len(sizes)
            for name, encoding, size in zip(shard["column_names"], shard["column_encodings"], sizes):
                kind, dtype = encoding.split(":")
                value = raw[pos : pos + size]
                ndim, shape_code = value[0] >> 2, value[0] & 3
                shape_dtype = np.dtype(["uint8", "uint16", "uint32", "uint64"][shape_code])
                shape = np.frombuffer(value, shape_dtype, ndim, 1)
                sample[name] = np.frombuffer(value, dtype, offset=1 + ndim * shape_dtype.itemsize).reshape(shape)
                pos += size
            samples.append(sample)
    return samples


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold,doc_threshold", THRESHOLDS)
def test_mds_samples_hold_input_ids_and_label_mask(shard_dir, tmp_path, mode, threshold, doc_threshold):
    out = export(shard_dir, tmp_path, "mds", mode, threshold, doc_threshold)
    samples = read_mds(out)
    ids = np.concatenate([s["input_ids"] for s in samples])
    label_mask = np.concatenate([s["label_mask"] for s in samples]).astype(bool)
    shard_dtype = json.loads((shard_dir / "manifest.json").read_text())["dtype"]
    assert all(s["input_ids"][-1] == EOT and s["input_ids"].dtype == shard_dtype for s in samples)
    check_against_masked_shards(shard_dir, mode, threshold, doc_threshold, ids, label_mask)


def test_mds_shards_split_at_the_size_limit(shard_dir, tmp_path):
    from tokfilter.clients.export.mds import MdsWriter
    from tokfilter.clients.export.stream import ShardStream

    stream = ShardStream(shard_dir, "mask")
    out = tmp_path / "mds"
    out.mkdir()
    writer = MdsWriter(out, stream.info, size_limit=700)
    for block in stream.blocks():
        writer.write(block)
    writer.close()
    index = json.loads((out / "index.json").read_text())
    # a shard stays under the limit unless one sample alone exceeds it (MDSWriter's rule too)
    assert len(index["shards"]) > 1 and all(s["raw_data"]["bytes"] <= 700 or s["samples"] == 1 for s in index["shards"])
    whole = tmp_path / "whole"
    export_shards(shard_dir, whole, "mds", "mask", progress=False)
    assert [s["input_ids"].tolist() for s in read_mds(out)] == [s["input_ids"].tolist() for s in read_mds(whole)]


@settings(max_examples=200, deadline=None)
@given(bits=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=64),
       threshold=st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.5, 0.7, 1e-8, 0.99995])))
def test_flagged_mask_is_masked_shards_float32_test(bits, threshold):
    probs = np.array(bits, dtype=np.uint16).view(np.float16)
    assert (flagged_mask(probs, threshold) == (probs.astype(np.float32) >= threshold)).all()


def test_cli_exports_and_refuses_bad_input(shard_dir, tmp_path, capsys):
    out = tmp_path / "olmo"
    assert cli_main(["export", str(shard_dir), "--format", "olmo-core", "--mode", "mask", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["mode"] == "mask" and record["threshold"] == 0.5 and record["masked_tokens"] > 0
    assert cli_main(["export", str(shard_dir), "--format", "olmo-core", "--mode", "mask", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert cli_main(["export", str(shard_dir), "--format", "hf", "--mode", "mask", "--threshold", "1.5",
                     "--out", str(tmp_path / "x")]) == 2
    assert "threshold must be in [0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(TokfilterError, match="format must be one of"):
        export_shards(shard_dir, tmp_path / "y", "parquet", "mask")
