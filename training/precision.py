"""Numeric precision of training and evaluation (the classifiers and pretraining): ``fp32``, ``bf16`` (autocast) or ``auto``.

``auto`` is bf16 where the hardware has bf16 matrix units: a CUDA device that supports bf16, or a CPU
with AMX (``amx_bf16``, Intel Sapphire Rapids and later), where oneDNN runs bf16 matmuls on the tiles.
A CPU with only AVX512-BF16 dot products (AMD Zen 4) gets bf16 where the caller has measured that it
pays: the classifiers' training step (3-layer encoder, 16 x 256 windows, 2 threads, AMD EPYC: 20
windows/s in bf16 against 12 in fp32), not the small pretraining GPT (``benchmarks/pretrain.py``:
bf16/fp32 0.9 there). Under bf16 autocast the weights stay float32 and the losses accumulate in
float32.
"""

from __future__ import annotations

import contextlib

import torch

from tokfilter.errors import TokfilterError

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (what ``lscpu`` lists as ``amx_bf16``)."""
    return bool(torch.cpu.get_capabilities().get("amx_bf16", False))


def cpu_has_avx512_bf16() -> bool:
    """True when the CPU has AVX512-BF16 dot products (``avx512_bf16``; AMD Zen 4, Intel Cooper Lake on)."""
    return bool(torch.cpu.get_capabilities().get("avx512_bf16", False))


def resolve_precision(precision: str, device: str, bf16_on_avx512: bool = False) -> str:
    """``fp32`` or ``bf16`` for ``device``; ``auto`` picks bf16 on AMX CPUs and bf16-capable GPUs,
    and on AVX512-BF16 CPUs too when ``bf16_on_avx512`` (the caller measured that it pays)."""
    if precision not in PRECISIONS:
        raise TokfilterError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_amx() or (bf16_on_avx512 and cpu_has_avx512_bf16()) else "fp32"


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
