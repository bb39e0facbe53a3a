"""Tokens/s of `tokfilter export` (goal: >= 20M tokens/s for olmo-core and megatron on 2 cores),
against two baselines measured in the same run: a plain numpy copy of the bytes export reads (the
shards' ids and probabilities, the floor any exporter pays), and MaskedShards iteration (what a
trainer reads today).

    nice python benchmarks/export.py [--tokens 64000000] [--repeats 3]

Synthetic shards (uint16 ids, a vocabulary of 32k, documents of 1-2000 tokens, about 10% of the
tokens flagged, 1M-token shards) are written to a temporary directory first. Tokens/s counts the
shards' tokens read (in `document` mode more than are written). Writes benchmarks/results/export.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from interleaved import best_of_interleaved

from tokfilter.clients import MaskedShards
from tokfilter.clients.export import FORMATS, export_shards
from tokfilter.clients.shards.writer import ShardWriter, read_manifest

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_TOKENS_PER_S = 20e6
GOAL_FORMATS = ("olmo-core", "megatron")
EOT, HIDDEN, VOCAB = 0, 1, 32768


def write_synthetic_shards(out: Path, tokens: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    manifest = {"format": "tokfilter-shards", "version": 1, "dtype": "uint16", "eot_id": EOT, "hidden_id": HIDDEN,
                "threshold": 0.5, "inputs": [{"path": "synthetic", "records_read": 0}],
                "target_tokenizer": {"vocab_size": VOCAB}}
    writer = ShardWriter(out, manifest, shard_tokens=1 << 20)
    written = i = 0
    while written < tokens:
        n = int(rng.integers(1, 2000))
        ids = rng.integers(2, VOCAB, n, dtype=np.uint16)
        probs = np.where(rng.random(n) < 0.1, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n)).astype(np.float16)
        writer.add(str(i), ids, probs, float(rng.random()))
        writer.advance(0, i + 1)
        writer.flush_if_full()
        written += n + 1
        i += 1
    writer.close()
    return read_manifest(out)


def numpy_copy(shard_dir: Path, out: Path) -> None:
    """The baseline: read every shard's ids and probabilities and write them out again."""
    out.mkdir()
    for entry in read_manifest(shard_dir)["shards"]:
        for suffix in (".ids.npy", ".probs.npy"):
            array = np.load(shard_dir / f"{entry['name']}{suffix}", mmap_mode="r")
            with open(out / f"{entry['name']}{suffix}", "wb") as f:
                f.write(memoryview(np.ascontiguousarray(array)))


def masked_shards_tokens(shard_dir: Path, samples: int, seq_len: int = 2048) -> int:
    ds = MaskedShards(shard_dir, seq_len=seq_len, mode="mask", threshold=None)
    for k in range(min(samples, ds.num_samples)):
        ds.sample(k)
    return min(samples, ds.num_samples) * seq_len


def run(tokens: int, repeats: int, masked_shards_samples: int) -> dict:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        manifest = write_synthetic_shards(tmp / "shards", tokens)
        print(f"synthetic shards: {manifest['counts']['tokens']:,} tokens in {len(manifest['shards'])} shards, "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        stream_tokens = sum(s["tokens"] for s in manifest["shards"])

        out = tmp / "out"  # each variant's output, removed (untimed) before the next call
        variants = {"numpy copy (baseline)": lambda: numpy_copy(tmp / "shards", out)}
        cases = [(fmt, "mask") for fmt in FORMATS] + [(fmt, mode) for fmt in GOAL_FORMATS for mode in ("nomask", "document", "remove")]
        for fmt, mode in cases:
            variants[f"export {fmt} {mode}"] = (
                lambda fmt=fmt, mode=mode: export_shards(tmp / "shards", out, fmt, mode, progress=False))
        variants["MaskedShards iteration (baseline)"] = lambda: masked_shards_tokens(tmp / "shards", masked_shards_samples)
        best, outputs = best_of_interleaved(variants, repeats, setup=lambda _: shutil.rmtree(out, ignore_errors=True))
    copy_s = best["numpy copy (baseline)"]
    rows = []
    for name, seconds in best.items():
        n = outputs[name] if name.startswith("MaskedShards") else stream_tokens
        row = {"variant": name, "seconds": round(seconds, 3), "tokens": n, "tokens_per_s": round(n / seconds),
               "vs_numpy_copy": round((n / seconds) / (stream_tokens / copy_s), 3)}
        fmt_mode = name.removeprefix("export ").split()
        if name.startswith("export ") and fmt_mode[0] in GOAL_FORMATS:
            row["goal_met"] = n / seconds >= GOAL_TOKENS_PER_S
        rows.append(row)
    return {
        "tokens": stream_tokens, "shards": len(manifest["shards"]), "documents": manifest["counts"]["docs"],
        "repeats": repeats, "goal_tokens_per_s": GOAL_TOKENS_PER_S, "goal_formats": list(GOAL_FORMATS),
        "machine": {"platform": f"{platform.machine()} {os.cpu_count()} cpus", "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        "# tokfilter export: tokens/s",
        "",
        f"{result['tokens']:,} tokens ({result['documents']:,} documents, {result['shards']} shards of uint16 ids, "
        f"~10% flagged), best of {result['repeats']} interleaved runs; {result['machine']['platform']}, load average "
        f"at the end {result['machine']['load_avg_end']}. Output to the page cache (no fsync), as the numpy copy. "
        f"Goal: >= {result['goal_tokens_per_s'] / 1e6:.0f}M tokens/s for {' and '.join(result['goal_formats'])}.",
        "",
        "| variant | seconds | M tokens/s | x numpy copy | goal |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        goal = {True: "met", False: "not met"}.get(r.get("goal_met"), "")
        lines.append(f"| {r['variant']} | {r['seconds']} | {r['tokens_per_s'] / 1e6:.1f} | {r['vs_numpy_copy']} | {goal} |")
    lines += ["", "![tokens/s per variant](export.png)", "", "Tokens/s counts the shards' tokens read (`document` mode writes fewer: it drops the documents over the "
              "document threshold, here about half). MaskedShards iteration: `sample(k)` over the first samples of "
              "seq_len 2048, mode mask (its own token count)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Horizontal bars of M tokens/s per variant, the goal as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    colors = ["tab:gray" if "baseline" in r["variant"] else "tab:blue" for r in rows]
    ax.barh([r["variant"] for r in rows], [r["tokens_per_s"] / 1e6 for r in rows], color=colors)
    ax.axvline(result["goal_tokens_per_s"] / 1e6, color="tab:red", linestyle="--", label="goal (olmo-core, megatron)")
    ax.set_xlabel("M tokens/s (best of interleaved runs)")
    ax.set_title(f"tokfilter export, {result['tokens'] / 1e6:.0f}M tokens, {result['machine']['platform']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--masked-shards-samples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    result = run(args.tokens, args.repeats, args.masked_shards_samples)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "export.md").write_text(markdown(result))
    plot(result, args.out / "export.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
