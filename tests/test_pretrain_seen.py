"""Which training items a run read: the sample order of pretraining, replayed after the fact."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokfilter.clients import MaskedShards
from tokfilter.clients.projection import TargetTokenizer
from tokfilter.clients.shards.writer import ShardWriter
from tokfilter.training.pretrain.seen import consumed_samples, seen_item_ids, target_coverage
from tokfilter.training.pretrain.tokenizer import train_target_tokenizer
from tokfilter.training.pretrain.train import PretrainConfig, shard_batches
from tokfilter.windows import load_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@settings(max_examples=100, deadline=None)
@given(num_samples=st.integers(1, 200), batch_size=st.integers(1, 16), steps=st.integers(0, 60), seed=st.integers(0, 50))
def test_consumed_samples_are_the_first_batches_of_each_shuffled_pass(num_samples, batch_size, steps, seed):
    per_epoch = num_samples // batch_size
    if per_epoch < 1:
        return
    taken = consumed_samples(num_samples, batch_size, steps, seed)
    first_pass = np.random.default_rng(seed * 1000).permutation(num_samples)[: min(steps, per_epoch) * batch_size]
    assert set(first_pass.tolist()) <= set(taken.tolist()) <= set(range(num_samples))
    if steps <= per_epoch:
        assert sorted(taken.tolist()) == sorted(first_pass.tolist())


@settings(max_examples=100, deadline=None)
@given(num_tokens=st.integers(2, 300), seq_len=st.integers(1, 20), data=st.data())
def test_coverage_marks_exactly_the_targets_of_the_samples(num_tokens, seq_len, data):
    num_samples = (num_tokens - 1) // seq_len
    if num_samples < 1:
        return
    samples = np.asarray(sorted(data.draw(st.sets(st.integers(0, num_samples - 1)))), dtype=np.int64)
    covered = target_coverage(num_tokens, seq_len, samples)
    assert covered.sum() == len(samples) * seq_len and not covered[0]
    for k in samples:
        assert covered[k * seq_len + 1 : (k + 1) * seq_len + 1].all()


@pytest.fixture()
def tiny_stream(tmp_path):
    """A corpus of definition passages, its target tokenizer and its shards (the real formats)."""
    rng = np.random.default_rng(0)
    docs, item = [], 0
    for d in range(12):
        parts, passages, position = [], [], 0
        for _ in range(3):
            words = " ".join(rng.choice(WORDS, size=6))
            sentence = f"term{item}: {words} number {item}."
            if parts:
                parts.append(" ")
                position += 1
            passages.append({"start": position, "end": position + len(sentence), "domain": "medicine",
                             "source": "s", "item_id": f"s:{item}"})
            parts.append(sentence)
            position += len(sentence)
            item += 1
        docs.append({"id": f"train-{d:06d}", "text": "".join(parts), "meta": {"passages": passages}})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tokenizer_path = train_target_tokenizer((d["text"] for d in docs), tmp_path / "tokenizer.json", vocab_size=300)
    target = TargetTokenizer(tokenizer_path)
    manifest = {"format": "tokfilter-shards", "version": 1, "dtype": "uint16", "eot_id": target.eot_id,
                "hidden_id": target.hidden_id, "threshold": 0.5, "inputs": [{"path": "train.jsonl", "records_read": 0}]}
    writer = ShardWriter(tmp_path / "shards", manifest, shard_tokens=200)
    for i, (doc, enc) in enumerate(zip(docs, target.encode([d["text"] for d in docs]))):
        writer.add(doc["id"], enc.ids, np.zeros(len(enc.ids), np.float32), 0.0)
        writer.advance(0, i + 1)
        writer.flush_if_full()
    writer.close()
    return tmp_path, docs, tokenizer_path


def test_the_replayed_samples_are_the_ones_pretraining_reads(tiny_stream):
    root, _, _ = tiny_stream
    config = PretrainConfig(out_dir=root / "run", seq_len=16, batch_size=4, seed=3, run_type="nomask")
    steps = 5
    read = set()
    for index, (inputs, _, _) in enumerate(shard_batches(root / "shards", config)(0)):
        if index == steps:
            break
        read |= {tuple(row.tolist()) for row in inputs}
    stream = MaskedShards(root / "shards", 16, mode="nomask")
    replayed = {tuple(stream.sample(int(k))[0].tolist()) for k in consumed_samples(stream.num_samples, 4, steps, 3)}
    assert read == replayed


def test_seen_items_are_those_whose_every_token_was_a_target(tiny_stream):
    root, docs, tokenizer_path = tiny_stream
    stream = MaskedShards(root / "shards", 16, mode="nomask")
    everything = seen_item_ids(root / "shards", root / "train.jsonl", tokenizer_path, 16, 1, 10 * stream.num_samples, 0)
    first = docs[0]["meta"]["passages"][0]["item_id"]  # its first token is stream position 0, never a target
    assert first not in everything and len(everything) >= 30
    assert seen_item_ids(root / "shards", root / "train.jsonl", tokenizer_path, 16, 1, 0, 0) == set()
    window = MaskedShards(root / "shards", 64, mode="nomask")
    (k,) = consumed_samples(window.num_samples, 1, 1, 7)  # one sample of 64 targets
    one = seen_item_ids(root / "shards", root / "train.jsonl", tokenizer_path, 64, 1, 1, 7)
    targets = load_tokenizer(tokenizer_path).decode(window.sample(int(k))[1].tolist())
    texts = {p["item_id"]: d["text"][p["start"]:p["end"]] for d in docs for p in d["meta"]["passages"]}
    assert one and all(texts[item].replace(" ", "") in targets.replace(" ", "") for item in one)
