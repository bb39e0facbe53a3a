"""In-process ONNX Runtime scoring of window batches: the reference every served path must match."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from tokfilter.errors import TokfilterError
from tokfilter.modelcard import ModelCard, load_model_card

MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def forget_probability(logits: np.ndarray) -> np.ndarray:
    """p(forget class) from logits [..., 2], computed stably as sigmoid(l1 - l0)."""
    logits = np.asarray(logits, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1]))).astype(np.float32)


def onnx_providers(device: str = "cpu") -> list[str]:
    """Execution providers for ``device``: CUDA first when asked for and available.

    For CUDA, the CUDA and cuDNN libraries are loaded first from the ``nvidia-*`` wheels (those of
    PyTorch or of ``onnxruntime-gpu[cuda,cudnn]``) with ``onnxruntime.preload_dlls``, so that no
    ``LD_LIBRARY_PATH`` set-up is needed."""
    import onnxruntime as ort

    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise TokfilterError("device 'cuda' asked for, but onnxruntime has no CUDA provider (pip install 'tokfilter[gpu]')")
        if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21
            ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def served_device() -> str:
    """The device the Triton models run on: ``TOKFILTER_DEVICE`` (cpu|cuda), else CUDA where
    onnxruntime has its CUDA provider (``onnxruntime-gpu``), else CPU."""
    import onnxruntime as ort

    return os.environ.get("TOKFILTER_DEVICE") or (
        "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu")


class OnnxWindowScorer:
    """Scores padded window batches with an exported classifier.

    Token model: ``(input_ids, attention_mask) [B, S] -> p(forget) [B, S]``.
    Document model: ``-> p(forget) [B]``.

    Calls from several threads run one at a time: one run already uses every intra-op thread, and
    concurrent runs of a session only multiply its activation memory (16 threads scoring 256-token
    batches at once grew one process past 16 GB and into the OOM killer).
    """

    def __init__(self, model_dir: Path | str, precision: str = "fp32", threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        if precision not in MODEL_FILES:
            raise TokfilterError(f"precision must be one of {sorted(MODEL_FILES)}, got {precision!r}")
        self.model_dir = Path(model_dir)
        self.card: ModelCard = load_model_card(self.model_dir)
        path = self.model_dir / MODEL_FILES[precision]
        if not path.is_file():
            raise TokfilterError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or int(os.environ.get("TOKFILTER_ORT_THREADS", os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            # onnxruntime falls back to the CPU with only a log line when the CUDA libraries do not load
            raise TokfilterError(f"device 'cuda' asked for, but ONNX Runtime could not start its CUDA provider for {path} "
                                 "(CUDA 12/13 and cuDNN 9 libraries: pip install 'onnxruntime-gpu[cuda,cudnn]')")
        self._one_run_at_a_time = threading.Lock()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        with self._one_run_at_a_time:
            (logits,) = self.session.run(None, feeds)
        return forget_probability(logits)
