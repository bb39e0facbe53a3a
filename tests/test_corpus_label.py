"""`tokfilter label`: a user's corpus labelled from a user lexicon or a teacher, in the corpus format training reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tokfilter.errors import TokfilterError
from tokfilter.scoring import ScoringPipeline
from tokfilter.training.classifier.train import load_split
from tokfilter.training.corpus.label import LabelSettings, label_corpus
from tokfilter.training.corpus.weak_labels import spans_are_valid

DOCS = [
    "The court heard the appeal. Rain fell on the hills all day.",
    "A jury found the defendant not guilty of the crime. Birds sang.",
    "Nothing about it here. Just a walk in the park.",
    "The Supreme Court ruled on the statute. The judge agreed.",
]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def by_id(out: Path) -> dict[str, dict]:
    docs = []
    for split in ("train", "validation"):
        docs += [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
    return {d["id"]: d for d in docs}


@pytest.fixture()
def lexicon(tmp_path) -> Path:
    path = tmp_path / "law.txt"
    path.write_text("# law terms\ncourt\n\njury\nSupreme Court\nnot guilty\nstatute\njudge\n")
    return path


def test_user_lexicon_labels_its_terms_in_the_training_format(tmp_path, lexicon):
    out = tmp_path / "law"
    manifest = label_corpus([str(write_jsonl(tmp_path / "in.jsonl", DOCS))], out,
                            LabelSettings(domain="law", lexicons=(lexicon,), validation_fraction=0.5))
    docs = by_id(out)
    assert sorted(docs) == ["d0", "d1", "d2", "d3"]
    assert manifest["lexicon_terms"] == 6 and sum(s["docs"] for s in manifest["splits"].values()) == 4
    labelled = {i: [d["text"][s:e] for s, e in d["meta"]["label_spans"]] for i, d in docs.items()}
    assert labelled == {"d0": ["court"], "d1": ["jury", "not guilty"], "d2": [], "d3": ["Supreme Court", "statute", "judge"]}
    for doc in docs.values():
        assert spans_are_valid(doc["meta"]["label_spans"], len(doc["text"]))
        assert doc["meta"]["split"] in ("train", "validation") and doc["meta"]["forget_domain"] == "law"
    d0 = docs["d0"]
    assert [d0["text"][p["start"]:p["end"]] for p in d0["meta"]["passages"]] == ["The court heard the appeal.", "Rain fell on the hills all day."]
    forget = [d["text"][p["start"]:p["end"]] for d in docs.values() for p in d["meta"]["passages"] if p["domain"] == "law"]
    assert forget == ["The Supreme Court ruled on the statute."]  # the one sentence at least half labelled
    assert load_split(out, "train")  # what train-classifier reads


def test_whole_sentences_labels_a_mostly_labelled_sentence_whole(tmp_path, lexicon):
    out = tmp_path / "law"
    label_corpus([str(write_jsonl(tmp_path / "in.jsonl", ["The judge agreed. Court statute jury. Rain."]))], out,
                 LabelSettings(domain="law", lexicons=(lexicon,), whole_sentences=True, validation_fraction=0.0))
    (doc,) = by_id(out).values()
    assert [doc["text"][s:e] for s, e in doc["meta"]["label_spans"]] == ["judge", "Court statute jury."]
    assert [p["domain"] for p in doc["meta"]["passages"]] == ["other", "law", "other"]


def test_parquet_input_gives_the_same_labels(tmp_path, lexicon):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(DOCS))], "text": DOCS}), tmp_path / "in.parquet")
    settings = LabelSettings(domain="law", lexicons=(lexicon,))
    label_corpus([str(tmp_path / "in.parquet")], tmp_path / "a", settings)
    label_corpus([str(write_jsonl(tmp_path / "in.jsonl", DOCS))], tmp_path / "b", settings)
    assert by_id(tmp_path / "a") == by_id(tmp_path / "b")


@pytest.mark.parametrize("kind", ["token", "joint"])
def test_teacher_tokens_at_its_threshold_become_labels(tmp_path, request, lexicon, kind):
    # a token model, or the joint model make demo trains (the adapted recipe's teacher)
    teacher = (request.getfixturevalue("tiny_models_dir") / "token_classifier" if kind == "token"
               else request.getfixturevalue("tiny_joint_model_dir"))
    pipeline = ScoringPipeline.from_model_dirs(teacher)
    probs = np.concatenate([r.token_probs for r in pipeline.score(DOCS)])
    threshold = float(np.quantile(probs, 0.7))  # a tiny model: flag its top 30% of tokens
    expected = {f"d{i}": [[s.start, s.end] for s in r.spans] for i, r in enumerate(pipeline.score(DOCS, threshold))}
    assert any(expected.values())
    empty_lexicon = tmp_path / "none.txt"
    empty_lexicon.write_text("zzzqqq\n")
    out = tmp_path / "taught"
    manifest = label_corpus([str(write_jsonl(tmp_path / "in.jsonl", DOCS))], out,
                            LabelSettings(lexicons=(empty_lexicon,), teacher=teacher, teacher_threshold=threshold))
    assert manifest["teacher_threshold"] == threshold
    assert {i: d["meta"]["label_spans"] for i, d in by_id(out).items()} == expected
    # teacher and lexicon labels are merged
    label_corpus([str(tmp_path / "in.jsonl")], tmp_path / "both",
                 LabelSettings(lexicons=(lexicon,), teacher=teacher, teacher_threshold=threshold))
    for doc_id, doc in by_id(tmp_path / "both").items():
        flagged = np.zeros(len(doc["text"]), bool)
        for s, e in doc["meta"]["label_spans"]:
            flagged[s:e] = True
        assert all(flagged[s:e].all() for s, e in expected[doc_id])


@pytest.mark.parametrize("content, message", [
    ("# only a comment\n\n", "no terms"),
    ("court\n---\n", "line 2: term '---' has no letters or digits"),
    ("a b c d e f g\n", "line 1: term 'a b c d e f g' has 7 words, at most 6"),
    (b"court\n\xff\xfe\n", "not UTF-8"),
])
def test_bad_lexicon_is_an_error_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TokfilterError, match=f"lexicon {path}.*{message}"):
        label_corpus([str(write_jsonl(tmp_path / "in.jsonl", DOCS))], tmp_path / "out", LabelSettings(lexicons=(path,)))


def test_unreadable_corpus_is_an_error_naming_it(tmp_path, lexicon):
    settings = LabelSettings(lexicons=(lexicon,))
    with pytest.raises(TokfilterError, match="missing.jsonl: no such file"):
        label_corpus([str(tmp_path / "missing.jsonl")], tmp_path / "out", settings)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(TokfilterError, match=r"bad.jsonl:2: not valid JSON"):
        label_corpus([str(bad)], tmp_path / "out", settings)
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"body": "x"}\n')
    with pytest.raises(TokfilterError, match=r"no_text.jsonl:1: field 'text' must be a string"):
        label_corpus([str(no_text)], tmp_path / "out", settings)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TokfilterError, match="corrupt.parquet: cannot be read"):
        label_corpus([str(corrupt)], tmp_path / "out", settings)


def test_teacher_whose_tokenizer_does_not_load_is_an_error(tmp_path, tiny_models_dir, lexicon):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models_dir / "token_classifier", teacher)
    (teacher / "tokenizer.json").write_text("{not a tokenizer")
    with pytest.raises(TokfilterError, match=f"teacher {teacher}: tokenizer .*tokenizer.json does not load"):
        label_corpus([str(write_jsonl(tmp_path / "in.jsonl", DOCS))], tmp_path / "out",
                     LabelSettings(lexicons=(lexicon,), teacher=teacher))


def test_forget_sentences_give_the_document_label(tmp_path, lexicon):
    from tokfilter.training.classifier.train import document_label

    out = tmp_path / "law"
    label_corpus([str(write_jsonl(tmp_path / "in.jsonl", DOCS))], out, LabelSettings(domain="law", lexicons=(lexicon,), validation_fraction=0.0))
    assert {d["id"]: document_label(d) for d in by_id(out).values()} == {"d0": 0, "d1": 0, "d2": 0, "d3": 1}


def test_interleave_inserts_labelled_sentences_of_one_side_into_documents_of_the_other(tmp_path, lexicon):
    out = tmp_path / "law"
    docs = DOCS + ["The judge read the statute to the jury. The court rose.", "Leaves fall in autumn. The sun set early."]
    manifest = label_corpus([str(write_jsonl(tmp_path / "in.jsonl", docs))], out,
                            LabelSettings(domain="law", lexicons=(lexicon,), whole_sentences=True, interleave=3.0,
                                          validation_fraction=0.0))
    assert manifest["splits"]["train"]["interleaved_docs"] == 18 and manifest["interleave"] == 3.0
    originals = by_id(tmp_path / "law")
    labelled = {d["text"][p["start"]:p["end"]] for d in originals.values() if "+" not in d["id"]
                for p in d["meta"]["passages"] if p["domain"] == "law"}
    interleaved = [d for i, d in originals.items() if "+interleaved" in i]
    assert len(interleaved) == 18 and labelled
    for doc in interleaved:
        text, meta = doc["text"], doc["meta"]
        assert spans_are_valid(meta["label_spans"], len(text))
        host = originals[doc["id"].split("+")[0]]
        host_is_law = all(p["domain"] == "law" for p in host["meta"]["passages"])
        added = len(meta["passages"]) - len(host["meta"]["passages"])
        assert 1 <= added <= 3
        law = [text[p["start"]:p["end"]] for p in meta["passages"] if p["domain"] == "law"]
        host_law = [host["text"][p["start"]:p["end"]] for p in host["meta"]["passages"] if p["domain"] == "law"]
        assert len(law) == len(host_law) + (0 if host_is_law else added)  # law sentences go into hosts that are not all law
        assert set(law) <= labelled
        flags = np.zeros(len(text), bool)
        for s, e in meta["label_spans"]:
            flags[s:e] = True
        for p in meta["passages"]:
            if p["domain"] == "law":
                assert flags[p["start"]:p["end"]].all()  # whole-sentence labels travel with the sentence
    assert load_split(out, "train")


def test_a_labelled_corpus_mixes_into_training_n_times(tmp_path, lexicon, tiny_corpus_dir):
    import argparse

    from tokfilter.training.classifier.train import add_arguments, corpora_digest, load_corpora

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    out = tmp_path / "law"
    label_corpus([str(write_jsonl(tmp_path / "in.jsonl", DOCS))], out, LabelSettings(domain="law", lexicons=(lexicon,)))
    args = parser.parse_args(["--task", "token", "--corpus", str(tiny_corpus_dir), "--corpus", f"{out}:3"])
    assert args.corpus == [(tiny_corpus_dir, 1), (out, 3)]
    base, labelled = load_split(tiny_corpus_dir, "train"), load_split(out, "train")
    assert load_corpora(args.corpus, "train") == base + labelled * 3
    assert load_corpora(args.corpus, "validation") == load_split(tiny_corpus_dir, "validation") + load_split(out, "validation", allow_empty=True)
    digests = {corpora_digest(c) for c in ([(tiny_corpus_dir, 1)], [(tiny_corpus_dir, 1), (out, 3)], [(tiny_corpus_dir, 1), (out, 2)])}
    assert len(digests) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "token", "--corpus", f"{out}:0"])
