"""Training-step throughput of the GPT with the fused masked loss against the same model with the
naive loss (full [tokens, vocab] logits, then weighted cross-entropy), and of the fused loss under
bf16 autocast against fp32, in one run.

    nice python benchmarks/pretrain.py [--sizes 1m 3m] [--vocab 8192] [--steps 12]

Steps of the variants are interleaved and the median is taken, because the machine is shared; the
ratios are the result, absolute tokens/s are indicative. 25% of targets are masked, as in a filtered
run. Goal: the fused loss does not slow training (fused/naive >= 0.9) on CPU. The bf16/fp32 ratio
is reported with the CPU's bf16 hardware (AMX tiles, AVX512-BF16): it decides whether ``precision:
auto`` should pick bf16 on such a CPU. Writes benchmarks/results/pretrain.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tokfilter.training.pretrain.model import GPT, config_for_size
from tokfilter.training.precision import autocast, cpu_has_amx, cpu_has_avx512_bf16, resolve_precision
from tokfilter.training.pretrain.train import make_optimizer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 0.9


def naive_loss(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    h = model.hidden_states(inputs)
    ce = F.cross_entropy(F.linear(h, model.embed.weight).flatten(0, 1), targets.flatten(), reduction="none")
    return (ce * weights.flatten()).sum() / weights.sum()


def fused_loss(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return model.loss(inputs, targets, weights)


def fused_loss_bf16(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    with autocast("bf16", "cpu"):
        return model.loss(inputs, targets, weights)


VARIANTS = (("fused", fused_loss), ("naive", naive_loss), ("fused_bf16", fused_loss_bf16))


def measure(size: str, vocab: int, seq_len: int, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = GPT(config_for_size(size, vocab, seq_len))
    optimizer = make_optimizer(model, 1e-3, 0.1)
    inputs = torch.randint(0, vocab, (batch, seq_len))
    targets = torch.randint(0, vocab, (batch, seq_len))
    weights = (torch.rand(batch, seq_len) >= 0.25).float()
    times: dict[str, list[float]] = {name: [] for name, _ in VARIANTS}
    for step in range(steps + 2):  # two warm-up rounds
        for name, loss_fn in VARIANTS:
            t0 = time.perf_counter()
            loss = loss_fn(model, inputs, targets, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 2:
                times[name].append(time.perf_counter() - t0)
    tokens = batch * seq_len
    fused_s, naive_s, bf16_s = (statistics.median(times[name]) for name, _ in VARIANTS)
    return {
        "size": size, "params": model.num_params(non_embedding=False), "vocab": vocab, "seq_len": seq_len, "batch": batch,
        "fused_tokens_per_s": tokens / fused_s, "naive_tokens_per_s": tokens / naive_s,
        "fused_unmasked_tokens_per_s": float(weights.sum()) / fused_s,
        "ratio_fused_over_naive": naive_s / fused_s,
        "fused_bf16_tokens_per_s": tokens / bf16_s, "ratio_bf16_over_fp32": fused_s / bf16_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "3m"])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        rows.append(measure(size, args.vocab, args.seq_len, args.batch, args.steps))
        print(json.dumps(rows[-1]))
    capabilities = torch.cpu.get_capabilities()
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, shared; torch threads {args.threads}; no GPU",
        "cpu": {"name": capabilities.get("cpu_name"), "amx_bf16": cpu_has_amx(),
                "avx512_bf16": cpu_has_avx512_bf16(), "auto_precision": resolve_precision("auto", "cpu")},
        "goal": f"fused/naive tokens/s >= {GOAL_RATIO}", "rows": rows,
        "goal_met": all(r["ratio_fused_over_naive"] >= GOAL_RATIO for r in rows),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "pretrain.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Pretraining step throughput: fused masked loss vs naive loss",
        "",
        f"{result['machine']}. Median of {args.steps} interleaved steps (forward, backward, AdamW), 25% of targets "
        f"masked. Goal: {result['goal']}: {'met' if result['goal_met'] else 'NOT met'}.",
        "",
        f"CPU {result['cpu']['name']}: AMX bf16 {'yes' if result['cpu']['amx_bf16'] else 'no'}, AVX512-BF16 "
        f"{'yes' if result['cpu']['avx512_bf16'] else 'no'}; `precision: auto` resolves to {result['cpu']['auto_precision']} "
        "here. bf16 = the fused loss under bf16 autocast (weights float32; the loss and its weight gradient accumulate in "
        "float32).",
        "",
        "| size | params | vocab | fused tok/s | naive tok/s | fused unmasked tok/s | fused/naive | fused bf16 tok/s | bf16/fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['size']} | {r['params']:,} | {r['vocab']} | {r['fused_tokens_per_s']:,.0f} | {r['naive_tokens_per_s']:,.0f} | "
        f"{r['fused_unmasked_tokens_per_s']:,.0f} | {r['ratio_fused_over_naive']:.2f} | {r['fused_bf16_tokens_per_s']:,.0f} | "
        f"{r['ratio_bf16_over_fp32']:.2f} |"
        for r in rows
    ]
    (RESULTS_DIR / "pretrain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
