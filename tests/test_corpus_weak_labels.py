"""Weak labels on hand-made examples, and properties of the span helpers (hypothesis)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from tokfilter.training.corpus.weak_labels import (
    WORD,
    build_lexicon,
    flip_label_spans,
    label_document,
    merge_spans,
    spans_are_valid,
)

# Word statistics of a toy world: "chronic" and "bronchitis" are medical, "left" and "house" are
# common English, "protein" belongs to biology.
MEDICAL = Counter({"chronic": 50, "bronchitis": 40, "aspirin": 30, "severe": 30, "left": 80, "protein": 2})
GENERAL = Counter({"left": 5000, "house": 4000, "the": 90000, "took": 3000, "severe": 20, "chronic": 1})
BIOLOGY = Counter({"protein": 8000, "binding": 5000, "the": 30000})
LEXICON = build_lexicon(["Aspirin", "bronchitis", "acute bronchitis", "left", "binding protein", "Zyrtec", "ab"],
                        MEDICAL, GENERAL, BIOLOGY)


def _labelled(text: str) -> list[str]:
    return [text[s:e] for s, e in LEXICON.matches(text)]


def test_lexicon_drops_common_english_biology_and_very_short_terms():
    assert ("aspirin",) in LEXICON.terms and ("zyrtec",) in LEXICON.terms  # unseen outside medicine
    assert ("left",) not in LEXICON.terms  # common English although frequent in medical text
    assert ("binding", "protein") not in LEXICON.terms  # biology words
    assert ("ab",) not in LEXICON.terms  # too short


def test_matches_are_case_insensitive_on_word_boundaries():
    assert _labelled("She took ASPIRIN and Zyrtec.") == ["ASPIRIN", "Zyrtec"]
    assert _labelled("Paspirin and aspirins are not aspirin") == ["aspirin"]


def test_longest_match_then_spreading_over_medical_neighbours():
    # "acute" is not a spreading word, "bronchitis" alone is a term; the longest term wins
    assert _labelled("signs of acute bronchitis today") == ["acute bronchitis"]
    # "chronic" is a medical-ish word of a lexicon term ("chronic cough"), so matches spread over it
    lexicon = build_lexicon(["bronchitis", "chronic cough"], MEDICAL, GENERAL, BIOLOGY)
    assert "chronic" in lexicon.spread_words and "left" not in lexicon.spread_words
    spans = lexicon.matches("the house has chronic bronchitis, left")
    assert [("the house has chronic bronchitis, left")[s:e] for s, e in spans] == ["chronic bronchitis"]


def test_spreading_stops_at_punctuation():
    lexicon = build_lexicon(["bronchitis", "chronic cough"], MEDICAL, GENERAL, BIOLOGY)
    text = "chronic. Bronchitis"
    assert [text[s:e] for s, e in lexicon.matches(text)] == ["Bronchitis"]


def test_label_document_labels_medicine_passages_whole_and_matches_elsewhere():
    benign, medical, other = "The house was old.", "Abnormal gait: a walk that is not normal.", "He took aspirin."
    text = f"{benign} {medical} {other}"
    m = text.index(medical)
    passages = [
        {"start": 0, "end": len(benign), "domain": "general", "source": "fortunes", "item_id": "f:1"},
        {"start": m, "end": m + len(medical), "domain": "medicine", "source": "hpo", "item_id": "hpo:1"},
        {"start": m + len(medical) + 1, "end": len(text), "domain": "general", "source": "fortunes", "item_id": "f:2"},
    ]
    spans = label_document(text, passages, LEXICON)
    assert [text[s:e] for s, e in spans] == ["Abnormal gait: a walk that is not normal.", "aspirin"]


def test_merge_spans_joins_overlaps_and_whitespace_gaps_only():
    text = "aa bb, cc dd"
    assert merge_spans([(7, 9), (0, 2), (3, 5), (1, 4)], text) == [[0, 5], [7, 9]]
    assert merge_spans([(0, 2), (10, 12), (7, 9)], text) == [[0, 2], [7, 12]]


@st.composite
def text_and_spans(draw):
    text = draw(st.text(alphabet="ab ,.-", max_size=60))
    n = len(text)
    raw = draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=8))
    return text, [(min(a, b), max(a, b)) for a, b in raw]


@given(text_and_spans())
def test_merged_spans_are_valid_and_cover_the_same_characters(case):
    text, spans = case
    merged = merge_spans(spans, text)
    assert spans_are_valid(merged, len(text))
    covered = {i for s, e in spans for i in range(s, e)}
    merged_cover = {i for s, e in merged for i in range(s, e)}
    assert covered <= merged_cover
    assert all(not text[i].strip() for i in merged_cover - covered)  # only whitespace was added


@given(text_and_spans(), st.integers(0, 1000))
def test_flip_label_spans_is_identity_at_zero_and_complement_at_one(case, seed):
    text, spans = case
    merged = merge_spans(spans, text)
    assert flip_label_spans(text, merged, 0.0, random.Random(seed)) == merged
    flipped = flip_label_spans(text, merged, 1.0, random.Random(seed))
    assert spans_are_valid(flipped, len(text))
    for word in WORD.finditer(text):
        was = any(s <= word.start() < e for s, e in merged)
        now = any(s <= word.start() < e for s, e in flipped)
        assert was != now


@given(st.lists(st.sampled_from(["aspirin", "Zyrtec", "bronchitis", "acute", "left", " ", ", ", "x"]), max_size=20)
       .map("".join))
def test_lexicon_matches_are_valid_spans_that_contain_a_term(text):
    spans = LEXICON.matches(text)
    assert spans_are_valid(spans, len(text))
    for s, e in spans:
        assert any(term in text[s:e].lower() for term in ("aspirin", "zyrtec", "bronchitis"))
