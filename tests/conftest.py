"""Shared session fixtures: a tiny corpus and tiny exported classifiers (the real file formats)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite compares every path (in process, Triton, gateway, clients) with ONNX Runtime fp32, the
# reference, so `auto` runs that; tests/test_engines.py tests the other engines and auto's choice.
os.environ.setdefault("TOKFILTER_ENGINE", "onnxruntime")


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """The tiny build of the demo corpus (seconds): train/validation/test.jsonl, items.jsonl, manifest.json."""
    from tokfilter.training.corpus.build import build_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    build_corpus(out, seed=0, size="tiny")
    return out


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_corpus_dir, tmp_path_factory) -> Path:
    """``token_classifier/`` and ``doc_classifier/`` exported from a 1-layer MiniLM trained a few steps
    (model.onnx, model.int8.onnx, tokenizer.json, tokfilter.json)."""
    from tokfilter.training.classifier.train import TrainConfig, train_classifier

    out = tmp_path_factory.mktemp("tiny_models")
    for task, name in (("token", "token_classifier"), ("document", "doc_classifier")):
        config = TrainConfig(task=task, layers=1, max_steps=4, batch_size=8, lr=1e-4, max_length=64, stride=16)
        train_classifier(config, tiny_corpus_dir, out / name, threads=2, log=io.StringIO())
    return out


@pytest.fixture(scope="session")
def tiny_joint_model_dir(tiny_corpus_dir, tmp_path_factory) -> Path:
    """``joint_classifier/``: one 1-layer encoder with token and document heads, trained a few steps
    and exported as one graph (outputs ``logits`` and ``doc_logits``)."""
    from tokfilter.training.classifier.train import TrainConfig, train_classifier

    out = tmp_path_factory.mktemp("tiny_joint") / "joint_classifier"
    config = TrainConfig(task="joint", layers=1, max_steps=4, batch_size=8, lr=1e-4, max_length=64, stride=16)
    train_classifier(config, tiny_corpus_dir, out, threads=2, log=io.StringIO())
    return out


@pytest.fixture(scope="session")
def tiny_target_tokenizer(tiny_corpus_dir, tmp_path_factory) -> Path:
    """A 600-id BPE target tokenizer (with end-of-text and ``[hidden]``) trained on the tiny corpus."""
    from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer

    out = tmp_path_factory.mktemp("target") / "tokenizer.json"
    return train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "train.jsonl")]), out, vocab_size=600)
