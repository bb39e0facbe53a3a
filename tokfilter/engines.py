"""Engines that run an exported classifier, and the one way to choose among them.

Every engine is a ``GraphScorer`` (``tokfilter.inference``): it runs the exported graph and returns
its raw outputs; the post-processing is shared. Engines and precisions:

- ``onnxruntime``: fp32 (``model.onnx``), int8 (``model.int8.onnx``, dynamic quantization); CPU or CUDA.
- ``openvino``: fp32 and bf16 (``INFERENCE_PRECISION_HINT`` on ``model.onnx``), int8 (``model.int8.onnx``); CPU.
- ``torch``: fp32, bf16, fp16 (autocast) of a PyTorch module rebuilt from ``model.onnx``'s weights
  (``tokfilter.torch_engine``); CPU or CUDA.

``auto`` (``choose_engine``) picks by what the CPU offers, measured in ``benchmarks/results/engines.md``:

- OpenVINO bf16 where the CPU has bf16 matrix instructions (``amx_bf16``, or ``avx512_bf16`` without
  AMX) and ``openvino`` is installed: 82k vs ONNX Runtime fp32 19k tokens/s on AMX (issue 13); on
  the AMD EPYC (avx512_bf16, no AMX) here 2.2x ONNX Runtime fp32 on 16 x 256 batches and 1.8x on
  the filter's 1024-token batches, token F1 unchanged;
- else ONNX Runtime fp32, the reference: OpenVINO fp32 gives the same scores but only 1.0x ONNX
  Runtime fp32 on the 1024-token batches the filter and the Triton models run (1.3-1.6x on 16 x 256).

``TOKFILTER_ENGINE`` (onnxruntime|openvino|torch), when set, is what ``auto`` runs. int8 is never picked by ``auto``: dynamic quantization makes a token's score depend on the windows
batched with it. An engine/precision whose parity check (``tokfilter check-engine --record``) failed
for this model file is refused by ``auto``, which then takes the next one.
"""

from __future__ import annotations

import json
import os
import queue
from dataclasses import astuple, dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.inference import MODEL_FILES, GraphScorer, OnnxWindowScorer, engine_threads, file_precision
from tokfilter.modelcard import load_model_card

ENGINES = ("auto", "onnxruntime", "openvino", "torch")
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "torch": ("fp32", "bf16", "fp16"),
}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
ENGINE_ENV = "TOKFILTER_ENGINE"  # set: what ``auto`` runs (onnxruntime|openvino|torch), e.g. to pin a deployment
CHECKS_FILE = "engine_checks.json"  # parity checks recorded by `tokfilter check-engine --record`


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def openvino_installed() -> bool:
    return find_spec("openvino") is not None


def import_openvino():
    """The ``openvino`` module, or a TokfilterError saying which extra installs it."""
    try:
        import openvino
    except ImportError as err:
        raise TokfilterError("OpenVINO is not installed: from the tokfilter checkout, pip install '.[openvino]'") from err
    return openvino


def recorded_checks(model_dir: Path | str) -> dict:
    """Parity checks recorded for ``model_dir`` ("engine precision" -> check), empty if none."""
    path = Path(model_dir) / CHECKS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TokfilterError(f"{path} is not valid JSON: {err}") from err


def failed_check(model_dir: Path | str, engine: str, precision: str) -> dict | None:
    """The recorded parity check of ``engine precision`` on this very model file, if it failed."""
    check = recorded_checks(model_dir).get(f"{engine} {precision}")
    if check is None or check.get("passed", True):
        return None
    if check.get("onnx_sha256") != file_sha256(Path(model_dir) / MODEL_FILES["fp32"]):
        return None  # recorded for another export
    return check


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    precision: str
    reason: str


def default_precision(engine: str, device: str = "cpu", flags: frozenset[str] | None = None) -> str:
    """The precision an engine runs when none is asked for: bf16 where the hardware has it (OpenVINO
    on a bf16 CPU, torch on CUDA), else fp32."""
    if engine == "openvino":
        flags = cpu_flags() if flags is None else flags
        return "bf16" if any(f in flags for f in BF16_CPU_FLAGS) else "fp32"
    if engine == "torch" and device == "cuda":
        return "bf16"
    return "fp32"


def choose_engine(model_dir: Path | str, precision: str | None = None, device: str = "cpu",
                  flags: frozenset[str] | None = None, have_openvino: bool | None = None) -> EngineChoice:
    """What ``auto`` runs (the rule and its measurements are in this module's docstring)."""
    flags = cpu_flags() if flags is None else flags
    have_openvino = openvino_installed() if have_openvino is None else have_openvino
    if device == "cuda":
        from tokfilter.inference import import_onnxruntime

        if "CUDAExecutionProvider" in import_onnxruntime().get_available_providers():
            return EngineChoice("onnxruntime", precision or "fp32", "device cuda: ONNX Runtime has its CUDA provider")
        return EngineChoice("torch", precision or "bf16", "device cuda: ONNX Runtime has no CUDA provider")
    if precision == "int8":
        return EngineChoice("onnxruntime", "int8", "int8 asked for: ONNX Runtime's dynamic quantization")
    if precision == "fp32":
        return EngineChoice("onnxruntime", "fp32", "fp32 asked for: the reference engine")
    if precision not in (None, "bf16"):
        raise TokfilterError(f"auto runs fp32, bf16 or int8 on a CPU, got {precision!r} (fp16: --engine torch)")
    bf16_cpu = sorted(f for f in BF16_CPU_FLAGS if f in flags)
    if not bf16_cpu:
        if precision == "bf16":
            raise TokfilterError(f"precision bf16 needs a CPU with {' or '.join(BF16_CPU_FLAGS)}; this one has neither")
        return EngineChoice("onnxruntime", "fp32", "CPU has no bf16 instructions")
    if not have_openvino:
        if precision == "bf16":
            raise TokfilterError("precision bf16 needs OpenVINO (pip install '.[openvino]') or --engine torch")
        return EngineChoice("onnxruntime", "fp32", f"CPU has {', '.join(bf16_cpu)}, but openvino is not installed")
    failed = failed_check(model_dir, "openvino", "bf16")
    if failed is not None:
        return EngineChoice("onnxruntime", "fp32", f"refused openvino bf16: its recorded parity check failed "
                                                   f"(F1 differs by {failed['f1_diff']:+.4f})")
    return EngineChoice("openvino", "bf16", f"CPU has {', '.join(bf16_cpu)}")


