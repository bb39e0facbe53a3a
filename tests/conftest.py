"""Shared session fixtures: a tiny corpus and tiny exported classifiers (the real file formats)."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Hand-made sentences, used until `tokfilter.training.corpus.build_corpus(size="tiny")` exists.
_SENTENCES = {
    "general": [
        "The council approved the new budget for the public library on Tuesday.",
        "She walked along the river and watched the boats drift past the old mill.",
        "The orchestra rehearsed the symphony twice before the evening concert.",
        "Prices of coffee rose sharply after a poor harvest in several countries.",
        "The football team won the match with a late goal in extra time.",
        "A new bridge will connect the two halves of the town next spring.",
    ],
    "biology": [
        "Mitochondria produce most of the cell's supply of adenosine triphosphate.",
        "Photosynthesis converts light energy into chemical energy stored in glucose.",
        "The ribosome translates messenger RNA into a chain of amino acids.",
        "Ferns reproduce by spores released from the underside of their fronds.",
        "Enzymes lower the activation energy of the reactions they catalyse.",
        "Bacterial colonies were grown on agar plates at thirty seven degrees.",
    ],
    "medicine": [
        "The patient was given amoxicillin for acute otitis media.",
        "Myocardial infarction presents with chest pain radiating to the left arm.",
        "Type 2 diabetes mellitus is treated with metformin and lifestyle changes.",
        "Chronic obstructive pulmonary disease causes progressive dyspnea.",
        "The surgeon performed a laparoscopic appendectomy without complications.",
        "Hypertension increases the risk of stroke and chronic kidney disease.",
    ],
}


def _document(rng: random.Random, doc_id: str, split: str, domain: str) -> dict:
    """A document in the corpus contract format; medicine passages are the label spans."""
    if domain == "mixed":
        plan = [rng.choice(["general", "biology"]), "medicine", rng.choice(["general", "biology"])]
    else:
        plan = [domain] * rng.randint(1, 3)
    text, passages = io.StringIO(), []
    for i, passage_domain in enumerate(plan):
        if i:
            text.write(" ")
        start = text.tell()
        text.write(" ".join(rng.sample(_SENTENCES[passage_domain], 2)))
        passages.append({"start": start, "end": text.tell(), "domain": passage_domain, "source": "handmade",
                         "item_id": f"{doc_id}-{i}"})
    spans = [[p["start"], p["end"]] for p in passages if p["domain"] == "medicine"]
    return {"id": doc_id, "text": text.getvalue(),
            "meta": {"split": split, "domain": domain, "passages": passages, "label_spans": spans}}


def _write_handmade_corpus(out_dir: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, n_docs in (("train", 48), ("validation", 16), ("test", 16)):
        domains = ["general", "biology", "medicine", "mixed"]
        docs = [_document(rng, f"{split}-{i}", split, domains[i % 4]) for i in range(n_docs)]
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """A tiny corpus: train/validation/test.jsonl in the agreed format."""
    out = tmp_path_factory.mktemp("tiny_corpus")
    try:
        from tokfilter.training.corpus import build_corpus
    except ImportError:
        _write_handmade_corpus(out)
    else:
        build_corpus(out, seed=0, size="tiny")
    return out


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_corpus_dir, tmp_path_factory) -> Path:
    """``token_classifier/`` and ``doc_classifier/`` exported from a 1-layer MiniLM trained a few steps
    (model.onnx, model.int8.onnx, tokenizer.json, tokfilter.json)."""
    from tokfilter.training.classifiers import TrainConfig, train_classifier

    out = tmp_path_factory.mktemp("tiny_models")
    for task, name in (("token", "token_classifier"), ("document", "doc_classifier")):
        config = TrainConfig(task=task, layers=1, max_steps=4, batch_size=8, lr=1e-4, max_length=64, stride=16)
        train_classifier(config, tiny_corpus_dir, out / name, threads=2, log=io.StringIO())
    return out
