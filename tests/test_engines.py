"""The engines (ONNX Runtime, OpenVINO, PyTorch), the choice among them and the parity gate, on the tiny exports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tokfilter.engines import (
    CHECKS_FILE,
    choose_engine,
    cpu_flags,
    engine_line,
    make_window_scorer,
    openvino_installed,
)
from tokfilter.errors import TokfilterError

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="openvino is not installed (pip install '.[openvino]')")
needs_bf16_cpu = pytest.mark.skipif(not {"amx_bf16", "avx512_bf16"} & cpu_flags(), reason="this CPU has no bf16 instructions")
MODELS = ("token_classifier", "doc_classifier")


def windows(seed: int, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """Random windows with ragged real lengths (padding at the end), as the pipeline batches them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 8000, (batch, seq)).astype(np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(rng.integers(1, seq + 1, batch)):
        mask[row, :length] = 1
    return ids * mask, mask


def max_diff(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)[mask.astype(bool)] if got.ndim == 2 else np.abs(got - want)))


@pytest.mark.parametrize("flags, have_openvino, precision, want", [
    ({"amx_bf16", "amx_int8", "avx512_bf16"}, True, None, ("openvino", "bf16")),
    ({"avx512_bf16", "avx512f"}, True, None, ("openvino", "bf16")),
    ({"avx2", "avx512f"}, True, None, ("onnxruntime", "fp32")),
    ({"amx_bf16"}, False, None, ("onnxruntime", "fp32")),
    ({"amx_bf16"}, True, "fp32", ("onnxruntime", "fp32")),
    ({"amx_bf16"}, True, "bf16", ("openvino", "bf16")),
    ({"amx_bf16"}, True, "int8", ("onnxruntime", "int8")),
])
def test_auto_choice_follows_the_cpu(tiny_models_dir, flags, have_openvino, precision, want):
    choice = choose_engine(tiny_models_dir / "token_classifier", precision, flags=frozenset(flags), have_openvino=have_openvino)
    assert (choice.engine, choice.precision) == want and choice.reason


def test_auto_refuses_what_it_cannot_run(tiny_models_dir):
    with pytest.raises(TokfilterError, match="needs a CPU with"):
        choose_engine(tiny_models_dir / "token_classifier", "bf16", flags=frozenset({"avx2"}), have_openvino=True)
    with pytest.raises(TokfilterError, match="needs OpenVINO"):
        choose_engine(tiny_models_dir / "token_classifier", "bf16", flags=frozenset({"amx_bf16"}), have_openvino=False)
    with pytest.raises(TokfilterError, match="engine must be one of"):
        make_window_scorer(tiny_models_dir / "token_classifier", "tensorrt")
    with pytest.raises(TokfilterError, match="precision must be one of"):
        make_window_scorer(tiny_models_dir / "token_classifier", "onnxruntime", "bf16")


def test_auto_skips_an_engine_whose_recorded_parity_check_failed(tiny_models_dir, tmp_path):
    from tokfilter.training.classifier.check_engine import record_check
    from tokfilter.digest import file_sha256

    model_dir = tmp_path / "token_classifier"
    shutil.copytree(tiny_models_dir / "token_classifier", model_dir)
    bf16 = frozenset({"amx_bf16"})
    sha = file_sha256(model_dir / "model.onnx")
    record_check(model_dir, {"engine": "openvino", "precision": "bf16", "onnx_sha256": sha, "passed": False, "f1_diff": -0.02})
    choice = choose_engine(model_dir, flags=bf16, have_openvino=True)
    assert (choice.engine, choice.precision) == ("onnxruntime", "fp32") and "parity check failed" in choice.reason
    # a check recorded for another export of the same folder does not count
    checks = json.loads((model_dir / CHECKS_FILE).read_text())
    for check in checks.values():
        check["onnx_sha256"] = "0" * 64
    (model_dir / CHECKS_FILE).write_text(json.dumps(checks))
    assert choose_engine(model_dir, flags=bf16, have_openvino=True).precision == "bf16"


@needs_openvino
@pytest.mark.parametrize("model", MODELS)
def test_openvino_fp32_matches_onnxruntime_on_varying_shapes(tiny_models_dir, model):
    reference = make_window_scorer(tiny_models_dir / model, "onnxruntime", "fp32", threads=2)
    scorer = make_window_scorer(tiny_models_dir / model, "openvino", "fp32", threads=2)
    assert engine_line(scorer).endswith("openvino fp32 (openvino asked for)")
    for seed, (batch, seq) in enumerate([(1, 5), (7, 64), (3, 17)]):
        ids, mask = windows(seed, batch, seq)
        got = scorer(ids, mask)
        assert got.shape == reference(ids, mask).shape
        assert max_diff(got, reference(ids, mask), mask) < 1e-4