class OpenVinoWindowScorer(GraphScorer):
    """Scores window batches with OpenVINO on the CPU; batch and sequence length vary per call.

    bf16 is OpenVINO's ``INFERENCE_PRECISION_HINT`` on the fp32 graph (matmuls in bf16 on AMX or
    avx512_bf16); a CPU without bf16 instructions is refused rather than silently run in fp32.

    ``streams`` infer requests, each on its own OpenVINO stream of ``threads / streams`` threads, serve
    that many calls at once; further callers wait for a free one. The default, 1, runs calls one at a
    time like ``OnnxWindowScorer``, which is all a sequential caller (the pipeline without an executor)
    can use; with 2 concurrent callers, 2 streams x 1 thread scored 1.4x the tokens/s of 1 stream x 2
    threads on 4 x 256 bf16 batches here (11.7-12.2k vs 8.5k; one caller: 7.5-8.7k vs 7.2-8.1k)."""

    engine = "openvino"
    HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}

    def __init__(self, model_dir: Path | str, precision: str = "fp32", threads: int | None = None, streams: int = 1):
        ov = import_openvino()
        if precision not in PRECISIONS["openvino"]:
            raise TokfilterError(f"openvino precision must be one of {PRECISIONS['openvino']}, got {precision!r}")
        self.model_dir, self.precision = Path(model_dir), precision
        self.card = load_model_card(self.model_dir)
        path = self.model_dir / MODEL_FILES[file_precision(precision)]
        if not path.is_file():
            raise TokfilterError(f"model file not found: {path}")
        core = ov.Core()
        if streams < 1:
            raise TokfilterError(f"openvino streams must be >= 1, got {streams}")
        config = {"INFERENCE_PRECISION_HINT": self.HINTS[precision], "INFERENCE_NUM_THREADS": engine_threads(threads),
                  "NUM_STREAMS": streams}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision == "bf16" and ran != ov.Type.bf16:
            raise TokfilterError(f"openvino bf16 asked for, but this CPU runs {ran.get_type_name()}: it has none of {BF16_CPU_FLAGS}")
        self.free_requests: queue.Queue = queue.Queue()
        for _ in range(streams):
            self.free_requests.put(self.compiled.create_infer_request())

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        request = self.free_requests.get()
        try:
            result = request.infer(feeds)  # copies the outputs out of the request's buffers
            return {output.get_any_name(): np.asarray(result[output]) for output in self.compiled.outputs}
        finally:
            self.free_requests.put(request)


def resolve_engine(model_dir: Path | str, engine: str = "auto", precision: str | None = None,
                   device: str = "cpu") -> EngineChoice:
    """The engine and precision ``make_window_scorer`` would run, and why (``auto`` resolved)."""
    if engine not in ENGINES:
        raise TokfilterError(f"engine must be one of {ENGINES}, got {engine!r}")
    reason = f"{engine} asked for"
    if engine == "auto" and os.environ.get(ENGINE_ENV):
        engine, reason = os.environ[ENGINE_ENV], f"auto: {ENGINE_ENV}={os.environ[ENGINE_ENV]}"
        if engine not in PRECISIONS:
            raise TokfilterError(f"{ENGINE_ENV} must be one of {tuple(PRECISIONS)}, got {engine!r}")
    if engine == "auto":
        choice = choose_engine(model_dir, precision, device)
        return EngineChoice(choice.engine, choice.precision, f"auto: {choice.reason}")
    precision = precision or default_precision(engine, device)
    if precision not in PRECISIONS[engine]:
        raise TokfilterError(f"{engine} precision must be one of {PRECISIONS[engine]}, got {precision!r}")
    return EngineChoice(engine, precision, reason)


def make_window_scorer(model_dir: Path | str, engine: str = "auto", precision: str | None = None,
                       threads: int | None = None, device: str = "cpu") -> GraphScorer:
    """The window scorer of ``model_dir`` on ``engine`` at ``precision`` (None: the engine's default).

    The returned scorer carries ``engine``, ``precision`` and, for ``auto``, ``choice_reason``."""
    engine, precision, reason = astuple(resolve_engine(model_dir, engine, precision, device))
    if engine == "onnxruntime":
        scorer: GraphScorer = OnnxWindowScorer(model_dir, precision=precision, threads=threads, device=device)
    elif engine == "openvino":
        if device != "cpu":
            raise TokfilterError(f"the openvino engine runs on the CPU only, got device {device!r}")
        scorer = OpenVinoWindowScorer(model_dir, precision=precision, threads=threads)
    else:
        from tokfilter.torch_engine import TorchWindowScorer

        scorer = TorchWindowScorer(model_dir, precision=precision, threads=threads, device=device)
    scorer.choice_reason = reason
    return scorer


def engine_line(scorer: GraphScorer) -> str:
    """What tells the user which engine and precision score a model, and why."""
    return f"{scorer.card.name}: {scorer.describe()} ({getattr(scorer, 'choice_reason', 'asked for')})"
