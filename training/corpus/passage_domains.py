"""Domains of the unlabelled prose sources (MEDLINE abstracts, Wikipedia leads), from a classifier of
the labelled ones.

MEDLINE is the corpus's only real research prose, but its citations are not all medicine: clinical
studies sit beside work on bacteria, enzymes, ecology or chemistry. Every abstract labelled medicine
would teach the classifiers that scientific register is medicine (measured: a model trained with
the medicine side only flagged 74% of the word pieces of held-out biology-side abstracts, against
28% without MEDLINE; benchmarks/medline_heldout.py). So a bag-of-words logistic regression is fitted on the labelled items
(medicine against biology and general; seconds) and an abstract takes its side only when the
regression is confident: medicine at MEDICINE_CUT or above, the retain side (biology: scientific
prose that must be kept) at RETAIN_CUT or below; the rest are left out. The cuts are a fixed
symmetric band, set before any measurement; ICD code lines are not prose and stay out of the fit.

A side abstract still holds sentences of the other side (a genetics abstract naming the disease a
gene causes; the methods of a trial), and interleave.py puts its sentences among others of its
side, where a clinical sentence labelled biology teaches that clinical sentences among biology are
benign, i.e. to read the context. So each sentence is scored by a second regression, fitted on the
abstracts' sentences labelled with their abstract's side (cross-fitted: two folds of abstracts, each
scored by the other's fit, so no sentence is scored by a fit that saw its label), and only those on
their abstract's side of SENTENCE_CUT are kept (81% of the medicine-side sentences, 73% of the
biology-side ones). A regression fitted on the labelled items instead judges sentences of research
prose poorly (it kept 45% of the medicine-side sentences, dropping "Patients with high IBC and high
insulin requirements were ...").

Wikipedia leads go through the same two steps with general as the other side: the Vital Articles
cover every subject, a few hundred of them medicine (diseases, drugs, procedures, physicians), and
the sentence regression is fitted on the articles' own sentences.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from tokfilter.sentences import split_sentences
from tokfilter.training.corpus.domains import FORGET, RETAIN
from tokfilter.training.corpus.sources import SourceItem

MEDICINE_CUT = 0.8
RETAIN_CUT = 0.2
SENTENCE_CUT = 0.5  # a sentence's own side: the sentence regression's decision boundary
FIT_SOURCES_EXCLUDED = frozenset({"icd10cm"})  # code lines, not prose


def _text(item: SourceItem) -> str:
    return f"{item.term} {item.definition}" if item.term else item.definition


class MedicineRegression:
    """P(medicine) of a text from word presence (classes balanced: medicine is the minority)."""

    def __init__(self, texts: Sequence[str], is_medicine: Sequence[bool]):
        self.vectorizer = CountVectorizer(lowercase=True, min_df=3, token_pattern=r"(?u)\b[a-z][a-z]+\b", binary=True)
        features = self.vectorizer.fit_transform(texts)
        self.regression = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(features, np.asarray(is_medicine))

    @classmethod
    def of_items(cls, labelled: Sequence[SourceItem]) -> "MedicineRegression":
        """Fitted on the labelled prose items, medicine against the rest."""
        fit_items = [i for i in labelled if i.source not in FIT_SOURCES_EXCLUDED]
        return cls([_text(i) for i in fit_items], [i.domain == FORGET for i in fit_items])

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return self.regression.predict_proba(self.vectorizer.transform(texts))[:, 1]


def cross_fitted_probabilities(texts: Sequence[str], is_medicine: Sequence[bool], folds: Sequence[int]) -> np.ndarray:
    """P(medicine) of each text from a regression fitted on the other fold's texts (two folds), so no
    text is scored by a regression that saw its own label."""
    folds, is_medicine = np.asarray(folds), np.asarray(is_medicine, dtype=bool)
    if any(len(set(is_medicine[folds != fold])) < 2 for fold in (0, 1)):
        return is_medicine.astype(float)  # a fold without both sides fits nothing: every text keeps its label
    probabilities = np.zeros(len(texts))
    for fold in (0, 1):
        fit, score = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        regression = MedicineRegression([texts[i] for i in fit], [is_medicine[i] for i in fit])
        probabilities[score] = regression.probabilities([texts[i] for i in score])
    return probabilities


def _fold(item_id: str) -> int:
    return hashlib.sha256(item_id.encode()).digest()[0] & 1


def side_of(p_medicine: float, other_side: str = RETAIN) -> str | None:
    """An item's domain from the labelled-item regression: medicine or ``other_side`` when it is
    confident, None (left out) in between."""
    return FORGET if p_medicine >= MEDICINE_CUT else other_side if p_medicine <= RETAIN_CUT else None


def sided_items(labelled: Sequence[SourceItem], unlabelled: Sequence[SourceItem],
                other_side: str = RETAIN) -> list[tuple[SourceItem, str]]:
    """The unlabelled items the labelled-item regression is confident about, each with its side."""
    probabilities = MedicineRegression.of_items(labelled).probabilities([_text(i) for i in unlabelled])
    return [(item, side) for item, p in zip(unlabelled, probabilities) if (side := side_of(p, other_side)) is not None]


def assign_domains(labelled: Sequence[SourceItem], unlabelled: Sequence[SourceItem], other_side: str = RETAIN) -> list[SourceItem]:
    """The unlabelled items the labelled-item regression is confident about, with their domain set
    (medicine or ``other_side``: biology for research abstracts, general for encyclopedia articles
    on every subject), keeping only the sentences a cross-fitted sentence regression puts on the
    same side."""
    sided = [(item, domain, split_sentences(item.definition)) for item, domain in sided_items(labelled, unlabelled, other_side)]
    sentences = [(s, domain == FORGET, _fold(item.item_id)) for item, domain, item_sentences in sided for s in item_sentences]
    sentence_p = iter(cross_fitted_probabilities(*zip(*sentences)) if sentences else ())
    kept = []
    for item, domain, item_sentences in sided:
        agreeing = [s for s in item_sentences if (next(sentence_p) >= SENTENCE_CUT) == (domain == FORGET)]
        if agreeing:
            kept.append(replace(item, domain=domain, definition=" ".join(agreeing)))
    return kept
