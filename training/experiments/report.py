"""The experiment's report: ``report.md`` with the claims and a table of runs, and four PNG plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tokfilter.training.experiments.claims import claim_status
from tokfilter.training.experiments.config import ExperimentConfig
from tokfilter.training.experiments.grid import Inputs
from tokfilter.training.pretrain.evaluate import DOMAINS, FORGET, RETAIN


def plot_all(runs: list[dict], analysis: dict, config: ExperimentConfig, out_dir: Path) -> list[str]:
    """The four figures of the report; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"nomask": ("k", "*"), "document": ("tab:orange", "s"), "mask": ("tab:blue", "o"), "remove": ("tab:green", "^")}
    names = []

    fig, axes = plt.subplots(1, len(config.sizes), figsize=(5 * len(config.sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], config.sizes):
        for run_type, (color, marker) in styles.items():
            pts = sorted((r["losses"][FORGET], r["losses"][RETAIN]) for r in runs if r["size"] == size and r["run_type"] == run_type)
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, label=run_type)
        ax.set(title=f"size {size}", xlabel="forget (medicine) loss, nats", ylabel="retain (biology) loss, nats")
        ax.legend()
    fig.suptitle("Forget vs retain loss across thresholds (right and low is better)")
    fig.tight_layout()
    fig.savefig(out_dir / "frontier.png", dpi=110)
    names.append("frontier.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, domain in zip(axes, (FORGET, RETAIN)):
        for run_type, (color, marker) in styles.items():
            pts = [(r["train"]["compute_flops"], r["losses"][domain]) for r in runs if r["run_type"] == run_type]
            if pts:
                ax.scatter(*zip(*pts), color=color, marker=marker, label=run_type, s=90 if run_type == "nomask" else 40,
                           zorder=3 if run_type == "nomask" else 2)
        fit = analysis["fits"][domain]
        if fit is not None:
            cs = np.array([r["train"]["compute_flops"] for r in runs])
            grid = np.geomspace(cs.min() / 3, cs.max() * 3, 50)
            ax.plot(grid, np.exp(fit[0] + fit[1] * np.log(grid)), "k--", label=f"nomask fit b={fit[1]:.3f}")
        ax.set(xscale="log", yscale="log", title=f"{domain} loss vs compute", xlabel="C = 6 N D (FLOPs)", ylabel="loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "compute.png", dpi=110)
    names.append("compute.png")

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(runs)), 4))
    shown = [r for r in runs if r["primary"]]
    width = 0.8 / len(DOMAINS)
    for j, domain in enumerate(DOMAINS):
        accs = [r["multiple_choice"].get(domain, {}).get("accuracy", float("nan")) for r in shown]
        ax.bar(np.arange(len(shown)) + j * width, accs, width, label=domain)
    ax.axhline(0.25, color="k", linestyle=":", label="chance (25%)")
    ax.set_xticks(np.arange(len(shown)) + width, [r["name"].split("-t")[0] for r in shown], rotation=30, ha="right")
    ax.set(ylabel="accuracy", title="Definition-matching multiple choice (held-out items)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "multiple_choice.png", dpi=110)
    names.append("multiple_choice.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        if "adversarial" in r:
            color, marker = styles[r["run_type"]]
            ax.plot(*zip(*r["adversarial"]["curve"]), color=color, marker=marker, label=r["name"])
            ax.axhline(r["adversarial"]["target_loss"], color="k", linestyle=":", linewidth=0.8)
    ax.set(xlabel="fine-tuning tokens (medical train text)", ylabel="forget loss, nats",
           title="Adversarial recovery (dotted: nomask forget loss)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "adversarial.png", dpi=110)
    names.append("adversarial.png")
    plt.close("all")
    return names


def write_report(config: ExperimentConfig, inputs: Inputs, runs: list[dict], analysis: dict, plots: list[str],
                 out_dir: Path, elapsed_s: float) -> None:
    fmt = lambda x: "n/a" if x is None else f"{x:.3g}"  # noqa: E731
    pretrain_s = sum(r["train"]["elapsed_s"] for r in runs)
    reused = sum(r["reused"] for r in runs)
    lines = [
        f"# Experiment `{config.name}`",
        "",
        f"Config: `{json.dumps(asdict(config))}`",
        "",
        f"Corpus `{inputs.corpus_dir}`, classifiers `{inputs.models_dir}`, target tokenizer `{inputs.tokenizer}`, "
        f"shards `{inputs.shards_dir}`. Wall time of this invocation {elapsed_s / 60:.1f} min; pretraining the "
        f"{len(runs)} runs took {pretrain_s / 60:.1f} min in all ({reused} reused from an earlier invocation). "
        "Losses are mean nats per token on "
        "pure-domain passages of the test split; thresholds were fixed from the config before evaluation.",
        "",
        *([f"Notes: {config.notes}", ""] if config.notes else []),
        "## Claims",
        "",
    ]
    for claim in analysis["claims"]:
        lines.append(f"**{claim['claim']}**: {claim_status(claim)} at this scale.")
        lines.extend(f"- {e}" for e in claim["evidence"])
        lines.append("")
    fits = analysis["fits"]
    lines += [
        "## Runs",
        "",
        "Compute ratio = C_baseline / C from ln L = a + b ln C fitted on the nomask runs "
        f"(forget fit: {fits[FORGET] and f'a={fits[FORGET][0]:.3f}, b={fits[FORGET][1]:.4f}' or 'n/a, fewer than two sizes'}).",
        "",
        "| run | thr | flagged | unmasked tok | seen tok | medicine | biology | general | MC med | MC bio | MC gen | forget compute ratio | adv. tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        mc = r["multiple_choice"]
        adv = r.get("adversarial")
        adv_s = "" if adv is None else ("not within " + f"{adv['max_tokens']:,}" if adv["tokens_to_recover"] is None
                                        else f"{adv['tokens_to_recover']:,} ({adv['percent_of_pretraining']:.1f}%)")
        lines.append(
            f"| {r['name']} | {r['threshold']:.3f} | {r['flagged_fraction']:.1%} | {r['train']['unmasked_tokens']:,} | "
            f"{r['train']['total_tokens']:,} | {r['losses'][FORGET]:.3f} | {r['losses'][RETAIN]:.3f} | "
            f"{r['losses']['general']:.3f} | "
            + " | ".join(f"{mc[d]['accuracy']:.0%}" if d in mc else "-" for d in DOMAINS)
            + f" | {fmt(r['compute_ratio'][FORGET])} | {adv_s} |"
        )
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    (out_dir / "report.md").write_text("\n".join(lines))

