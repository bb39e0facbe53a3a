"""Numeric precision of training and evaluation (the classifiers and pretraining): ``fp32``, ``bf16`` (autocast) or ``auto``.

``auto`` is bf16 where the hardware has bf16 matrix units: a CUDA device that supports bf16, or a CPU
with AMX (``amx_bf16``, Intel Sapphire Rapids and later), where oneDNN runs bf16 matmuls on the tiles.
Elsewhere it is fp32: a CPU without AMX may still run bf16 (AVX512-BF16 dot products), but whether
that pays is measured (``benchmarks/pretrain.py``), not assumed. Under bf16 autocast the weights
stay float32 and the fused loss still accumulates its loss and weight gradient in float32.
"""

from __future__ import annotations

import contextlib

import torch

from tokfilter.errors import TokfilterError

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (what ``lscpu`` lists as ``amx_bf16``)."""
    return bool(torch.cpu.get_capabilities().get("amx_bf16", False))


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for ``device``; ``auto`` picks bf16 on AMX CPUs and bf16-capable GPUs."""
    if precision not in PRECISIONS:
        raise TokfilterError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_amx() else "fp32"


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
