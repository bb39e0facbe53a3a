"""benchmarks/medline_heldout.py: its abstracts are held out of every training split and take the
side the corpus gives them; the flagged share counts tokens at the card threshold over all texts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from medline_heldout import flagged_share, heldout_abstracts  # noqa: E402

from tokfilter.scoring import ScoringPipeline  # noqa: E402
from tokfilter.training.corpus import sources  # noqa: E402
from tokfilter.training.corpus.build import assign_splits, load_labelled_sources  # noqa: E402
from tokfilter.training.corpus.passage_domains import MEDICINE_CUT, RETAIN_CUT, MedicineRegression  # noqa: E402


def test_heldout_abstracts_are_test_split_and_on_their_side():
    texts = heldout_abstracts(per_side=4)
    abstracts, _ = sources.load_medline_abstracts()
    split_of = assign_splits(abstracts, 0)
    by_text = {a.definition: a for a in abstracts}
    assert {side: len(t) for side, t in texts.items()} == {"medicine": 4, "biology": 4}
    assert all(split_of[by_text[t].item_id] == "test" for side in texts.values() for t in side)
    p = MedicineRegression.of_items(load_labelled_sources()[0]).probabilities(texts["medicine"] + texts["biology"])
    assert (p[:4] >= MEDICINE_CUT).all() and (p[4:] <= RETAIN_CUT).all()


def test_flagged_share_counts_tokens_over_all_texts(tiny_joint_model_dir):
    pipeline = ScoringPipeline.from_model_dirs(tiny_joint_model_dir, None)
    texts = ["Patients with asthma used inhaled corticosteroids.", "The river flooded the valley after rain, " * 20]
    scored = pipeline.score(texts)
    flagged = sum(round(s.flagged_fraction * len(s.token_probs)) for s in scored)
    assert flagged_share(pipeline, texts) == pytest.approx(flagged / sum(len(s.token_probs) for s in scored), abs=1e-12)