@needs_openvino
@needs_bf16_cpu
@pytest.mark.parametrize("model", MODELS)
def test_openvino_bf16_stays_close_to_fp32(tiny_models_dir, model):
    ids, mask = windows(0, 8, 64)
    reference = make_window_scorer(tiny_models_dir / model, "onnxruntime", "fp32", threads=2)(ids, mask)
    scorer = make_window_scorer(tiny_models_dir / model, "openvino", "bf16", threads=2)
    assert scorer.precision == "bf16"
    assert 0 < max_diff(scorer(ids, mask), reference, mask) < 0.02  # > 0: bf16 really ran


@pytest.mark.parametrize("model", MODELS)
def test_torch_engine_rebuilt_from_the_onnx_weights_matches_onnxruntime(tiny_models_dir, model):
    ids, mask = windows(1, 6, 40)
    reference = make_window_scorer(tiny_models_dir / model, "onnxruntime", "fp32", threads=2)(ids, mask)
    fp32 = make_window_scorer(tiny_models_dir / model, "torch", "fp32", threads=2)
    assert max_diff(fp32(ids, mask), reference, mask) < 1e-4
    bf16 = make_window_scorer(tiny_models_dir / model, "torch", "bf16", threads=2)
    assert max_diff(bf16(ids, mask), reference, mask) < 0.02


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_torch_engine_on_cuda_matches_onnxruntime(tiny_models_dir, precision):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ids, mask = windows(2, 16, 64)
    reference = make_window_scorer(tiny_models_dir / "token_classifier", "onnxruntime", "fp32")(ids, mask)
    scorer = make_window_scorer(tiny_models_dir / "token_classifier", "torch", precision, device="cuda")
    assert max_diff(scorer(ids, mask), reference, mask) < 0.02


def test_torch_engine_refuses_cuda_without_a_device(tiny_models_dir):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(TokfilterError, match="no CUDA device"):
        make_window_scorer(tiny_models_dir / "token_classifier", "torch", "bf16", device="cuda")


def two_output_export(model_dir, out_dir):
    """A copy of an export whose graph has a second output (``neg_logits`` = -logits), the shape of a
    graph with several heads."""
    import onnx
    from onnx import helper

    shutil.copytree(model_dir, out_dir)
    model = onnx.load(str(out_dir / "model.onnx"))
    model.graph.node.append(helper.make_node("Neg", ["logits"], ["neg_logits"]))
    logits = model.graph.output[0]
    model.graph.output.append(helper.make_tensor_value_info("neg_logits", logits.type.tensor_type.elem_type, None))
    onnx.save(model, str(out_dir / "model.onnx"))
    return out_dir


