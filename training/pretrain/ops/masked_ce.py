"""Fused linear + masked cross-entropy: the loss of hidden states against a vocabulary, per-token
weighted, without ever materializing the [N, V] logits.

Masked pretraining drops (weight 0) or down-weights tokens; the loss is
``sum_i w_i * (CE(h_i W^T + b, y_i) + z_loss * lse_i^2) / sum_i w_i``.

How: rows with zero weight or ``ignore_index`` targets are compacted away first (they cost
nothing); the kept rows are processed in chunks whose logits fit a memory budget; for each chunk a
row kernel turns the logits, in place, into the weighted softmax gradient, and the gradients of the
hidden states, weight and bias are matmuls on that chunk. For "mean" and "sum" the gradients are
computed during the forward (the backward only scales them by the incoming scalar); for "none" the
forward keeps nothing but the inputs and the backward recomputes the chunks with the per-row
incoming gradient.

Row kernels: the PyTorch one below (the default on CPU, the reference path on any device) and the
Triton one in ``masked_ce_triton`` (chosen for CUDA tensors when ``triton`` imports).

Conventions, chosen explicitly:
- an all-masked batch (every weight 0 or every target ignored) gives a loss of 0 and zero
  gradients for every reduction, never NaN;
- the loss is returned in float32 (float64 for float64 inputs); grad_weight and grad_bias are
  accumulated in float32 across chunks and cast to the parameter dtype at the end;
- ``loss_weights`` are constants: no gradient flows into them.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]
Backend = Literal["auto", "torch", "triton"]
RowKernel = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]

REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "torch", "triton")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# Bytes of logits (plus their float32 working copy) one chunk may hold. On CPU 64 MiB (512 rows at
# V=32k) was the fastest of 16/64/128 MiB and keeps the peak far below the full logits; on CUDA a
# large chunk keeps the matmuls big enough to saturate the tensor cores.
DEFAULT_CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 2**30}
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def masked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    z_loss: float = 0.0,
    *,
    chunk_bytes: int | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Weighted cross-entropy of ``hidden [N, H] @ weight[V, H]^T (+ bias [V])`` against
    ``targets [N]``, never allocating the [N, V] logits.

    ``loss_weights [N]`` (bool mask or non-negative floats, None = all ones) weight each token;
    targets equal to ``ignore_index`` get weight 0. ``reduction``: "mean" = sum(w * loss) / sum(w),
    "sum" = sum(w * loss), "none" = the [N] vector w * loss (0 on masked rows). ``z_loss`` adds
    ``z_loss * logsumexp^2`` per token. ``chunk_bytes`` is the memory budget of one chunk of
    logits (default by device). ``backend``: "torch" (chunked PyTorch), "triton" (CUDA only) or
    "auto" (Triton on CUDA when it imports, else PyTorch). Returns float32 (float64 for float64 inputs).
    """
    _validate(hidden, weight, targets, loss_weights, bias, reduction, ignore_index, z_loss)
    if chunk_bytes is not None and (not isinstance(chunk_bytes, int) or chunk_bytes <= 0):
        raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    row_kernel = _select_row_kernel(backend, hidden)
    effective = _effective_weights(targets, loss_weights, ignore_index, hidden)
    budget = chunk_bytes or DEFAULT_CHUNK_BYTES.get(hidden.device.type, DEFAULT_CHUNK_BYTES["cpu"])
    chunk_rows = _chunk_rows(budget, weight.shape[0], hidden.dtype)
    return _MaskedLinearCrossEntropy.apply(
        hidden, weight, bias, targets.long(), effective, reduction, float(z_loss), chunk_rows, row_kernel
    )


def masked_linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """The naive loss with full [N, V] logits (``F.cross_entropy(F.linear(h, W), y) * w``): the
    ground truth of the tests (run it in float64) and the baseline of the benchmark."""
    _validate(hidden, weight, targets, loss_weights, bias, reduction, ignore_index, z_loss)
    logits = F.linear(hidden, weight, bias)
    per_token = F.cross_entropy(logits, targets.long(), reduction="none", ignore_index=ignore_index)
    if z_loss:
        per_token = per_token + z_loss * torch.logsumexp(logits, dim=-1).square()
    effective = _effective_weights(targets, loss_weights, ignore_index, hidden)
    weighted = per_token.to(effective.dtype) * effective
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    weight_sum = effective.sum()
    return total / torch.where(weight_sum > 0, weight_sum, torch.ones_like(weight_sum))


