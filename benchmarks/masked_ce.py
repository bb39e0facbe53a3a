"""Benchmark of the fused masked linear cross-entropy against the naive full-logits loss.

Goals (issue 5), judged as ratios against the naive loss measured in the same run:
- CPU, N=8192, H=512, V=32768 float32: peak memory <= 1/8 of naive, time <= 1.1x naive;
- CUDA, N=32768, H=4096, V=128256 bfloat16: forward+backward >= 60% of a bf16 matmul peak measured
  in the same run, faster than Liger-Kernel at equal or lower memory. The op accumulates grad_weight
  in float32 (issue 5), so the like-for-like Liger is ``accum_dtype=torch.float32`` (liger_fp32);
  default Liger (bf16 accumulation) is reported beside it. No fp32-accumulating op can match the
  default's memory at this shape: its whole peak is below the fp32 accumulator alone (V * H * 4 bytes).

How it is measured:
- CPU: every (variant, repeat) runs in a fresh subprocess, so no run inherits another's allocator
  state. Peak memory is the rise of the process's peak resident set (VmHWM, reset by writing 5 to
  /proc/self/clear_refs once the inputs exist and a small warm-up has run) over its resident set at
  that moment: it counts whatever the loss, its backward and the gradients touch, through any
  allocator (tracemalloc would not see torch). Time is the wall clock of one forward+backward (the
  goal); the process's CPU time is recorded beside it, as it suffers less from a shared machine.
- CUDA: in-process; peak = torch.cuda.max_memory_allocated over what the inputs hold, time = median
  of CUDA-event timings after warm-up (which also runs the Triton autotuner).
- TFLOP/s counts the useful 6 * N_kept * H * V FLOPs (forward 2, backward 4) for every variant.
Variants: naive (``masked_linear_cross_entropy_reference`` = ``F.cross_entropy(F.linear(h, W), y,
reduction="none") * w`` then the weighted mean), chunked (the PyTorch row kernel), and on CUDA
triton, liger, liger_fp32 and cce (Liger-Kernel with bf16 and with float32 grad_weight
accumulation, Cut Cross-Entropy; when installed; the mask becomes ignore_index for them). Scenarios: no masked token, and a quarter masked at random.

    python benchmarks/masked_ce.py                  # CUDA when available, else CPU
    python benchmarks/masked_ce.py --device cpu --repeats 3

Results are merged per device into benchmarks/results/masked_ce.json and rewritten as
benchmarks/results/masked_ce.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tokfilter.training.pretrain.ops.masked_ce import masked_linear_cross_entropy, masked_linear_cross_entropy_reference

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHAPES = {"cpu": (8192, 512, 32768, "float32"), "cuda": (32768, 4096, 128256, "bfloat16")}
MASKED_FRACTIONS = (0.0, 0.25)
GOALS = {
    "cpu": {"max_memory_ratio": 1 / 8, "max_time_ratio": 1.1},
    "cuda": {"min_fraction_of_matmul_peak": 0.6, "faster_than": "liger_fp32"},
}
NO_GPU_NOTE = ("not run: no CUDA device was available to this session; the Triton kernel's arithmetic is checked "
               "in make test under Triton's CPU interpreter, its speed on hardware is not measured yet")


def make_inputs(n: int, hidden_size: int, vocab: int, dtype: torch.dtype, masked_fraction: float, device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, hidden_size, device=device, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, device=device, generator=gen) / hidden_size**0.5).to(dtype)
    targets = torch.randint(0, vocab, (n,), device=device, generator=gen)
    mask = torch.rand(n, device=device, generator=gen) >= masked_fraction
    return hidden, weight.requires_grad_(), targets, mask


def useful_flops(kept_tokens: int, hidden_size: int, vocab: int) -> int:
    """Forward (2) + backward (4) matmul FLOPs of the kept tokens: the same yardstick for every variant."""
    return 6 * kept_tokens * hidden_size * vocab


def loss_function(variant: str):
    """``fn(hidden, weight, targets, mask) -> mean loss`` of one variant; ImportError if absent."""
    if variant == "naive":
        return lambda h, w, y, m: masked_linear_cross_entropy_reference(h, w, y, m)
    if variant in ("chunked", "triton"):
        backend = "torch" if variant == "chunked" else "triton"
        return lambda h, w, y, m: masked_linear_cross_entropy(h, w, y, m, backend=backend)
    if variant in ("liger", "liger_fp32"):
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        accum_dtype = torch.float32 if variant == "liger_fp32" else None

        def liger(h, w, y, m):
            out = liger_fused_linear_cross_entropy(h, w, y.masked_fill(~m, -100), ignore_index=-100,
                                                   accum_dtype=accum_dtype)
            return out[0] if isinstance(out, tuple) else out

        return liger
    if variant == "cce":
        from cut_cross_entropy import linear_cross_entropy

        return lambda h, w, y, m: linear_cross_entropy(h, w, y.masked_fill(~m, -100), ignore_index=-100)
    raise ValueError(f"unknown variant {variant!r}")


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_worker(variant: str, n: int, hidden_size: int, vocab: int, masked_fraction: float) -> dict:
    """One measured forward+backward in this (fresh) process: wall time and peak RSS rise."""
    fn = loss_function(variant)
    warm = make_inputs(256, hidden_size, vocab, torch.float32, masked_fraction, "cpu")
    fn(*warm).backward()
    del warm
    hidden, weight, targets, mask = make_inputs(n, hidden_size, vocab, torch.float32, masked_fraction, "cpu")
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _proc_status_kib("VmRSS")
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = fn(hidden, weight, targets, mask)
    loss.backward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = _proc_status_kib("VmHWM") - baseline
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak / 1024, "loss": loss.item(),
            "kept": int(mask.sum())}


def run_cpu(args: argparse.Namespace) -> dict:
    n, hidden_size, vocab, dtype = args.n or SHAPES["cpu"][0], args.hidden, args.vocab, "float32"
    load_before = os.getloadavg()
    runs: dict[tuple[str, float], list[dict]] = {}
    total = args.repeats * len(MASKED_FRACTIONS) * 2
    started = time.perf_counter()
    done = 0
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all variants alike
        for fraction in MASKED_FRACTIONS:
            for variant in ("naive", "chunked"):
                command = [sys.executable, __file__, "--worker", variant, "--n", str(n), "--hidden",
                           str(hidden_size), "--vocab", str(vocab), "--masked-fraction", str(fraction)]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                runs.setdefault((variant, fraction), []).append(result)
                done += 1
                elapsed = time.perf_counter() - started
                print(f"[{done}/{total}] {variant:8s} masked={fraction:.2f} {result['seconds']:.2f} s "
                      f"{n / result['seconds']:,.0f} tokens/s peak +{result['peak_mib']:.0f} MiB "
                      f"ETA {elapsed / done * (total - done):.0f} s", flush=True)
    rows, ratios = [], []
    for (variant, fraction), results in runs.items():
        median_s = statistics.median(r["seconds"] for r in results)
        rows.append({
            "variant": variant, "masked_fraction": fraction, "median_s": median_s,
            "tflops": useful_flops(results[0]["kept"], hidden_size, vocab) / median_s / 1e12,
            "times_s": [r["seconds"] for r in results],
            "median_cpu_s": statistics.median(r["cpu_seconds"] for r in results),
            "peak_mib": max(r["peak_mib"] for r in results),
            "loss": results[0]["loss"],
        })
    by_key = {(r["variant"], r["masked_fraction"]): r for r in rows}
    for fraction in MASKED_FRACTIONS:
        naive, chunked = by_key[("naive", fraction)], by_key[("chunked", fraction)]
        ratios.append({
            "masked_fraction": fraction,
            "time_ratio": chunked["median_s"] / naive["median_s"],
            "cpu_time_ratio": chunked["median_cpu_s"] / naive["median_cpu_s"],
            "memory_ratio": chunked["peak_mib"] / naive["peak_mib"],
            "loss_abs_diff": abs(chunked["loss"] - naive["loss"]),
        })
    goal = GOALS["cpu"]
    met = all(r["time_ratio"] <= goal["max_time_ratio"] and r["memory_ratio"] <= goal["max_memory_ratio"]
              for r in ratios)
    return {
        "shape": {"N": n, "H": hidden_size, "V": vocab, "dtype": dtype}, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "memory": "peak RSS rise per fresh subprocess (VmHWM after clear_refs)",
        "time": "median wall clock of one forward+backward", "runs": rows, "ratios": ratios,
        "goals": goal, "goals_met": met,
    }


def _cuda_time(fn, inputs, repeats: int) -> tuple[float, float]:
    """Median seconds of forward+backward and peak memory (MiB) above the inputs."""
    hidden, weight = inputs[0], inputs[1]
    for _ in range(2):
        fn(*inputs).backward()
    hidden.grad = weight.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*inputs).backward()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - baseline) / 2**20


def matmul_peak_tflops(size: int = 8192, iterations: int = 20) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * iterations / (time.perf_counter() - start) / 1e12


def run_cuda(args: argparse.Namespace) -> dict:
    n, hidden_size, vocab, dtype = args.n or SHAPES["cuda"][0], args.hidden, args.vocab, "bfloat16"
    peak = matmul_peak_tflops()
    print(f"bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    rows = []
    for fraction in MASKED_FRACTIONS:
        for variant in ("naive", "chunked", "triton", "liger", "liger_fp32", "cce"):
            row = {"variant": variant, "masked_fraction": fraction}
            try:
                fn = loss_function(variant)
                inputs = make_inputs(n, hidden_size, vocab, torch.bfloat16, fraction, "cuda")
                seconds, peak_mib = _cuda_time(fn, inputs, args.repeats)
                tflops = useful_flops(int(inputs[3].sum()), hidden_size, vocab) / seconds / 1e12
                row.update(median_s=seconds, peak_mib=peak_mib, tflops=tflops, fraction_of_peak=tflops / peak)
                print(f"{variant:8s} masked={fraction:.2f} {seconds * 1e3:.1f} ms {peak_mib:.0f} MiB "
                      f"{tflops:.0f} TFLOP/s ({tflops / peak:.0%} of peak)", flush=True)
            except (ImportError, torch.OutOfMemoryError, RuntimeError, ValueError) as error:
                row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
                print(f"{variant:8s} masked={fraction:.2f} skipped: {row['error']}", flush=True)
            finally:
                inputs = None
                gc.collect()
                torch.cuda.empty_cache()
            rows.append(row)
    return {
        "shape": {"N": n, "H": hidden_size, "V": vocab, "dtype": dtype}, "device": torch.cuda.get_device_name(),
        "matmul_peak_tflops": peak, "repeats": args.repeats, "runs": rows, "goals": GOALS["cuda"],
        "memory": "torch.cuda.max_memory_allocated above the inputs", "time": "median of CUDA-event timings",
    }


def cuda_goal_lines(section: dict) -> list[str]:
    """The CUDA goals per scenario, read off the runs: the Triton kernel's share of the measured
    matmul peak, its time and memory against the like-for-like Liger (float32 grad_weight
    accumulation, ``goals["faster_than"]``), and the same figures against default Liger."""
    goal = section["goals"]["min_fraction_of_matmul_peak"]
    judged_against = section["goals"]["faster_than"]
    lines = []
    for masked in sorted({r["masked_fraction"] for r in section["runs"]}):
        by_variant = {r["variant"]: r for r in section["runs"] if r["masked_fraction"] == masked and "median_s" in r}
        if "triton" not in by_variant:
            continue
        ours = by_variant["triton"]
        line = (f"- masked {masked:.2f}: triton at {ours['fraction_of_peak']:.0%} of the matmul peak "
                f"(goal >= {goal:.0%}: {'met' if ours['fraction_of_peak'] >= goal else 'NOT met'})")
        for name in dict.fromkeys((judged_against, "liger_fp32", "liger")):
            if name not in by_variant:
                continue
            other = by_variant[name]
            speed, memory = other["median_s"] / ours["median_s"], ours["peak_mib"] / other["peak_mib"]
            line += f"; {speed:.2f}x {name}'s speed at {memory:.2f}x its memory"
            if name == judged_against:
                met = speed > 1 and memory <= 1
                line += f" (goal: faster at equal or lower memory: {'met' if met else 'NOT met'})"
        lines.append(line)
    return lines


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Fused masked linear cross-entropy vs naive", "",
             "Written by `benchmarks/masked_ce.py`; ratios are against the naive loss of the same run.", ""]
    for device in ("cpu", "cuda"):
        section = results.get(device, {"status": "not run yet"})
        lines.append(f"## {device.upper()}")
        lines.append("")
        if "runs" not in section:
            lines += [section["status"], ""]
            continue
        shape = section["shape"]
        lines.append(f"Shape N={shape['N']} H={shape['H']} V={shape['V']} {shape['dtype']}; "
                     f"{section['memory']}; {section['time']}; measured {section['measured_at']} on "
                     f"{section['machine']}.")
        if "load_average_1min_before_after" in section:
            load = section["load_average_1min_before_after"]
            busy = max(load) > (os.cpu_count() or 1)
            lines.append(f"The machine is shared: 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after the "
                         f"run{', so absolute times are inflated' if busy else ''}; variants were interleaved.")
        lines.append("")
        lines.append("| variant | masked | time (s) | peak (MiB) | TFLOP/s | note |")
        lines.append("|---|---|---|---|---|---|")
        for row in section["runs"]:
            tflops = f"{row['tflops']:.3g}" if "tflops" in row else ""
            if "fraction_of_peak" in row:
                tflops += f" ({row['fraction_of_peak']:.0%} of peak)"
            time_s = f"{row['median_s']:.3f}" if "median_s" in row else ""
            peak = f"{row['peak_mib']:.0f}" if "peak_mib" in row else ""
            lines.append(f"| {row['variant']} | {row['masked_fraction']:.2f} | {time_s} | {peak} | {tflops} | "
                         f"{row.get('error', '')} |")
        lines.append("")
        for ratio in section.get("ratios", []):
            cpu = f" (CPU time {ratio['cpu_time_ratio']:.2f}x)" if "cpu_time_ratio" in ratio else ""
            lines.append(f"- masked {ratio['masked_fraction']:.2f}: time {ratio['time_ratio']:.2f}x naive{cpu}, "
                         f"peak memory {ratio['memory_ratio']:.3f}x naive (1/{1 / ratio['memory_ratio']:.0f}), "
                         f"|loss - naive| = {ratio['loss_abs_diff']:.1e}")
        if "goals_met" in section:
            lines.append(f"- goals {section['goals']}: {'met' if section['goals_met'] else 'NOT met'}")
        if device == "cuda":
            lines += cuda_goal_lines(section)
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="tokens (default: the device's shape)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--masked-fraction", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    args.hidden = args.hidden or SHAPES[device][1]
    args.vocab = args.vocab or SHAPES[device][2]
    if args.worker:
        print(json.dumps(cpu_worker(args.worker, args.n, args.hidden, args.vocab, args.masked_fraction)))
        return 0
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / "masked_ce.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    section = run_cuda(args) if device == "cuda" else run_cpu(args)
    section["measured_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    section["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    results[device] = section
    if "runs" not in results.get("cuda", {}):  # no CUDA measurement yet: say so in today's words
        results["cuda"] = {"status": NO_GPU_NOTE}
    json_path.write_text(json.dumps(results, indent=2))
    write_markdown(results, RESULTS_DIR / "masked_ce.md")
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