@pytest.mark.parametrize("engine", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_engines_return_every_output_of_a_graph_with_several(tiny_models_dir, tmp_path, engine):
    model_dir = two_output_export(tiny_models_dir / "token_classifier", tmp_path / "two")
    scorer = make_window_scorer(model_dir, engine, "fp32", threads=2)
    ids, mask = windows(3, 4, 20)
    outputs = scorer.run(ids, mask)
    assert list(outputs) == ["logits", "neg_logits"]  # by the graph's names, in its order
    assert outputs["logits"].shape == (4, 20, 2)
    np.testing.assert_allclose(outputs["neg_logits"], -outputs["logits"], atol=1e-6)
    assert scorer(ids, mask).shape == (4, 20)


# int8: dynamic quantization moves a window's probabilities with the batch (up to 0.26 measured,
# benchmarks/results/batch_tokens.md); the other engines run the fp32 weights.
JOINT_ENGINES = [("onnxruntime", "int8", 0.2), pytest.param("openvino", "fp32", 1e-4, marks=needs_openvino),
                 pytest.param("openvino", "bf16", 0.02, marks=[needs_openvino, needs_bf16_cpu]), ("torch", "fp32", 1e-4),
                 ("torch", "bf16", 0.02)]


@pytest.mark.parametrize("engine, precision, tolerance", JOINT_ENGINES)
def test_joint_model_gives_both_heads_on_every_engine(tiny_joint_model_dir, engine, precision, tolerance):
    """Every engine returns a joint graph's two outputs by name, and the one shared post-processing
    makes (token p [B, S], window p [B]) of them, close to ONNX Runtime fp32's."""
    ids, mask = windows(4, 5, 48)
    reference = make_window_scorer(tiny_joint_model_dir, "onnxruntime", "fp32", threads=2)
    want_tokens, want_windows = reference(ids, mask)
    scorer = make_window_scorer(tiny_joint_model_dir, engine, precision, threads=2)
    assert set(scorer.run(ids, mask)) == {"logits", "doc_logits"}
    tokens, window_probs = scorer(ids, mask)
    assert tokens.shape == (5, 48) and window_probs.shape == (5,)
    assert max_diff(tokens, want_tokens, mask) < tolerance
    assert max_diff(window_probs, want_windows, mask) < tolerance


@needs_openvino
def test_parity_gate_checks_both_heads_of_a_joint_model(tiny_joint_model_dir, tiny_corpus_dir):
    from tokfilter.training.classifier.check_engine import check_engine
    from tokfilter.training.classifier.train import load_split

    check = check_engine(tiny_joint_model_dir, load_split(tiny_corpus_dir, "validation")[:20], "openvino", "fp32", threads=2)
    assert check["passed"] and check["max_abs_prob_diff"] < 1e-4 and check["doc_max_abs_prob_diff"] < 1e-4
    assert check["doc_threshold"] is not None and check["doc_n"] == 20


@needs_openvino
def test_parity_gate_compares_with_onnxruntime_fp32_on_labelled_documents(tiny_models_dir, tiny_corpus_dir, tmp_path):
    from tokfilter.engines import make_window_scorer
    from tokfilter.modelcard import load_model_card
    from tokfilter.training.classifier.check_engine import check_engine, compare_scores, record_check
    from tokfilter.training.classifier.train import load_split, score_heads
    from tokfilter.windows import load_tokenizer

    docs = load_split(tiny_corpus_dir, "validation")[:20]
    model_dir = tiny_models_dir / "token_classifier"
    check = check_engine(model_dir, docs, "openvino", "fp32", threads=2)
    assert check["passed"] and check["max_abs_prob_diff"] < 1e-4 and check["n"] > 100
    # fp32 against fp32: a flag may differ only where the reference score lies within the largest
    # difference of the threshold (the calibrated threshold is itself a validation token's score)
    card = load_model_card(model_dir)
    _, reference = score_heads(make_window_scorer(model_dir, "onnxruntime", "fp32", 2), card.max_length, card.stride,
                               load_tokenizer(model_dir / "tokenizer.json"), docs, "token")["token"]
    assert check["flags_changed"] <= int(np.sum(np.abs(reference - card.threshold) <= check["max_abs_prob_diff"]))
    # the gate fails an engine whose flags move the F1 by more than the tolerance
    labels = np.array([1, 1, 0, 0, 1, 0])
    reference = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])
    assert not compare_scores(labels, reference, np.array([0.9, 0.3, 0.1, 0.2, 0.7, 0.3]), 0.5)["passed"]
    copy_dir = tmp_path / "token_classifier"
    shutil.copytree(model_dir, copy_dir)
    path = record_check(copy_dir, check)
    assert json.loads(path.read_text())["openvino fp32"]["passed"] is True


def test_check_engine_cli(tiny_models_dir, tiny_corpus_dir, capsys):
    from tokfilter.cli import main

    rc = main(["check-engine", str(tiny_models_dir / "doc_classifier"), "--engine", "onnxruntime", "--precision", "int8",
               "--corpus", str(tiny_corpus_dir), "--max-docs", "10", "--threads", "2", "--json"])
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (out["engine"], out["precision"], out["docs"]) == ("onnxruntime", "int8", 10)
    assert rc == (0 if out["passed"] else 1)


def test_tokfilter_engine_pins_what_auto_runs(tiny_models_dir, monkeypatch):
    from tokfilter.engines import resolve_engine

    model_dir = tiny_models_dir / "token_classifier"
    monkeypatch.setenv("TOKFILTER_ENGINE", "torch")
    assert resolve_engine(model_dir).engine == "torch" and "TOKFILTER_ENGINE=torch" in resolve_engine(model_dir).reason
    assert resolve_engine(model_dir, "onnxruntime").engine == "onnxruntime"  # an explicit engine wins
    monkeypatch.setenv("TOKFILTER_ENGINE", "tvm")
    with pytest.raises(TokfilterError, match="TOKFILTER_ENGINE must be one of"):
        resolve_engine(model_dir)
    monkeypatch.delenv("TOKFILTER_ENGINE")
    assert resolve_engine(model_dir).reason.startswith("auto: ")


@needs_openvino
def test_openvino_request_pool_serves_concurrent_callers_the_same_scores(tiny_models_dir):
    from concurrent.futures import ThreadPoolExecutor

    from tokfilter.engines import OpenVinoWindowScorer

    scorer = OpenVinoWindowScorer(tiny_models_dir / "token_classifier", "fp32", threads=2, streams=2)
    batches = [windows(seed, 3, 30) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda b: scorer(*b), batches))
    for (ids, mask), got in zip(batches, concurrent):
        np.testing.assert_array_equal(got, scorer(ids, mask))
    with pytest.raises(TokfilterError, match="streams must be >= 1"):
        OpenVinoWindowScorer(tiny_models_dir / "token_classifier", streams=0)
