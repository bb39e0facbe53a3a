"""The pretraining loop on real shards (written by the shard writer): budget rule, masking, seeding, CLI."""

import json
import math

import numpy as np
import pytest
import torch

from tokfilter.cli import main as cli_main
from tokfilter.clients.shards.writer import ShardWriter
from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.train import PretrainConfig, shard_batches, train

EOT, HIDDEN, VOCAB = 0, 1, 32


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread than on contended two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_pattern_shards(out_dir, n_docs=40, flag_token=7):
    """Documents repeating 2..9; token ``flag_token`` is flagged (p=0.9), the rest p=0.1.
    Every fourth document gets a high document score."""
    manifest = {"format": "tokfilter-shards", "version": 1, "dtype": "uint16", "eot_id": EOT,
                "hidden_id": HIDDEN, "threshold": 0.5, "inputs": [{"path": "synthetic", "records_read": 0}]}
    writer = ShardWriter(out_dir, manifest, shard_tokens=256)
    for i in range(n_docs):
        ids = np.tile(np.arange(2, 10), 4)
        probs = np.where(ids == flag_token, 0.9, 0.1)
        writer.add(f"d{i}", ids, probs, 0.9 if i % 4 == 0 else 0.1)
        writer.advance(0, i + 1)
    writer.close()
    return out_dir


def run(tmp_path, run_type, **kw):
    shards = tmp_path / "shards"
    if not shards.exists():
        write_pattern_shards(shards)
    cfg = PretrainConfig(out_dir=tmp_path / run_type, size="tiny", run_type=run_type, seq_len=16, batch_size=4,
                         token_budget=kw.pop("token_budget", 3000), lr=1e-2, log_every=5, **kw)
    return train(cfg, VOCAB, shard_batches(shards, cfg))


def test_budget_counts_unmasked_targets_and_loss_falls(tmp_path):
    summary = run(tmp_path, "mask")
    # 1 in 8 targets is flagged (token 7) and 1 in 33 is an end-of-text: about 1/8 of targets masked
    assert summary["unmasked_tokens"] >= 3000
    assert summary["total_tokens"] > summary["unmasked_tokens"]
    assert 0.09 < summary["masked_fraction"] < 0.16
    log = [json.loads(line) for line in (tmp_path / "mask" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] - 0.5  # a periodic pattern is learnable
    assert all(r["unmasked_tokens"] <= r["total_tokens"] for r in log)
    assert (tmp_path / "mask" / "model.pt").is_file() and not (tmp_path / "mask" / "checkpoint.pt").exists()


def test_nomask_counts_every_target_and_remove_hides_flagged_tokens(tmp_path):
    nomask = run(tmp_path, "nomask", token_budget=500)
    assert nomask["unmasked_tokens"] == nomask["total_tokens"]
    remove = run(tmp_path, "remove", token_budget=500)
    assert remove["total_tokens"] > remove["unmasked_tokens"]


def test_training_is_seeded(tmp_path):
    a = run(tmp_path / "a", "document", token_budget=800, seed=3)
    b = run(tmp_path / "b", "document", token_budget=800, seed=3)
    assert a["final_train_loss"] == b["final_train_loss"] and a["steps"] == b["steps"]
    wa = torch.load(tmp_path / "a" / "document" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "document" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_interruption_gives_the_uninterrupted_weights(tmp_path):
    shards = write_pattern_shards(tmp_path / "shards")

    def config(out):
        return PretrainConfig(out_dir=out, size="tiny", run_type="mask", seq_len=16, batch_size=4, token_budget=3000,
                              lr=1e-2, log_every=5, checkpoint_every=3, resume=True)

    whole = train(config(tmp_path / "whole"), VOCAB, shard_batches(shards, config(tmp_path / "whole")))
    assert whole["steps"] > 2 * 20  # more than two epochs of 20 batches

    def interrupted_batches(cfg, after):
        make, served = shard_batches(shards, cfg), [0]

        def batches(epoch):
            for batch in make(epoch):
                served[0] += 1
                if served[0] > after:
                    raise KeyboardInterrupt
                yield batch
        return batches

    cfg = config(tmp_path / "split")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, VOCAB, interrupted_batches(cfg, after=25))  # killed in the second epoch
    assert (tmp_path / "split" / "checkpoint.pt").is_file()
    resumed = train(cfg, VOCAB, shard_batches(shards, cfg))
    assert (resumed["steps"], resumed["unmasked_tokens"], resumed["total_tokens"]) == (
        whole["steps"], whole["unmasked_tokens"], whole["total_tokens"])
    wa = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "split" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    other = PretrainConfig(out_dir=tmp_path / "split", size="tiny", run_type="mask", seq_len=16, batch_size=4,
                           token_budget=3000, lr=2e-2, checkpoint_every=3, resume=True)
    with pytest.raises(KeyboardInterrupt):
        train(other, VOCAB, interrupted_batches(other, after=4))
    with pytest.raises(TokfilterError, match="lr"):
        train(cfg, VOCAB, shard_batches(shards, cfg))


def test_all_masked_shards_fail_clearly(tmp_path):
    with pytest.raises(TokfilterError, match="threshold"):
        run(tmp_path, "mask", threshold=0.0, token_budget=100)


def test_a_filter_masking_nearly_everything_stops_at_the_seen_cap(tmp_path):
    # threshold 0.05 flags every word (p >= 0.1): only end-of-text targets stay, ~1 in 33
    summary = run(tmp_path, "mask", threshold=0.05, token_budget=1000, max_seen_factor=3.0)
    assert not summary["budget_reached"]
    assert 0 < summary["unmasked_tokens"] < 1000
    assert 3000 <= summary["total_tokens"] < 3000 + 4 * 16  # stops within one batch of the cap
    assert summary["passes"] > 1  # one pass holds ~1300 targets
    assert run(tmp_path, "nomask", token_budget=1000, max_seen_factor=3.0)["budget_reached"]
    with pytest.raises(TokfilterError, match="max_seen_factor"):
        run(tmp_path, "remove", max_seen_factor=0.5)


def test_cli_rejects_bad_threshold(tmp_path, capsys):
    rc = cli_main(["pretrain", "--out", str(tmp_path / "r"), "--shards", str(tmp_path), "--threshold", "1.5"])
    assert rc == 2
    assert "threshold" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_the_budget_rule(tmp_path):
    summary = run(tmp_path, "mask", token_budget=1000, device="cuda")
    assert summary["unmasked_tokens"] >= 1000 and summary["total_tokens"] > summary["unmasked_tokens"]
    assert math.isfinite(summary["final_train_loss"])
