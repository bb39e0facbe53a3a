"""The demo corpus builder: determinism, split disjointness and the data contract, on tiny corpora."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokfilter.errors import TokfilterError
from tokfilter.sentences import split_sentences
from tokfilter.training.corpus.build import SPLITS, build_corpus, read_corpus
from tokfilter.training.corpus.domains import DOCUMENT_DOMAINS, PASSAGE_DOMAINS
from tokfilter.training.corpus.weak_labels import spans_are_valid

CORPUS_FILES = [f"{split}.jsonl" for split in SPLITS] + ["items.jsonl", "manifest.json"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus_a")
    return out, build_corpus(out, seed=0, size="tiny")


def _documents(out: Path) -> dict[str, list[dict]]:
    return {split: list(read_corpus(out / f"{split}.jsonl")) for split in SPLITS}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(built, tmp_path):
    out, _ = built
    # another process with another string-hash seed: no set or dict order may leak into the output
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-m", "tokfilter.cli", "build-corpus", "--size", "tiny", "--seed", "0",
                    "--out", str(tmp_path / "again")], env=env, check=True, capture_output=True)
    for name in CORPUS_FILES:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    build_corpus(tmp_path / "other", seed=1, size="tiny")
    assert (out / "train.jsonl").read_bytes() != (tmp_path / "other" / "train.jsonl").read_bytes()


def test_splits_share_no_item_term_or_definition(built):
    out, _ = built
    items = [json.loads(line) for line in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    for field in ("term", "definition"):
        split_of: dict[str, str] = {}
        for item in items:
            key = item[field].lower()
            assert split_of.setdefault(key, item["split"]) == item["split"], f"{field} {key!r} in two splits"
    item_split = {item["item_id"]: item["split"] for item in items}
    seen: dict[str, str] = {}
    for split, docs in _documents(out).items():
        for doc in docs:
            for passage in doc["meta"]["passages"]:
                assert seen.setdefault(passage["item_id"], split) == split, passage["item_id"]
                assert item_split.get(passage["item_id"], split) == split


def test_documents_follow_the_data_contract(built):
    out, manifest = built
    docs_by_split = _documents(out)
    assert 400 <= manifest["docs"] <= 800  # ~160 composed + 3x as many interleaved
    for split, docs in docs_by_split.items():
        assert docs, f"split {split} is empty"
        for doc in docs:
            text, meta = doc["text"], doc["meta"]
            assert meta["split"] == split and meta["domain"] in DOCUMENT_DOMAINS
            assert spans_are_valid(meta["label_spans"], len(text))
            passages = meta["passages"]
            assert [p["start"] for p in passages] == sorted(p["start"] for p in passages)
            domains = {p["domain"] for p in passages}
            assert domains <= set(PASSAGE_DOMAINS)  # the domains evaluation reads passages of
            for passage in passages:
                assert 0 <= passage["start"] < passage["end"] <= len(text)
                if passage["domain"] == "medicine":  # medicine passages are labelled whole
                    assert any(s <= passage["start"] and passage["end"] <= e for s, e in meta["label_spans"])
            if meta["domain"] == "mixed":
                assert "medicine" in domains and domains - {"medicine"}
            elif meta["domain"] != "medicine":
                assert "medicine" not in domains
    train_domains = {doc["meta"]["domain"] for doc in docs_by_split["train"]}
    assert train_domains == set(DOCUMENT_DOMAINS)


def test_manifest_records_sources_and_counts(built):
    out, manifest = built
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    for name in ("hpo", "icd10cm", "drugs", "diseases", "gene_ontology", "wordnet", "lee_news", "fortunes", "medline", "wikipedia"):
        source = manifest["sources"][name]
        assert source["version"] and source["licence"]
        assert source["items_used"] > 0 or source["lexicon_terms"] > 0
    assert sum(sum(s["docs"].values()) for s in manifest["splits"].values()) == manifest["docs"]
    assert 0.0 < manifest["medicine_token_share"] < 0.5
    assert 0.0 < manifest["mixed_doc_share"] < 0.8  # interleaved documents holding both sides are mixed


@pytest.mark.parametrize(("source", "sides"), [("medline", {"medicine", "biology"}), ("wikipedia", {"medicine", "general"})])
def test_unlabelled_prose_gives_sentences_of_both_sides_to_interleaved_documents_only(built, source, sides):
    out, _ = built
    units = [(p["domain"], p["item_id"], doc["text"][p["start"]:p["end"]])
             for docs in _documents(out).values() for doc in docs for p in doc["meta"]["passages"] if p["source"] == source]
    assert {domain for domain, _, _ in units} == sides
    assert all("#s" in item_id for _, item_id, _ in units)  # sentence units: never a whole abstract or lead
    assert all(len(split_sentences(text)) == 1 for _, _, text in units)


def test_label_noise_changes_labels_only(built, tmp_path):
    out, _ = built
    build_corpus(tmp_path, seed=0, size="tiny", label_noise=0.2)
    clean, noisy = _documents(out)["validation"], _documents(tmp_path)["validation"]
    assert [d["text"] for d in clean] == [d["text"] for d in noisy]
    assert [d["meta"]["label_spans"] for d in clean] != [d["meta"]["label_spans"] for d in noisy]


def test_bad_arguments_name_the_field(tmp_path):
    with pytest.raises(TokfilterError, match="size"):
        build_corpus(tmp_path, size="huge")
    with pytest.raises(TokfilterError, match="label_noise"):
        build_corpus(tmp_path, size="tiny", label_noise=1.5)


def test_read_corpus_reports_missing_file_and_bad_line(tmp_path):
    with pytest.raises(TokfilterError, match="not found"):
        list(read_corpus(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x", "meta": {}}\n{oops\n', encoding="utf-8")
    with pytest.raises(TokfilterError, match="line 2"):
        list(read_corpus(bad))
