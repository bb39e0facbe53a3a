"""One reader of corpus JSONL files (training.corpus.build.read_corpus), used by training, evaluation,
the demo and the benchmarks: a bad line is an error naming the file and the line, never a traceback."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.errors import TokfilterError
from tokfilter.training.corpus.build import read_corpus
from tokfilter.training.pretrain.evaluate import EvalConfig, Evaluator
from tokfilter.training.pretrain.tokenizer import train_target_tokenizer

documents = st.lists(st.fixed_dictionaries({"id": st.text(max_size=5), "text": st.text(max_size=30)}), max_size=8)


@settings(max_examples=30, deadline=None)
@given(docs=documents, blank_every=st.integers(1, 4))
def test_documents_come_back_in_order_and_blank_lines_are_skipped(tmp_path_factory, docs, blank_every):
    path = tmp_path_factory.mktemp("reader") / "split.jsonl"
    lines = []
    for i, doc in enumerate(docs):
        lines.append(json.dumps(doc))
        if i % blank_every == 0:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n")
    assert list(read_corpus(path)) == docs


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(TokfilterError, match=r"test.jsonl.* line 2: invalid JSON"):
        list(read_corpus(path))


def test_evaluation_reports_a_bad_corpus_line_as_an_error(tmp_path):
    """The evaluator read test.jsonl with a reader of its own, whose bad line was a JSONDecodeError traceback."""
    tokenizer = train_target_tokenizer(["the heart pumps blood", "cells divide"] * 20, tmp_path / "tokenizer.json", 300)
    (tmp_path / "test.jsonl").write_text('{"text": "a", "meta": {"passages": []}}\nnot json\n')
    with pytest.raises(TokfilterError, match=r"test.jsonl.* line 2"):
        Evaluator(tmp_path, tokenizer, seq_len=16, config=EvalConfig(max_passages=1, max_questions=1))
