"""Domains of unlabelled prose (MEDLINE): confident abstracts take a side, the others are left out,
and a side abstract keeps only the sentences on its side."""

from __future__ import annotations

from tokfilter.training.corpus.domains import FORGET, GENERAL, RETAIN
from tokfilter.training.corpus.passage_domains import MedicineRegression, assign_domains, cross_fitted_probabilities
from tokfilter.training.corpus.sources import SourceItem

MEDICAL = ["patients", "treated", "clinical", "symptoms", "therapy", "diagnosis", "hospital", "dose"]
BIOLOGICAL = ["cells", "membrane", "enzyme", "species", "protein", "gene", "bacteria", "growth"]
GENERAL_WORDS = ["city", "train", "music", "election", "river", "market", "season", "film"]
CLINICAL = "Patients treated in hospital had symptoms, diagnosis and a dose of therapy."
BIOLOGICAL_SENTENCE = "Bacteria growth needs the enzyme and membrane protein of cells of one species."


def _labelled() -> list[SourceItem]:
    items = []
    for k in range(40):
        for domain, words in ((FORGET, MEDICAL), (RETAIN, BIOLOGICAL), (GENERAL, GENERAL_WORDS)):
            text = " ".join(words[(k + j) % len(words)] for j in range(4))
            items.append(SourceItem(f"{domain}:{k}", "test", domain, "", text))
    return items


def _abstract(item_id: str, text: str) -> SourceItem:
    return SourceItem(item_id, "medline", "", "", text)


def test_confident_abstracts_take_a_side_and_the_rest_are_left_out():
    unlabelled = [_abstract("medline:1", CLINICAL), _abstract("medline:2", BIOLOGICAL_SENTENCE),
                  _abstract("medline:3", "Zzyzx qwop.")]  # no known word: the regression cannot tell
    probabilities = MedicineRegression.of_items(_labelled()).probabilities([a.definition for a in unlabelled])
    assert probabilities[0] > 0.9 and probabilities[1] < 0.1 and 0.2 < probabilities[2] < 0.8
    kept = assign_domains(_labelled(), unlabelled)
    assert [(i.item_id, i.domain, i.definition) for i in kept] == [
        ("medline:1", FORGET, CLINICAL), ("medline:2", RETAIN, BIOLOGICAL_SENTENCE)]


def test_the_other_side_is_the_one_asked_for():
    unlabelled = [_abstract("wikipedia:1", CLINICAL), _abstract("wikipedia:2", BIOLOGICAL_SENTENCE)]
    kept = assign_domains(_labelled(), unlabelled, other_side=GENERAL)
    assert [(i.item_id, i.domain) for i in kept] == [("wikipedia:1", FORGET), ("wikipedia:2", GENERAL)]


def test_a_side_abstract_keeps_only_the_sentences_on_its_side():
    # as in MEDLINE, a sentence of the other side is the exception inside an abstract, and many
    # abstracts let both folds of the cross-fitted sentence regression hold both sides
    clinical = [_abstract(f"medline:c{k}", CLINICAL + (" " + BIOLOGICAL_SENTENCE if k < 8 else "")) for k in range(40)]
    biological = [_abstract(f"medline:b{k}", BIOLOGICAL_SENTENCE + (" " + CLINICAL if k < 8 else "")) for k in range(40)]
    kept = assign_domains(_labelled(), clinical + biological)
    # an abstract holding both sentences reads as medicine as a whole; its biology sentence goes
    assert [(i.item_id, i.domain, i.definition) for i in kept] == (
        [(a.item_id, FORGET, CLINICAL) for a in clinical + biological[:8]]
        + [(a.item_id, RETAIN, BIOLOGICAL_SENTENCE) for a in biological[8:]])


def test_cross_fitting_scores_each_text_by_the_other_fold_only():
    # "alpha" is medicine in fold 0 and benign in fold 1: each fold's texts are scored by the other's rule
    texts = ["alpha beta gamma"] * 10 + ["delta beta gamma"] * 10 + ["alpha beta gamma"] * 10 + ["delta beta gamma"] * 10
    is_medicine = [True] * 10 + [False] * 10 + [False] * 10 + [True] * 10
    folds = [0] * 20 + [1] * 20
    p = cross_fitted_probabilities(texts, is_medicine, folds)
    assert (p[:10] < 0.5).all() and (p[10:20] > 0.5).all() and (p[20:30] > 0.5).all() and (p[30:] < 0.5).all()


def test_cross_fitting_without_both_sides_in_a_fold_keeps_every_label():
    p = cross_fitted_probabilities(["alpha", "beta", "gamma"], [True, False, True], [0, 0, 1])
    assert p.tolist() == [1.0, 0.0, 1.0]
