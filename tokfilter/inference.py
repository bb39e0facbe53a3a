"""In-process ONNX Runtime scoring of window batches: the reference every served path must match.

Other engines (OpenVINO, PyTorch: ``tokfilter.engines``) subclass ``GraphScorer`` the same way."""

from __future__ import annotations

import os
import threading
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from tokfilter.errors import TokfilterError
from tokfilter.modelcard import ModelCard, load_model_card

MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def file_precision(precision: str) -> str:
    """The exported file (``MODEL_FILES`` key) a run precision reads: int8 the quantized graph,
    fp32, bf16 and fp16 the fp32 one (engines lower its precision themselves)."""
    return "int8" if precision == "int8" else "fp32"


def forget_probability(logits: np.ndarray) -> np.ndarray:
    """p(forget class) from logits [..., 2], computed stably as sigmoid(l1 - l0)."""
    logits = np.asarray(logits, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1]))).astype(np.float32)


WindowProbs = np.ndarray | tuple[np.ndarray, np.ndarray]


def window_probabilities(outputs: dict[str, np.ndarray]) -> WindowProbs:
    """What a window scorer returns, from a classifier's raw outputs (any engine): p(forget) of
    ``logits``, [B, S] per position (token model) or [B] per window (document model); for a joint
    model, whose outputs also hold ``doc_logits``, the pair (token p [B, S], window p [B])."""
    probs = forget_probability(outputs["logits"])
    if "doc_logits" in outputs:
        return probs, forget_probability(outputs["doc_logits"])
    return probs


def import_onnxruntime():
    """The ``onnxruntime`` module, or a TokfilterError saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise TokfilterError("ONNX Runtime is not installed: from the tokfilter checkout, pip install '.[cpu]' "
                             "(or '.[gpu]' on a CUDA host)") from err
    return onnxruntime


def onnx_providers(device: str = "cpu") -> list[str]:
    """Execution providers for ``device``: CUDA first when asked for and available.

    For CUDA, the CUDA and cuDNN libraries are loaded first from the ``nvidia-*`` wheels (those of
    PyTorch or of ``onnxruntime-gpu[cuda,cudnn]``) with ``onnxruntime.preload_dlls``, so that no
    ``LD_LIBRARY_PATH`` set-up is needed."""
    ort = import_onnxruntime()
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise TokfilterError(f"device 'cuda' asked for, but onnxruntime has no CUDA provider: {cuda_install_hint()}")
        if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21
            ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _installed(distribution: str) -> bool:
    try:
        version(distribution)
    except PackageNotFoundError:
        return False
    return True


def cuda_install_hint() -> str:
    """How to get ONNX Runtime's CUDA provider, given what is installed now."""
    if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        return ("onnxruntime and onnxruntime-gpu are both installed, and the CPU one hides the CUDA provider: "
                "pip uninstall -y onnxruntime onnxruntime-gpu, then from the tokfilter checkout pip install '.[gpu]'")
    return "this is the CPU build: pip uninstall -y onnxruntime, then from the tokfilter checkout pip install '.[gpu]'"


def served_device() -> str:
    """The device the Triton models run on: ``TOKFILTER_DEVICE`` (cpu|cuda), else CUDA where
    onnxruntime has its CUDA provider (``onnxruntime-gpu``), else CPU."""
    ort = import_onnxruntime()
    if os.environ.get("TOKFILTER_DEVICE"):
        return os.environ["TOKFILTER_DEVICE"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda"
    if _installed("onnxruntime-gpu"):
        warnings.warn(f"onnxruntime-gpu is installed but ONNX Runtime has no CUDA provider, so the models run on the CPU: "
                      f"{cuda_install_hint()}", RuntimeWarning, stacklevel=2)
    return "cpu"


def engine_threads(threads: int | None = None) -> int:
    """Intra-op threads of an engine: ``threads``, else ``TOKFILTER_ORT_THREADS``, else every core."""
    return threads or int(os.environ.get("TOKFILTER_ORT_THREADS") or os.cpu_count() or 1)


class GraphScorer:
    """A window scorer over one exported graph: an engine's ``run`` returns the graph's raw outputs
    by name (``logits``, and ``doc_logits`` for a joint model), and ``__call__`` applies the one
    post-processing every engine shares (``window_probabilities``).

    ``engine`` and ``precision`` name what actually runs (reported to the user and in manifests)."""

    engine: str
    precision: str
    card: ModelCard

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> WindowProbs:
        return window_probabilities(self.run(input_ids, attention_mask))

    def describe(self) -> str:
        """``engine precision`` of this scorer, e.g. ``openvino bf16``."""
        return f"{self.engine} {self.precision}"


class OnnxWindowScorer(GraphScorer):
    """Scores padded window batches with an exported classifier on ONNX Runtime.

    Token model: ``(input_ids, attention_mask) [B, S] -> p(forget) [B, S]``.
    Document model: ``-> p(forget) [B]``. Joint model: ``-> (p [B, S], p [B])``
    (``window_probabilities``).

    Calls from several threads run one at a time: one run already uses every intra-op thread, and
    concurrent runs of a session only multiply its activation memory (16 threads scoring 256-token
    batches at once grew one process past 16 GB and into the OOM killer).
    """

    engine = "onnxruntime"

    def __init__(self, model_dir: Path | str, precision: str = "fp32", threads: int | None = None, device: str = "cpu"):
        ort = import_onnxruntime()
        if precision not in MODEL_FILES:
            raise TokfilterError(f"precision must be one of {sorted(MODEL_FILES)}, got {precision!r}")
        self.precision = precision
        self.model_dir = Path(model_dir)
        self.card: ModelCard = load_model_card(self.model_dir)
        path = self.model_dir / MODEL_FILES[precision]
        if not path.is_file():
            raise TokfilterError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = engine_threads(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            # onnxruntime falls back to the CPU with only a log line when the CUDA libraries do not load
            raise TokfilterError(f"device 'cuda' asked for, but ONNX Runtime could not start its CUDA provider for {path} "
                                 "(its CUDA and cuDNN libraries did not load: from the tokfilter checkout pip install '.[gpu]')")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._one_run_at_a_time = threading.Lock()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        with self._one_run_at_a_time:
            outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outputs))
