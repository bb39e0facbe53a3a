"""Interleaved documents and the sentence splitter: labels land exactly on the inserted sentences."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.sentences import sentence_spans, split_sentences
from tokfilter.training.corpus.build import _Paragraph, _render
from tokfilter.training.corpus.interleave import (
    MAX_INSERTIONS,
    insert_sentences,
    interleaved_documents,
    labelled_sentences,
    sentence_units,
)
from tokfilter.training.corpus.sources import SourceItem
from tokfilter.training.corpus.weak_labels import Lexicon, label_document, spans_are_valid

NO_LEXICON = Lexicon(frozenset(), frozenset(), frozenset())
WORDS = st.text(alphabet="abcdefghij", min_size=1, max_size=8)


def items_of(domain: str, prose: list[str], terms: list[tuple[str, str]]) -> list[SourceItem]:
    items = [SourceItem(f"{domain}:p{i}", "lee_news", domain, "", text) for i, text in enumerate(prose)]
    items += [SourceItem(f"{domain}:t{i}", "hpo", domain, term, definition) for i, (term, definition) in enumerate(terms)]
    return items


sentence = st.lists(WORDS, min_size=1, max_size=6).map(lambda ws: " ".join(ws).capitalize() + ".")
prose = st.lists(sentence, min_size=1, max_size=4).map(" ".join)
term_items = st.lists(st.tuples(WORDS, sentence), max_size=4)


@settings(max_examples=60, deadline=None)
@given(med_prose=st.lists(prose, max_size=3), med_terms=term_items, general=st.lists(prose, min_size=1, max_size=3),
       biology=term_items, seed=st.integers(0, 2**16))
def test_labels_are_exactly_the_medicine_sentences(med_prose, med_terms, general, biology, seed):
    items = items_of("medicine", med_prose, med_terms) + items_of("general", general, []) + items_of("biology", [], biology)
    rng = random.Random(seed)
    documents = interleaved_documents(items, 8, rng)
    if not med_prose and not med_terms:
        assert documents == []  # nothing to insert: no interleaved documents
        return
    assert len(documents) == 8
    for domain, paragraphs in documents:
        units = [u for p in paragraphs for u in p]
        n_medicine = sum(u.domain == "medicine" for u in units)
        assert domain == ("mixed" if 0 < n_medicine < len(units) else units[0].domain)
        text, passages = _render([_Paragraph(domain, p) for p in paragraphs], rng)
        labelled = np.zeros(len(text), dtype=bool)
        for start, end in label_document(text, passages, NO_LEXICON):
            labelled[start:end] = True
        for passage in passages:  # every medicine sentence whole, nothing of any other sentence
            inside = labelled[passage["start"]:passage["end"]]
            assert inside.all() if passage["domain"] == "medicine" else not inside.any()


def test_host_sentences_keep_one_domain_and_insertions_are_bounded():
    items = items_of("medicine", [], [(f"med{i}", "A sign.") for i in range(20)]) + items_of("general", ["One. Two. Three."] * 10, [])
    for domain, paragraphs in interleaved_documents(items, 200, random.Random(0)):
        units = [u for p in paragraphs for u in p]
        counts = {d: sum(u.domain == d for u in units) for d in ("medicine", "general")}
        assert min(counts.values()) <= MAX_INSERTIONS, (domain, counts)


def test_prose_items_become_one_unit_per_sentence():
    units = sentence_units(items_of("general", ["Dr. Smith came home. It rained! Then?"], [("insulin", "A hormone.")]))
    assert [u.definition for u in units] == ["Dr. Smith came home.", "It rained!", "Then?", "A hormone."]
    assert [u.item_id for u in units] == ["general:p0#s0", "general:p0#s1", "general:p0#s2", "general:t0"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n\"()AZ09")), max_size=80))
def test_sentence_spans_cover_every_non_space_character_once(text):
    spans = sentence_spans(text)
    covered = np.zeros(len(text), dtype=int)
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end <= len(text)
        assert not text[start].isspace() and not text[end - 1].isspace()
        covered[start:end] += 1
        previous_end = end
    assert all(covered[i] == 1 for i, c in enumerate(text) if not c.isspace())


def test_sentence_splitter_keeps_abbreviations_and_initials():
    assert split_sentences("Dr. Smith met J. Doe, e.g. in the U.S. Army. He left.\n\nNew paragraph") == [
        "Dr. Smith met J. Doe, e.g. in the U.S. Army.", "He left.", "New paragraph"]


def labelled_doc(sentences: list[tuple[str, bool]], gap: str) -> tuple[str, dict]:
    """A labelled document of ``sentences`` (text, forget?) joined by ``gap``: forget sentences
    labelled whole (merged across gaps, as merge_spans does), others carry a one-word label."""
    text, passages, spans = "", [], []
    for k, (s, forget) in enumerate(sentences):
        if k:
            text += gap
        passages.append({"start": len(text), "end": len(text) + len(s), "domain": "medicine" if forget else "other"})
        spans.append([len(text), len(text) + (len(s) if forget else 1)])
        text += s
    merged: list[list[int]] = []
    for s, e in spans:
        if merged and not text[merged[-1][1]:s].strip():
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return text, {"passages": passages, "label_spans": merged}


def labelled_chars(text: str, spans) -> str:
    marks = [" "] * len(text)
    for s, e in spans:
        for i in range(s, e):
            marks[i] = "x"
    return "".join(marks)


@settings(max_examples=60, deadline=None)
@given(host=st.lists(st.tuples(sentence, st.booleans()), min_size=1, max_size=5),
       inserts=st.lists(st.tuples(sentence, st.booleans()), min_size=1, max_size=MAX_INSERTIONS),
       gap=st.sampled_from([" ", "\n\n", "  "]), seed=st.integers(0, 1000))
def test_inserted_sentences_keep_their_labels_and_the_host_keeps_its_own(host, inserts, gap, seed):
    inserts = [("Zz " + s, forget) for s, forget in inserts]  # told apart from host sentences
    text, meta = labelled_doc(host, gap)
    units = [labelled_sentences(*labelled_doc([unit], " "))[0] for unit in inserts]
    out, out_meta = insert_sentences(text, meta, units, random.Random(seed))
    assert spans_are_valid(out_meta["label_spans"], len(out))
    passages = sorted(out_meta["passages"], key=lambda p: p["start"])
    in_order = [out[p["start"]:p["end"]] for p in passages]
    # every sentence is a passage; the host's stay in order, the inserted go between them
    assert sorted(in_order) == sorted([s for s, _ in host] + [s for s, _ in inserts])
    assert [s for s in in_order if not s.startswith("Zz")] == [s for s, _ in host]
    assert sorted(out.split()) == sorted(text.split() + [w for s, _ in inserts for w in s.split()])  # nothing lost
    # each passage's characters carry exactly the labels its sentence had before
    marks = labelled_chars(out, out_meta["label_spans"])
    for p in passages:
        sentence_text = out[p["start"]:p["end"]]
        expected = "x" * len(sentence_text) if p["domain"] == "medicine" else "x" + " " * (len(sentence_text) - 1)
        assert marks[p["start"]:p["end"]] == expected
