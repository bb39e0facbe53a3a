"""ONNX export parity, saved thresholds, and eval-classifier on the tiny exported models."""

import io
import json

import numpy as np
import pytest
import torch

from tokfilter.cli import main as cli_main
from tokfilter.digest import file_sha256
from tokfilter.inference import OnnxWindowScorer
from tokfilter.modelcard import load_model_card
from tokfilter.training.classifier.train import binary_metrics, build_model, encoder_path, load_split, score_split, torch_score_fn
from tokfilter.training.classifier.export import PARITY_TOLERANCE, export_onnx, onnx_opset, quantize_int8
from tokfilter.windows import load_tokenizer, pad_batch


@pytest.mark.parametrize("task", ["token", "document", "joint"])
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
    int8 = OnnxWindowScorer(tmp_path, precision="int8")(ids, mask)
    heads = {"token": ["token"], "document": ["document"], "joint": ["token", "document"]}[task]
    if task != "joint":
        expected, got, int8 = (expected,), (got,), (int8,)
    assert len(got) == len(expected) == len(int8) == len(heads)
    for head, e, g, q in zip(heads, expected, got, int8):
        assert g.shape == ((3, ids.shape[1]) if head == "token" else (3,))
        real = mask.astype(bool) if head == "token" else slice(None)
        assert np.max(np.abs(g - e)[real]) <= PARITY_TOLERANCE
        assert q.shape == g.shape and np.all((q >= 0) & (q <= 1))


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


def test_joint_model_is_one_graph_with_both_heads_calibrated(tiny_joint_model_dir):
    import onnx

    card = load_model_card(tiny_joint_model_dir)
    assert card.task == "joint" and card.joint and card.name == "joint_classifier"
    for file in ("model.onnx", "model.int8.onnx"):
        graph = onnx.load(str(tiny_joint_model_dir / file)).graph
        assert [o.name for o in graph.output] == ["logits", "doc_logits"]
        assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    for threshold in (card.threshold, card.threshold_recall95, card.doc_threshold, card.doc_threshold_recall95):
        assert 0 < threshold < 1
    for key in ("validation_fp32_f1", "validation_int8_f1", "doc_validation_fp32_f1", "doc_validation_int8_f1"):
        assert 0 <= card.metrics[key] <= 1
    assert card.metrics["parity_max_abs_prob_diff_fp32"] <= PARITY_TOLERANCE
    assert card.extra["train_config"]["task"] == "joint" and "window CE" in card.extra["loss"]


@pytest.mark.parametrize("head", ["token", "document"])
def test_saved_joint_thresholds_reproduce_validation_metrics(tiny_joint_model_dir, tiny_corpus_dir, head):
    """Each head of the joint model: its saved threshold gives the saved F1, its recall95 threshold recall >= 0.95."""
    card = load_model_card(tiny_joint_model_dir)
    labels, scores = score_split(OnnxWindowScorer(tiny_joint_model_dir), card.max_length, card.stride,
                                 load_tokenizer(tiny_joint_model_dir / "tokenizer.json"),
                                 load_split(tiny_corpus_dir, "validation"), card.task, head)
    threshold, recall95, prefix = ((card.threshold, card.threshold_recall95, "") if head == "token"
                                   else (card.doc_threshold, card.doc_threshold_recall95, "doc_"))
    assert binary_metrics(labels, scores, threshold)["f1"] == pytest.approx(card.metrics[f"{prefix}validation_fp32_f1"], abs=1e-4)
    assert binary_metrics(labels, scores, recall95)["recall"] >= 0.95


def test_old_cards_load_without_document_head_fields(tiny_models_dir):
    card = load_model_card(tiny_models_dir / "token_classifier")
    assert not card.joint and card.doc_threshold is None and card.doc_threshold_recall95 is None


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


def test_eval_classifier_scores_both_heads_of_a_joint_model(tiny_joint_model_dir, tiny_corpus_dir, tmp_path, capsys):
    rc = cli_main(["eval-classifier", "--json", "--corpus", str(tiny_corpus_dir), "--max-docs", "20",
                   "--token-model", str(tiny_joint_model_dir), "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    card = load_model_card(tiny_joint_model_dir)
    assert result["threshold"] == pytest.approx(card.threshold, abs=1e-4)
    assert result["doc_threshold"] == pytest.approx(card.doc_threshold, abs=1e-4)
    assert 0 <= result["token_f1"] <= 1 and 0 <= result["doc_f1"] <= 1


def test_init_fine_tunes_the_exported_weights(tiny_models_dir, tiny_corpus_dir, tmp_path):
    """One step at a vanishing learning rate from ``--init``: the new export scores like the old one
    (a fresh head would score at random), and its card names where it started."""
    from tokfilter.training.classifier.train import TrainConfig, train_classifier

    init = tiny_models_dir / "token_classifier"
    config = TrainConfig(task="token", layers=1, max_steps=1, batch_size=8, lr=1e-12, max_length=64, stride=16, init=str(init))
    card = train_classifier(config, tiny_corpus_dir, tmp_path / "tuned", threads=2, log=io.StringIO())
    assert card["extra"]["train_config"]["init"] == str(init)
    assert card["extra"]["init_onnx_sha256"] == file_sha256(init / "model.onnx")
    tokenizer = load_tokenizer(init / "tokenizer.json")
    ids, mask = pad_batch([np.asarray(tokenizer.encode(t).ids) for t in ("insulin dose for the patient", "the cell divides")])
    np.testing.assert_allclose(OnnxWindowScorer(tmp_path / "tuned")(ids, mask) * mask, OnnxWindowScorer(init)(ids, mask) * mask, atol=1e-4)


def test_bf16_training_loss_is_the_fp32_loss_within_bf16_rounding():
    """The autocast path changes the arithmetic, not the objective: same model, same batch, same loss
    to bf16's ~3 significant digits, and the loss stays float32."""
    from tokfilter.training.classifier.train import training_loss

    model = build_model("joint", layers=1, seed=5).eval()  # no dropout: both runs see one network
    rng = np.random.default_rng(0)
    windows = []
    for n in (12, 30, 64):
        ids = np.concatenate([[101], rng.integers(1000, 20000, n - 2), [102]])
        token_labels = np.concatenate([[-100], rng.integers(0, 2, n - 2), [-100]])
        windows.append((ids, (token_labels, np.int64(n % 2))))
    batch = np.arange(len(windows))
    losses = {p: training_loss(model, windows, batch, "joint", 0.0, np.random.default_rng(1), p) for p in ("fp32", "bf16")}
    assert losses["bf16"].dtype == torch.float32
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=2e-2)


def test_card_records_the_training_precision(tiny_joint_model_dir):
    from tokfilter.training.precision import resolve_precision

    train = load_model_card(tiny_joint_model_dir).metrics["train"]
    assert train["train_precision"] == resolve_precision("auto", "cpu", bf16_on_avx512=True)
