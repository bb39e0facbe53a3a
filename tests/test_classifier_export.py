"""ONNX export parity, saved thresholds, and eval-classifier on the tiny exported models."""

import json

import numpy as np
import pytest

from tokfilter.cli import main as cli_main
from tokfilter.inference import OnnxWindowScorer
from tokfilter.modelcard import load_model_card
from tokfilter.training.classifier.train import binary_metrics, build_model, encoder_path, load_split, score_split, torch_score_fn
from tokfilter.training.classifier.export import PARITY_TOLERANCE, export_onnx, onnx_opset, quantize_int8
from tokfilter.windows import load_tokenizer, pad_batch


@pytest.mark.parametrize("task", ["token", "document"])
def test_onnx_fp32_matches_torch_on_padded_batches(task, tmp_path):
    model = build_model(task, layers=1, seed=3)
    export_onnx(model, tmp_path / "model.onnx", task)
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    (tmp_path / "tokfilter.json").write_text(json.dumps({
        "name": "t", "task": task, "labels": ["retain", "forget"], "output": "logits",
        "max_length": 64, "stride": 16, "threshold": 0.5, "threshold_recall95": 0.5}))
    tokenizer = load_tokenizer(encoder_path() / "tokenizer.json")
    texts = ["Aspirin reduces fever.", "The heart pumps blood through arteries and veins to every organ of the body.", "ok"]
    seqs = [np.array(tokenizer.encode(t).ids) for t in texts]
    ids, mask = pad_batch(seqs)  # different lengths: exercises the dynamic axes and the padding mask
    expected = torch_score_fn(model)(ids, mask)
    got = OnnxWindowScorer(tmp_path)(ids, mask)
    assert got.shape == ((3, ids.shape[1]) if task == "token" else (3,))
    real = mask.astype(bool) if task == "token" else slice(None)
    assert np.max(np.abs(got - expected)[real]) <= PARITY_TOLERANCE
    int8 = OnnxWindowScorer(tmp_path, precision="int8")(ids, mask)
    assert int8.shape == got.shape and np.all((int8 >= 0) & (int8 <= 1))


@pytest.mark.parametrize("name", ["token_classifier", "doc_classifier"])
def test_exported_models_have_contract_files_and_thresholds(tiny_models_dir, name):
    model_dir = tiny_models_dir / name
    for file in ("model.onnx", "model.int8.onnx", "tokenizer.json", "tokfilter.json"):
        assert (model_dir / file).is_file(), file
    card = load_model_card(model_dir)
    assert card.output == "logits" and card.labels[1] == "forget"
    assert 0 < card.threshold < 1 and 0 < card.threshold_recall95 < 1
    assert card.data_digest.startswith("sha256:") and card.num_layers == 1
    assert card.metrics["parity_max_abs_prob_diff_fp32"] <= PARITY_TOLERANCE
    assert "validation_int8_f1" in card.metrics
    assert card.extra["opset"] == onnx_opset(model_dir / "model.onnx")


@pytest.mark.parametrize("name", ["token_classifier", "doc_classifier"])
def test_saved_thresholds_reproduce_validation_metrics(tiny_models_dir, tiny_corpus_dir, name):
    """Reloading the card and rescoring validation gives the saved F1 and recall >= 0.95 at threshold_recall95."""
    model_dir = tiny_models_dir / name
    card = load_model_card(model_dir)
    scorer = OnnxWindowScorer(model_dir)
    labels, scores = score_split(scorer, card.max_length, card.stride, load_tokenizer(model_dir / "tokenizer.json"),
                                 load_split(tiny_corpus_dir, "validation"), card.task)
    at_best = binary_metrics(labels, scores, card.threshold)
    assert at_best["f1"] == pytest.approx(card.metrics["validation_fp32_f1"], abs=1e-4)
    assert binary_metrics(labels, scores, card.threshold_recall95)["recall"] >= 0.95


def test_eval_classifier_prints_metrics_and_writes_pr_curve(tiny_models_dir, tiny_corpus_dir, tmp_path, capsys):
    rc = cli_main(["eval-classifier", "--json", "--corpus", str(tiny_corpus_dir),
                   "--token-model", str(tiny_models_dir / "token_classifier"),
                   "--doc-model", str(tiny_models_dir / "doc_classifier"), "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("token_precision", "token_recall", "token_f1", "token_auroc", "token_f1_balanced", "doc_f1",
                "doc_precision", "doc_recall", "flagged_fraction", "threshold"):
        assert 0 <= result[key] <= 1, key
    p, r = result["token_precision"], result["token_recall"]
    assert result["token_f1"] == pytest.approx(2 * p * r / max(p + r, 1e-12), abs=1e-3)
    assert result["threshold"] == pytest.approx(load_model_card(tiny_models_dir / "token_classifier").threshold, abs=1e-4)
    assert result["n_docs"] == len(load_split(tiny_corpus_dir, "test"))
    png = tmp_path / "pr_curve.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
