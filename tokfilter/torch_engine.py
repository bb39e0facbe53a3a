"""The PyTorch engine: the exported classifier rebuilt as a torch module, for CUDA (and CPU bf16).

One source of truth: the weights are read from ``model.onnx`` itself, so the torch module scores
the very export that ONNX Runtime and OpenVINO run. The TorchScript exporter keeps parameter names
for biases, norms and embeddings, and stores each linear layer's weight transposed under a
generated name (``onnx::MatMul_N``) as the right operand of a ``MatMul`` whose output feeds an
``Add`` of that layer's bias; ``onnx_state_dict`` follows that edge back to the layer's name.

Half precision runs under autocast (matmuls in bf16/fp16; softmax, layer norms and the output
probabilities in fp32). torch is imported only when this engine is asked for.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tokfilter.errors import TokfilterError
from tokfilter.inference import MODEL_FILES, GraphScorer, engine_threads
from tokfilter.modelcard import load_model_card


def import_torch():
    try:
        import torch
    except ImportError as err:
        raise TokfilterError("the torch engine needs PyTorch: pip install -c constraints.txt torch==2.13.0") from err
    return torch


def onnx_state_dict(graph, path: Path) -> dict[str, np.ndarray]:
    """The parameters of the exported graph (``onnx.GraphProto``) read from ``path`` under their
    torch names (linear weights transposed back)."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {name: array for name, array in arrays.items() if not name.startswith("onnx::")}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays or not node.input[1].startswith("onnx::"):
            continue
        biases = [i for add in consumers.get(node.output[0], []) if add.op_type == "Add" for i in add.input
                  if i in arrays and i.endswith(".bias")]
        if len(biases) != 1:
            raise TokfilterError(f"{path}: cannot name the weight {node.input[1]} (MatMul {node.name} feeds no single bias Add)")
        state[biases[0].removesuffix(".bias") + ".weight"] = arrays[node.input[1]].T
    return state


def torch_module_from_onnx(model_dir: Path | str):
    """The training architecture of ``model_dir``'s card with the weights of its ``model.onnx``, and
    the graph's output names (what the module's outputs are, in order)."""
    import onnx

    torch = import_torch()
    from transformers.utils import logging as hf_logging

    from tokfilter.classifier_model import build_model

    hf_logging.disable_progress_bar()  # build_model's pretrained weights are replaced right away
    model_dir = Path(model_dir)
    card = load_model_card(model_dir)
    module = build_model(card.task, card.num_layers)
    path = model_dir / MODEL_FILES["fp32"]
    graph = onnx.load(str(path)).graph
    state = {k: torch.from_numpy(np.array(v)) for k, v in onnx_state_dict(graph, path).items()}
    result = module.load_state_dict(state, strict=False)
    parameters = {name for name, _ in module.named_parameters()}
    missing = sorted(set(result.missing_keys) & parameters)
    if missing or result.unexpected_keys:
        raise TokfilterError(f"{model_dir}: model.onnx does not match the {card.task} architecture "
                             f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    for sub in module.modules():
        if hasattr(sub, "set_attn_implementation"):
            sub.set_attn_implementation("sdpa")
    return module.eval(), [output.name for output in graph.output]


class TorchWindowScorer(GraphScorer):
    """Scores window batches with the torch module on ``device`` (cpu|cuda) at fp32, bf16 or fp16."""

    engine = "torch"
    DTYPES = {"bf16": "bfloat16", "fp16": "float16"}

    def __init__(self, model_dir: Path | str, precision: str = "fp32", threads: int | None = None, device: str = "cpu"):
        torch = self.torch = import_torch()
        if precision not in ("fp32", *self.DTYPES):
            raise TokfilterError(f"torch precision must be one of fp32, bf16, fp16, got {precision!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise TokfilterError("device 'cuda' asked for, but torch sees no CUDA device")
        if device == "cpu":
            torch.set_num_threads(engine_threads(threads))
        self.model_dir, self.precision, self.device = Path(model_dir), precision, device
        self.card = load_model_card(self.model_dir)
        module, self.output_names = torch_module_from_onnx(self.model_dir)
        self.module = module.to(device)
        self.dtype = getattr(torch, self.DTYPES[precision]) if precision in self.DTYPES else None
        self._one_run_at_a_time = threading.Lock()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        ids = torch.from_numpy(input_ids.astype(np.int64)).to(self.device)
        mask = torch.from_numpy(attention_mask.astype(np.int64)).to(self.device)
        with self._one_run_at_a_time, torch.inference_mode(), \
                torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype is not None):
            outputs = self.module(ids, mask)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return {name: o.float().cpu().numpy() for name, o in zip(self.output_names, outputs, strict=True)}