def _validate(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_weights: torch.Tensor | None,
    bias: torch.Tensor | None,
    reduction: str,
    ignore_index: int,
    z_loss: float,
) -> None:
    """Reject bad input with a message that names the argument and the limit."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise ValueError(f"hidden dtype must be one of {FLOAT_DTYPES}, got {hidden.dtype}")
    n, h = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != h or weight.shape[0] == 0:
        raise ValueError(f"weight must be [V >= 1, H={h}], got shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(
            f"weight must match hidden's dtype and device ({hidden.dtype}, {hidden.device}), "
            f"got ({weight.dtype}, {weight.device})"
        )
    vocab = weight.shape[0]
    if bias is not None and (
        bias.shape != (vocab,) or bias.dtype != hidden.dtype or bias.device != hidden.device
    ):
        raise ValueError(
            f"bias must be [V={vocab}] of {hidden.dtype} on {hidden.device}, "
            f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}"
        )
    if targets.shape != (n,) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"targets must be [N={n}] of int64 or int32, got {tuple(targets.shape)} {targets.dtype}"
        )
    if targets.device != hidden.device:
        raise ValueError(f"targets must be on {hidden.device}, got {targets.device}")
    out_of_range = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(out_of_range.any()):
        bad = int(targets[out_of_range][0])
        raise ValueError(f"targets must be in [0, V={vocab}) or ignore_index={ignore_index}, got {bad}")
    if loss_weights is not None:
        if loss_weights.shape != (n,):
            raise ValueError(f"loss_weights must be [N={n}], got shape {tuple(loss_weights.shape)}")
        if loss_weights.device != hidden.device:
            raise ValueError(f"loss_weights must be on {hidden.device}, got {loss_weights.device}")
        if loss_weights.dtype != torch.bool:
            if not loss_weights.is_floating_point():
                raise ValueError(f"loss_weights must be bool or floating, got {loss_weights.dtype}")
            if not bool(((loss_weights >= 0) & torch.isfinite(loss_weights)).all()):
                raise ValueError("loss_weights must be finite and >= 0")
    if not (isinstance(z_loss, (int, float)) and 0.0 <= z_loss < float("inf")):
        raise ValueError(f"z_loss must be a finite float >= 0, got {z_loss!r}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, else float32: the dtype of the loss and of the accumulators."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _effective_weights(
    targets: torch.Tensor, loss_weights: torch.Tensor | None, ignore_index: int, hidden: torch.Tensor
) -> torch.Tensor:
    """Per-token weights in the accumulation dtype, with ignored targets set to 0."""
    dtype = accumulation_dtype(hidden.dtype)
    if loss_weights is None:
        effective = torch.ones(hidden.shape[0], dtype=dtype, device=hidden.device)
    else:
        effective = loss_weights.detach().to(dtype)
    return torch.where(targets == ignore_index, torch.zeros_like(effective), effective)


def _chunk_rows(budget_bytes: int, vocab: int, dtype: torch.dtype) -> int:
    """Rows per chunk so that a chunk of logits (and its float32 working copy) fits the budget."""
    working = accumulation_dtype(dtype).itemsize
    per_row = vocab * (working if dtype.itemsize == working else dtype.itemsize + working)
    return max(1, budget_bytes // per_row)


def _select_row_kernel(backend: str, hidden: torch.Tensor) -> RowKernel:
    """Triton only where it can run (CUDA, triton imports, not float64); "auto" never fails."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and (not hidden.is_cuda or hidden.dtype not in TRITON_DTYPES):
        raise ValueError(
            f"backend='triton' needs CUDA tensors of {TRITON_DTYPES}, got {hidden.dtype} on {hidden.device}"
        )
    if backend == "torch" or not hidden.is_cuda or hidden.dtype not in TRITON_DTYPES:
        return softmax_grad_rows_torch
    try:
        from tokfilter.training.pretrain.ops.masked_ce_triton import softmax_grad_rows_triton
    except ImportError:
        if backend == "triton":
            raise ValueError("backend='triton' needs the triton package, which does not import") from None
        return softmax_grad_rows_torch
    return softmax_grad_rows_triton


def softmax_grad_rows_torch(
    logits: torch.Tensor, targets: torch.Tensor, coef: torch.Tensor | None, z_loss: float
) -> torch.Tensor:
    """Per-row loss ``lse - logit[y] + z_loss * lse^2`` (accumulation dtype) of a [n, V] chunk of
    logits; when ``coef [n]`` is given, overwrite the logits in place with ``coef * d loss / d logits``.

    Whole-chunk passes on purpose: L2-sized row blocks were faster in isolation but made the op about
    1.8x slower in the benchmark on a shared machine (many more small parallel regions)."""
    work = logits.to(accumulation_dtype(logits.dtype))  # no copy for float32/64: passes are in place
    row_max = work.amax(dim=1, keepdim=True)
    target_logit = work.gather(1, targets[:, None])
    work.sub_(row_max).exp_()
    denom = work.sum(dim=1, keepdim=True)
    lse = row_max + denom.log()
    loss = lse - target_logit
    if z_loss:
        loss = loss + z_loss * lse.square()
    if coef is not None:
        scale = coef[:, None] / denom
        if z_loss:
            scale = scale * (1.0 + 2.0 * z_loss * lse)
        work.mul_(scale).scatter_add_(1, targets[:, None], -coef[:, None])
        if work.data_ptr() != logits.data_ptr():
            logits.copy_(work)
    return loss.squeeze(1)


