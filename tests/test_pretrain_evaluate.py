"""Evaluation harness: chunking, batched scoring, precision, and the Evaluator on the tiny corpus."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tokfilter.training.pretrain.evaluate import EvalConfig, Evaluator, FORGET, chunk_sequence, score_sequences
from tokfilter.training.pretrain.model import GPT, config_for_size
from tokfilter.training.precision import autocast, resolve_precision
from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer
from tokfilter.errors import TokfilterError

MCQ_DATA = Path(os.environ.get("TOKFILTER_MCQ_DATA", "/work/shared/data/mcq"))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), seq_len=st.integers(1, 40))
def test_chunks_predict_every_token_once(n, seq_len):
    ids = list(range(n))
    chunks = chunk_sequence(ids, seq_len)
    assert all(2 <= len(c) <= seq_len + 1 for c in chunks) or n == 1
    assert [t for c in chunks for t in c[1:]] == ids[1:]


def test_batched_scores_do_not_depend_on_padding_or_batch():
    torch.manual_seed(0)
    model = GPT(config_for_size("tiny", 30, 32)).eval()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 30, size=n).tolist() for n in (3, 17, 9, 33)]
    firsts = [1, 5, 2, 10]
    together = score_sequences(model, seqs, firsts, batch_size=4)
    for i, seq in enumerate(seqs):
        alone = score_sequences(model, [seq], [firsts[i]], batch_size=1)[0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-5)
        ids = torch.tensor(seq)
        with torch.no_grad():
            direct = model.token_losses(ids[None, :-1], ids[None, 1:])[0, firsts[i] - 1 :].sum()
        assert together[i, 1] == len(seq) - firsts[i]
        assert together[i, 0] == pytest.approx(float(direct), rel=1e-5)


@pytest.fixture(scope="module")
def target_tokenizer(tiny_corpus_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "train.jsonl")]), path, vocab_size=400)


def test_evaluator_on_tiny_corpus(tiny_corpus_dir, target_tokenizer):
    torch.manual_seed(0)
    evaluator = Evaluator(tiny_corpus_dir, target_tokenizer, seq_len=32, config=EvalConfig(max_passages=20, max_questions=10))
    model = GPT(config_for_size("tiny", 400, 32)).eval()
    losses = evaluator.domain_losses(model)
    assert set(losses) == {"medicine", "biology", "general"}
    for result in losses.values():  # an untrained model is near uniform: ln(400) = 5.99
        assert result["tokens"] > 0 and 5.0 < result["loss"] < 7.0
        rows = np.asarray(result["passages"])  # per passage (nats, tokens), 20 passages
        assert rows.shape == (20, 2) and rows[:, 0].sum() / rows[:, 1].sum() == pytest.approx(result["loss"], rel=1e-9)
    mc = evaluator.multiple_choice(model)
    assert set(mc) == {"held_out"}  # no absorbed items, no real sets given
    assert all(r["questions"] > 0 and 0 <= r["accuracy"] <= 1 and r["chance"] == 0.25 for r in mc["held_out"].values())
    json.dumps(mc)
    start = losses[FORGET]["loss"]
    reached = evaluator.adversarial_finetune(model, start - 0.3, max_tokens=20_000, eval_every=512, lr=1e-2)
    assert reached["tokens_to_recover"] is not None
    assert reached["curve"][-1][1] <= start - 0.3 < reached["curve"][0][1]
    never = evaluator.adversarial_finetune(model, 0.0, max_tokens=1024, eval_every=512)
    assert never["tokens_to_recover"] is None and never["curve"][-1][0] >= 1024


def test_absorbed_questions_come_from_the_training_items_given(tiny_corpus_dir, target_tokenizer):
    items = [json.loads(line) for line in open(tiny_corpus_dir / "items.jsonl")]
    train = [i for i in items if i["split"] == "train"]
    evaluator = Evaluator(tiny_corpus_dir, target_tokenizer, seq_len=32, config=EvalConfig(max_passages=5, max_questions=10),
                          absorbed_items={i["item_id"] for i in train})
    definitions = {i["definition"] for i in train}
    absorbed = evaluator.questions["absorbed"]
    assert absorbed and all(set(item.options) <= definitions for entries in absorbed.values() for item, _, _ in entries)
    nothing = Evaluator(tiny_corpus_dir, target_tokenizer, seq_len=32, config=EvalConfig(max_passages=5, max_questions=10),
                        absorbed_items=set())
    assert nothing.questions["absorbed"] == {}


def test_real_sets_are_scored_when_given(tiny_corpus_dir, target_tokenizer):
    if not MCQ_DATA.is_dir():
        pytest.skip(f"no real multiple-choice data at {MCQ_DATA} (set TOKFILTER_MCQ_DATA)")
    evaluator = Evaluator(tiny_corpus_dir, target_tokenizer, seq_len=32, config=EvalConfig(max_passages=5, max_questions=8),
                          mcq_data=MCQ_DATA)
    real = evaluator.multiple_choice(GPT(config_for_size("tiny", 400, 32)).eval())["real"]
    assert set(real) == {"mmlu_med", "medmcqa", "medqa", "mmlu_bio", "mmlu_other_science", "mmlu_general"}
    assert all(r["questions"] == 8 for r in real.values())
    for entries in evaluator.questions["real"].values():  # long questions keep their options whole
        assert all(len(seq) <= 33 and 1 <= first < len(seq) for _, seqs, firsts in entries for seq, first in zip(seqs, firsts))


def test_bf16_autocast_keeps_the_loss_in_float32_and_close_to_fp32():
    torch.manual_seed(0)
    model = GPT(config_for_size("tiny", 300, 32))
    ids = torch.randint(0, 300, (4, 33))
    weights = (torch.rand(4, 32) > 0.25).float()
    reference = model.loss(ids[:, :-1], ids[:, 1:], weights)
    with autocast("bf16", "cpu"):
        loss = model.loss(ids[:, :-1], ids[:, 1:], weights)
    assert loss.dtype == torch.float32 and float(loss.detach()) == pytest.approx(float(reference.detach()), abs=0.03)
    loss.backward()
    assert model.embed.weight.grad.dtype == torch.float32 and torch.isfinite(model.embed.weight.grad).all()
    bf16 = score_sequences(model.eval(), [ids[0].tolist()], [1], batch_size=1, precision="bf16")
    fp32 = score_sequences(model.eval(), [ids[0].tolist()], [1], batch_size=1, precision="fp32")
    assert bf16[0, 1] == fp32[0, 1] and bf16[0, 0] == pytest.approx(fp32[0, 0], rel=0.02)


def test_precision_resolution():
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if torch.cpu.get_capabilities().get("amx_bf16") else "fp32")
    with pytest.raises(TokfilterError, match="precision: 'fp16'"):
        resolve_precision("fp16", "cpu")
