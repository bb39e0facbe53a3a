"""Multiple-choice items: definition questions, cloze sequences that fit the model, the real sets."""

import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.mcq import REAL_SETS, build_questions, fit_cloze, load_real_sets

MCQ_DATA = Path(os.environ.get("TOKFILTER_MCQ_DATA", "/work/shared/data/mcq"))

items_strategy = st.lists(
    st.fixed_dictionaries({
        "source": st.sampled_from(["a", "b"]), "domain": st.sampled_from(["medicine", "biology"]),
        "split": st.sampled_from(["train", "test"]), "term": st.text(min_size=1, max_size=5),
        "definition": st.text(min_size=1, max_size=8),
    }),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(items=items_strategy, seed=st.integers(0, 100), split=st.sampled_from(["train", "test"]),
       cap=st.none() | st.integers(0, 5))
def test_questions_use_items_of_one_split_source_and_domain(items, seed, split, cap):
    by_def = {}
    for item in items:
        by_def.setdefault(item["definition"], []).append(item)
    questions = build_questions(items, split, seed, cap)
    for q in questions:
        assert len(q.options) == 4 and len(set(q.options)) == 4 and 0 <= q.answer < 4
        sources = {(i["source"], i["domain"]) for i in items if f"{i['term']}:" == q.prompt and i["split"] == split
                   and i["definition"] == q.options[q.answer]}
        assert sources, "the answer is the term's own definition in that split"
        groups = [{(i["source"], i["domain"]) for i in by_def[o] if i["split"] == split} for o in q.options]
        assert set.intersection(*groups) & sources  # every option from one shared (source, domain)
        assert q.set_name in {d for _, d in sources}
    if cap is not None:
        assert all(sum(q.set_name == d for q in questions) <= cap for d in ("medicine", "biology"))
    assert build_questions(items, split, seed, cap) == questions  # seeded


@settings(max_examples=200, deadline=None)
@given(prompt=st.lists(st.integers(0, 99), max_size=30), option=st.lists(st.integers(0, 99), min_size=1, max_size=30),
       seq_len=st.integers(1, 40))
def test_cloze_sequences_fit_and_keep_the_option(prompt, option, seq_len):
    seq, first = fit_cloze(prompt, option, seq_len)
    assert len(seq) <= seq_len + 1
    assert seq[first:] == option[: len(seq) - first]  # the option, whole unless longer than the model's window
    assert seq[first:] == option or len(seq[first:]) == seq_len
    assert seq[:first] == prompt[len(prompt) - first:]  # the end of the prompt
    if prompt:
        assert first >= 1  # a scored token always has context
    if prompt and len(prompt) + len(option) <= seq_len + 1:
        assert seq == prompt + option  # without a prompt the option is cut to seq_len (its first token has no context)


def test_real_sets_load_by_domain_group_when_the_data_exists():
    if not MCQ_DATA.is_dir():
        pytest.skip(f"no real multiple-choice data at {MCQ_DATA} (set TOKFILTER_MCQ_DATA)")
    items = load_real_sets(MCQ_DATA, max_per_set=50, seed=0)
    counts = {name: sum(i.set_name == name for i in items) for name in REAL_SETS}
    assert counts == {name: 50 for name in REAL_SETS}
    assert all(len(i.options) == 4 and 0 <= i.answer < 4 and i.prompt.startswith("Question: ") for i in items)
    assert load_real_sets(MCQ_DATA, max_per_set=50, seed=0) == items


def test_real_sets_name_the_flag_when_missing(tmp_path):
    with pytest.raises(TokfilterError, match="--mcq-data"):
        load_real_sets(tmp_path / "absent", 10, 0)
    with pytest.raises(TokfilterError, match="mmlu.jsonl"):
        load_real_sets(tmp_path, 10, 0)