def _addmm_accumulate_(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``accumulator += left @ right`` in the accumulator's (float32/64) dtype whatever the operands'."""
    if left.dtype == accumulator.dtype:
        accumulator.addmm_(left, right)
    elif left.is_cuda:
        torch.addmm(accumulator, left, right, out_dtype=accumulator.dtype, out=accumulator)
    else:
        accumulator.addmm_(left.to(accumulator.dtype), right.to(accumulator.dtype))


def _chunked_pass(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    coef: torch.Tensor | None,
    z_loss: float,
    chunk_rows: int,
    row_kernel: RowKernel,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Loss per (kept) row and, when ``coef`` is given, the gradients named by ``needs``
    (hidden, weight, bias) of ``sum_i coef_i * loss_i``, one chunk of logits at a time."""
    n, vocab = hidden.shape[0], weight.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    want_hidden, want_weight, want_bias = needs if coef is not None else (False, False, False)
    logits_buffer = hidden.new_empty((min(chunk_rows, n), vocab))
    row_loss = torch.empty(n, dtype=acc, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_weight else None
    grad_bias = torch.zeros(vocab, dtype=acc, device=weight.device) if want_bias else None
    for start in range(0, n, chunk_rows):
        end = min(start + chunk_rows, n)
        rows = hidden[start:end]
        logits = logits_buffer[: end - start]
        if bias is None:
            torch.mm(rows, weight.t(), out=logits)
        else:
            torch.addmm(bias, rows, weight.t(), out=logits)
        chunk_coef = None if coef is None else coef[start:end]
        row_loss[start:end] = row_kernel(logits, targets[start:end], chunk_coef, z_loss)
        if grad_hidden is not None:
            torch.mm(logits, weight, out=grad_hidden[start:end])
        if grad_weight is not None:
            _addmm_accumulate_(grad_weight, logits.t(), rows)
        if grad_bias is not None:
            grad_bias.add_(logits.sum(dim=0, dtype=acc))
    return row_loss, grad_hidden, grad_weight, grad_bias


def _scatter_rows(values: torch.Tensor | None, kept: torch.Tensor, n: int) -> torch.Tensor | None:
    """Put the compacted rows back at their positions among ``n`` (zeros elsewhere)."""
    if values is None or values.shape[0] == n:
        return values
    full = values.new_zeros((n, *values.shape[1:]))
    return full.index_copy_(0, kept, values)


class _MaskedLinearCrossEntropy(torch.autograd.Function):
    """Chunked forward/backward over the kept rows; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, effective, reduction, z_loss, chunk_rows, row_kernel):
        n = hidden.shape[0]
        kept = effective.nonzero().squeeze(1)
        compact = kept.shape[0] != n
        kept_hidden = hidden.index_select(0, kept) if compact else hidden
        kept_targets = targets.index_select(0, kept) if compact else targets
        kept_weights = effective.index_select(0, kept) if compact else effective
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        ctx.reduction, ctx.n = reduction, n
        ctx.param_meta = [None if p is None else (p.shape, p.dtype, p.device) for p in (hidden, weight, bias)]
        ctx.pass_args = (z_loss, chunk_rows, row_kernel, needs)
        if kept.shape[0] == 0:
            ctx.save_for_backward()
            shape = (n,) if reduction == "none" else ()
            return torch.zeros(shape, dtype=effective.dtype, device=hidden.device)
        if reduction == "none":
            row_loss, *_ = _chunked_pass(
                kept_hidden, weight, bias, kept_targets, None, z_loss, chunk_rows, row_kernel, needs
            )
            ctx.save_for_backward(kept_hidden, weight, bias, kept_targets, kept_weights, kept)
            return _scatter_rows(row_loss * kept_weights, kept, n)
        coef = kept_weights / kept_weights.sum() if reduction == "mean" else kept_weights
        row_loss, grad_hidden, grad_weight, grad_bias = _chunked_pass(
            kept_hidden, weight, bias, kept_targets, coef if any(needs) else None, z_loss, chunk_rows,
            row_kernel, needs,
        )
        ctx.save_for_backward(_scatter_rows(grad_hidden, kept, n), grad_weight, grad_bias)
        return (row_loss * coef).sum()

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.reduction == "none" and ctx.saved_tensors:
            kept_hidden, weight, bias, kept_targets, kept_weights, kept = ctx.saved_tensors
            z_loss, chunk_rows, row_kernel, needs = ctx.pass_args
            coef = kept_weights * grad_output.index_select(0, kept).to(kept_weights.dtype)
            _, grad_hidden, grad_weight, grad_bias = _chunked_pass(
                kept_hidden, weight, bias, kept_targets, coef, z_loss, chunk_rows, row_kernel, needs
            )
            grads = (_scatter_rows(grad_hidden, kept, ctx.n), grad_weight, grad_bias)
        elif ctx.saved_tensors:
            scale_by_one = bool(grad_output == 1)
            grads = tuple(
                g if g is None or scale_by_one else g * grad_output.to(g.dtype) for g in ctx.saved_tensors
            )
        else:  # all-masked batch: zero gradients
            grads = (None, None, None)
        out = []
        for need, grad, meta in zip(ctx.needs_input_grad[:3], grads, ctx.param_meta):
            if not need:
                out.append(None)
            elif grad is None:
                out.append(torch.zeros(meta[0], dtype=meta[1], device=meta[2]))
            else:
                out.append(grad.to(meta[1]))
        return (*out, None, None, None, None, None, None)
