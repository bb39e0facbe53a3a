"""Export a trained classifier to ONNX (fp32 + int8), calibrate it on validation and write its card.

Calibration scores the exported fp32 ONNX model, the artifact that is served, not the torch model;
a parity check on held-out windows ties the two together (max abs probability difference <= 1e-3).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.inference import MODEL_FILES, OnnxWindowScorer, import_onnxruntime
from tokfilter.modelcard import ModelCard
from tokfilter.training.classifier.train import (
    DOC_LOSS_WEIGHT,
    ENCODER_NAME,
    LABELS,
    TrainConfig,
    binary_metrics,
    calibrate_thresholds,
    encode_documents,
    score_heads,
    torch_score_fn,
)
from tokfilter.windows import WindowSequences, load_tokenizer, pad_batch

OPSET = 18
EXPORTER = "torchscript, eager attention"  # recorded in the model card
PARITY_TOLERANCE = 1e-3
MODEL_NAMES = {"token": "token_classifier", "document": "doc_classifier", "joint": "joint_classifier"}


@contextlib.contextmanager
def quiet_exporters():
    """Silence the exporter's tracer warnings and the quantizer's advice (pre-processing hints): the
    parity check on held-out windows, not these, says whether an export is right."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A tiny int64 batch for tracing, one row padded, so the traced graph keeps the masking path."""
    ids = torch.randint(1000, 2000, (2, 12), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return ids, mask


def export_onnx(model: torch.nn.Module, path: Path, task: str) -> None:
    """Write ``model`` as ONNX with int64 inputs and dynamic batch/sequence axes.

    Attention is exported in its eager form (matmul, masked add, softmax) through the TorchScript
    exporter (``EXPORTER``): the graph ONNX Runtime runs fastest. ``benchmarks/export_graph.py``
    measured 1.39x (fp32) and 1.49x (int8) the tokens/s of the dynamo exporter's graph of SDPA
    attention on the default token model, and 1.27x / 1.24x for the dynamo exporter with eager
    attention. The switch to eager attention stays on ``model`` (same outputs, used by the parity check).
    """
    from transformers import PreTrainedModel

    model.eval()
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.set_attn_implementation("eager")
    axes = {0: "batch", 1: "sequence"}
    outputs = {"token": {"logits": axes}, "document": {"logits": {0: "batch"}},
               "joint": {"logits": axes, "doc_logits": {0: "batch"}}}[task]
    with quiet_exporters():
        torch.onnx.export(
            model, example_inputs(), str(path), dynamo=False, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
            output_names=list(outputs), dynamic_axes={"input_ids": axes, "attention_mask": axes, **outputs},
        )


def onnx_opset(path: Path) -> int:
    """The default-domain opset an exported file actually declares (what runtimes must support)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8 quantization, ORT's CPU fast path: int8 weights, and activations quantized at run
    time with one scale per tensor of a call. That scale spans the whole batch, so an int8 score
    moves with the windows batched alongside (benchmarks/results/batch_tokens.md); fp32 ones do not."""
    import_onnxruntime()  # a clear error where neither the cpu nor the gpu extra is installed
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_exporters():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)


def parity_max_diff(model: torch.nn.Module, scorer: OnnxWindowScorer, windows: list[np.ndarray]) -> float:
    """Max abs difference of p(forget) between torch and ONNX Runtime on the real tokens of
    ``windows`` (every head of a joint model)."""
    ids, mask = pad_batch(windows)
    torch_out, onnx_out = torch_score_fn(model)(ids, mask), scorer(ids, mask)
    pairs = zip(torch_out, onnx_out) if isinstance(torch_out, tuple) else [(torch_out, onnx_out)]
    diffs = [np.abs(t - o)[mask.astype(bool)] if t.ndim == 2 else np.abs(t - o) for t, o in pairs]
    return float(max(np.max(d) for d in diffs))


def head_metrics(labels: np.ndarray, scores: dict[str, np.ndarray], threshold: float, threshold_recall95: float, prefix: str) -> dict:
    """Validation metrics of one head at its thresholds, per precision, named ``{prefix}validation_{precision}_*``."""
    metrics = {}
    for precision, s in scores.items():
        for name, value in binary_metrics(labels, s, threshold).items():
            metrics[f"{prefix}validation_{precision}_{name}"] = round(value, 4)
        metrics[f"{prefix}validation_{precision}_recall_at_threshold_recall95"] = round(binary_metrics(labels, s, threshold_recall95)["recall"], 4)
    metrics[f"{prefix}int8_f1_minus_fp32_f1"] = round(metrics[f"{prefix}validation_int8_f1"] - metrics[f"{prefix}validation_fp32_f1"], 4)
    return metrics


