"""Evaluation harness: question building, chunking, batched scoring, and the Evaluator on the tiny corpus."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tokfilter.training.pretrain.evaluate import (
    EvalConfig, Evaluator, FORGET, build_questions, chunk_sequence, score_sequences,
)
from tokfilter.training.pretrain.model import GPT, config_for_size
from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer

items_strategy = st.lists(
    st.fixed_dictionaries({
        "source": st.sampled_from(["a", "b"]), "domain": st.sampled_from(["medicine", "biology"]),
        "split": st.sampled_from(["train", "test"]), "term": st.text(min_size=1, max_size=5),
        "definition": st.text(min_size=1, max_size=8),
    }),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(items=items_strategy, seed=st.integers(0, 100))
def test_questions_use_held_out_items_of_one_source_and_domain(items, seed):
    by_def = {}
    for item in items:
        by_def.setdefault(item["definition"], []).append(item)
    for q in build_questions(items, "test", seed):
        assert len(q.options) == 4 and len(set(q.options)) == 4 and 0 <= q.answer < 4
        sources = {(i["source"], i["domain"]) for i in items if i["term"] == q.term and i["split"] == "test"
                   and i["definition"] == q.options[q.answer]}
        assert sources, "the answer is the term's own test-split definition"
        # every option is the definition of a test item of one shared (source, domain)
        groups = [{(i["source"], i["domain"]) for i in by_def[o] if i["split"] == "test"} for o in q.options]
        assert set.intersection(*groups) & sources
        assert q.domain in {d for _, d in sources}


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
    mc = evaluator.multiple_choice(model)
    assert mc and all(r["questions"] > 0 and 0 <= r["accuracy"] <= 1 and r["chance"] == 0.25 for r in mc.values())
    json.dumps(mc)
    start = losses[FORGET]["loss"]
    reached = evaluator.adversarial_finetune(model, start - 0.3, max_tokens=20_000, eval_every=512, lr=1e-2)
    assert reached["tokens_to_recover"] is not None
    assert reached["curve"][-1][1] <= start - 0.3 < reached["curve"][0][1]
    never = evaluator.adversarial_finetune(model, 0.0, max_tokens=1024, eval_every=512)
    assert never["tokens_to_recover"] is None and never["curve"][-1][0] >= 1024
