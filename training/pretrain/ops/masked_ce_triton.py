"""Triton (CUDA) row kernel of the masked linear cross-entropy.

The matmuls stay in cuBLAS (chunk logits, grad_hidden, grad_weight: see ``masked_ce``); this kernel
fuses everything between them for one chunk of kept rows, one program per row, in the design of
Liger-Kernel's cross-entropy kernel: a first pass over the vocabulary in blocks keeps an online
max and sum of exponentials (the log-sum-exp) and reads the target logit; a second pass overwrites
the logits in place with ``coef * (softmax * (1 + 2 z_loss lse) - onehot(target))`` in the logits'
dtype, ready for the grad matmuls. Masked and ignored rows never reach it: they are compacted away
before the chunk matmul. Arithmetic is in float32 whatever the logits' dtype.

Importing this module needs the ``triton`` package (absent on CPU-only machines); ``masked_ce``
imports it lazily and falls back to the PyTorch row kernel when the import fails.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Hopper: a row of 128k bf16 logits is 256 KB; blocks of 4k-32k columns with 8-32 warps keep 16-32
# elements per thread in flight, enough to saturate HBM3 on the two streaming passes.
_HOPPER_CONFIGS = [
    triton.Config({"BLOCK_V": block_v}, num_warps=warps)
    for block_v, warps in ((4096, 8), (8192, 16), (16384, 16), (16384, 32), (32768, 32))
]


@triton.autotune(configs=_HOPPER_CONFIGS, key=["vocab", "HAS_GRAD"], restore_value=["logits_ptr"])
@triton.jit
def _softmax_grad_rows_kernel(
    logits_ptr,
    row_stride,
    targets_ptr,
    coef_ptr,
    loss_ptr,
    vocab,
    z_loss,
    HAS_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    columns = tl.arange(0, BLOCK_V)

    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, vocab, BLOCK_V):
        cols = start + columns
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    target_logit = tl.load(row_ptr + target).to(tl.float32)
    tl.store(loss_ptr + row, lse - target_logit + z_loss * lse * lse)

    if HAS_GRAD:
        coef = tl.load(coef_ptr + row).to(tl.float32)
        scale = coef * (1.0 + 2.0 * z_loss * lse)
        for start in range(0, vocab, BLOCK_V):
            cols = start + columns
            x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
            grad = tl.exp(x - lse) * scale
            grad = tl.where(cols == target, grad - coef, grad)
            tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < vocab)


def softmax_grad_rows_triton(
    logits: torch.Tensor, targets: torch.Tensor, coef: torch.Tensor | None, z_loss: float
) -> torch.Tensor:
    """Same contract as ``masked_ce.softmax_grad_rows_torch``: float32 loss per row of a [n, V]
    CUDA chunk of logits (float32/bfloat16/float16); with ``coef``, the logits become the
    weighted gradient in place."""
    n, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must have contiguous rows")
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return loss
    coef_arg = loss if coef is None else coef.to(torch.float32).contiguous()
    _softmax_grad_rows_kernel[(n,)](
        logits, logits.stride(0), targets.contiguous(), coef_arg, loss, vocab, float(z_loss),
        HAS_GRAD=coef is not None,
    )
    return loss