def export_classifier(model: torch.nn.Module, config: TrainConfig, tokenizer_path: Path, out_dir: Path, val_docs: list[dict],
                      data_digest: str, train_stats: dict, log=sys.stderr) -> ModelCard:
    """Write model.onnx, model.int8.onnx, tokenizer.json and tokfilter.json (calibrated) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_onnx(model, out_dir / MODEL_FILES["fp32"], config.task)
    quantize_int8(out_dir / MODEL_FILES["fp32"], out_dir / MODEL_FILES["int8"])
    shutil.copyfile(tokenizer_path, out_dir / "tokenizer.json")
    print(f"[export] {config.task}: ONNX ({EXPORTER}) + int8 in {time.perf_counter() - t0:.1f}s", file=log, flush=True)
    card = ModelCard(
        name=MODEL_NAMES[config.task], task=config.task, labels=list(LABELS),
        output="logits, doc_logits" if config.task == "joint" else "logits", max_length=config.max_length,
        stride=config.stride, threshold=0.5, threshold_recall95=0.5, data_digest=data_digest, encoder=ENCODER_NAME,
        num_layers=config.layers,
        extra={
            "train_config": vars(config).copy(),
            **({"init_onnx_sha256": file_sha256(Path(config.init) / MODEL_FILES["fp32"])} if config.init else {}),
            "exporter": EXPORTER,
            "opset": onnx_opset(out_dir / MODEL_FILES["fp32"]),
            "token_labels": "a token is positive when any of its characters lies in a label span",
            "document_score": "max over windows of p(forget); a document is positive when it contains a medicine passage",
            **({"window_labels": "a window is positive when its content overlaps a forget passage",
                "loss": f"token CE + {DOC_LOSS_WEIGHT} x window CE"} if config.task == "joint" else {}),
        },
    )
    card.save(out_dir)  # provisional: OnnxWindowScorer reads the card

    tokenizer = load_tokenizer(out_dir / "tokenizer.json")
    metrics: dict = {"train": train_stats, "validation_docs": len(val_docs)}
    scorers = {precision: OnnxWindowScorer(out_dir, precision=precision) for precision in MODEL_FILES}
    heads = {p: score_heads(s, config.max_length, config.stride, tokenizer, val_docs, config.task) for p, s in scorers.items()}
    own = "document" if config.task == "document" else "token"  # the head ``threshold`` belongs to
    labels = heads["fp32"][own][0]
    card.threshold, card.threshold_recall95 = calibrate_thresholds(labels, heads["fp32"][own][1])
    metrics |= head_metrics(labels, {p: h[own][1] for p, h in heads.items()}, card.threshold, card.threshold_recall95, "")
    if config.task == "joint":  # the document head: its own thresholds and metrics, "doc_"-prefixed
        labels = heads["fp32"]["document"][0]
        card.doc_threshold, card.doc_threshold_recall95 = calibrate_thresholds(labels, heads["fp32"]["document"][1])
        metrics |= head_metrics(labels, {p: h["document"][1] for p, h in heads.items()}, card.doc_threshold,
                                card.doc_threshold_recall95, "doc_")

    sequences = WindowSequences.for_tokenizer(tokenizer, config.max_length, config.stride)
    held_out = [sequences.sequence(doc.ids, sequences.plan(len(doc.ids))[0]) for doc in encode_documents(tokenizer, val_docs[:16])]
    metrics["parity_max_abs_prob_diff_fp32"] = parity_max_diff(model, scorers["fp32"], held_out)
    card.metrics = metrics
    card.save(out_dir)
    if metrics["parity_max_abs_prob_diff_fp32"] > PARITY_TOLERANCE:
        raise TokfilterError(
            f"ONNX fp32 parity failed: max abs probability difference {metrics['parity_max_abs_prob_diff_fp32']:.2e} "
            f"> {PARITY_TOLERANCE} (model in {out_dir})"
        )
    print(f"[export] {config.task}: threshold {card.threshold:.4f}, recall95 threshold {card.threshold_recall95:.4f}, "
          f"val F1 fp32 {metrics['validation_fp32_f1']:.4f} int8 {metrics['validation_int8_f1']:.4f}", file=log, flush=True)
    if card.joint:
        print(f"[export] joint document head: threshold {card.doc_threshold:.4f}, recall95 threshold {card.doc_threshold_recall95:.4f}, "
              f"val F1 fp32 {metrics['doc_validation_fp32_f1']:.4f} int8 {metrics['doc_validation_int8_f1']:.4f}", file=log, flush=True)
    return card
