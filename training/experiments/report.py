"""The experiment's report: ``report.md`` with the claims, the compute law, a table of runs, multiple
choice of each kind, the ablations this grid has runs for, and PNG plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tokfilter.training.experiments.ablations import ablation_sections
from tokfilter.training.experiments.claims import above_chance, claim_status
from tokfilter.training.experiments.compute import format_interval, format_ratio, misfit_factor
from tokfilter.training.experiments.config import ExperimentConfig
from tokfilter.training.experiments.grid import Inputs, budget_reached
from tokfilter.training.pretrain.evaluate import FORGET, RETAIN


def plot_all(runs: list[dict], analysis: dict, config: ExperimentConfig, out_dir: Path) -> list[str]:
    """The main figures of the report (the ablations draw their own); returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"nomask": ("k", "*"), "document": ("tab:orange", "s"), "mask": ("tab:blue", "o"), "remove": ("tab:green", "^")}
    names = []

    fig, axes = plt.subplots(1, len(config.sizes), figsize=(5 * len(config.sizes), 4), squeeze=False)
    grid_runs = [r for r in runs if r.get("variant", "main") == "main" and r["token_budget"] == config.token_budget]
    for ax, size in zip(axes[0], config.sizes):
        for run_type, (color, marker) in styles.items():
            pts = sorted((r["losses"][FORGET], r["losses"][RETAIN]) for r in grid_runs if r["size"] == size and r["run_type"] == run_type)
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
        law = analysis["laws"][domain]["law"]
        if law is not None:  # drawn over the baseline range only: outside it a ratio is a bound
            grid = np.geomspace(law["c_min"], law["c_max"], 50)
            ax.plot(grid, np.exp(law["a"] + law["b"] * np.log(grid)), "k--", label=f"nomask law b={law['b']:.3f}")
            for edge in (law["c_min"], law["c_max"]):
                ax.axvline(edge, color="k", linestyle=":", linewidth=0.8)
        ax.set(xscale="log", yscale="log", title=f"{domain} loss vs compute", xlabel="C = 6 N D (FLOPs)", ylabel="loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "compute.png", dpi=110)
    names.append("compute.png")

    shown = [r for r in runs if r["primary"]]
    kinds = [k for k in ("absorbed", "held_out", "real") if any(k in r["multiple_choice"] for r in shown)]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(max(6, 0.7 * len(shown)), 3.2 * len(kinds)), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        sets = sorted({s for r in shown for s in r["multiple_choice"].get(kind, {})})
        width = 0.8 / max(1, len(sets))
        for j, set_name in enumerate(sets):
            accs = [r["multiple_choice"].get(kind, {}).get(set_name, {}).get("accuracy", float("nan")) for r in shown]
            ax.bar(np.arange(len(shown)) + j * width, accs, width, label=set_name)
        ax.axhline(0.25, color="k", linestyle=":", label="chance (25%)")
        ax.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, [r["name"].split("-t")[0] for r in shown], rotation=30, ha="right")
        ax.set(ylabel="accuracy", title=MC_TITLES[kind])
        ax.legend(fontsize=6, loc="lower right", ncol=2)
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


MC_TITLES = {"absorbed": "Absorbed knowledge: definitions of training items the nomask run read",
             "held_out": "Generalisation: definitions of held-out (test-split) items",
             "real": "Real benchmark sets (cloze)"}


def mc_table(runs: list[dict], kind: str) -> list[str]:
    """Accuracy per set of one kind of multiple choice for the primary runs; '*' marks more than two
    binomial standard errors above chance."""
    shown = [r for r in runs if r["primary"] and kind in r["multiple_choice"]]
    sets = sorted({s for r in shown for s in r["multiple_choice"][kind]})
    if not sets:
        return []
    lines = ["| run | " + " | ".join(f"{s} (n={shown[0]['multiple_choice'][kind][s]['questions']})" for s in sets) + " |",
             "|---|" + "---|" * len(sets)]
    for r in shown:
        cells = []
        for s in sets:
            mc = r["multiple_choice"][kind].get(s)
            cells.append("-" if mc is None else f"{mc['accuracy']:.1%}{'*' if above_chance(mc) else ''}")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def law_lines(laws: dict) -> list[str]:
    lines = []
    for domain, law in laws.items():
        if law["law"] is None:
            lines.append(f"- {domain}: no law ({law['why']}); no compute ratios")
            continue
        fit = law["law"]
        misfit = misfit_factor(law["max_abs_log_residual"], fit["b"])
        lines.append(f"- {domain}: ln L = {fit['a']:.3f} + ({fit['b']:.4f}) ln C on {law['baseline_runs']} unfiltered runs "
                     f"({law['sizes']} sizes x {law['budgets']} budgets), C from {fit['c_min']:.3g} to {fit['c_max']:.3g} FLOPs; "
                     f"largest |log residual| {law['max_abs_log_residual']:.3f}, i.e. an unfiltered run can sit a factor "
                     f"{misfit:.3g} in compute off the law: ratios between 1/{misfit:.3g}x and {misfit:.3g}x do not tell a "
                     "filtered run from an unfiltered one")
    return lines


def write_report(config: ExperimentConfig, inputs: Inputs, runs: list[dict], analysis: dict, plots: list[str],
                 out_dir: Path, elapsed_s: float, real_sets_note: str = "skipped: no --mcq-data") -> None:
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
        "Repeated data: " + (", ".join(f"{r['name']} read the shards {r['train']['passes']} times" for r in runs
                                       if r["train"].get("passes", 1) > 1) or "none (every run read its shards at most once)"),
        "",
        "Budget not reached: " + (", ".join(
            f"{r['name']} ({r['train']['unmasked_tokens']:,} unmasked of {r['train']['total_tokens']:,} seen, the cap of "
            f"{r['train']['config']['max_seen_factor']:g}x its budget in seen tokens)"
            for r in runs if not budget_reached(r)) or "none (every run trained on its full budget)"),
        "",
        "## Claims",
        "",
    ]
    for claim in analysis["claims"]:
        lines.append(f"**{claim['claim']}**: {claim_status(claim)} at this scale.")
        lines.extend(f"- {e}" for e in claim["evidence"])
        lines.append("")
    lines += [
        "## Compute law",
        "",
        "Compute ratio = C_baseline / C: the unfiltered compute whose law reaches the run's loss, over the run's "
        "own (C = 6 N D, D the unmasked training tokens). Inside the unfiltered runs' compute range it is read off the "
        "law; outside, only the range's edge is known and the ratio is a bound (\"< 1/30x\": the run's loss is above "
        "what the smallest unfiltered run reached). Intervals: 95% percentile bootstrap over the evaluation passages "
        f"({config.bootstrap_replicates} resamplings; all runs resampled together, the law refitted each time).",
        "",
        *law_lines(analysis["laws"]),
        "",
        "## Runs",
        "",
        "| run | thr | flagged | unmasked tok | seen tok | medicine | biology | general | forget compute ratio | 95% interval | adv. tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        adv = r.get("adversarial")
        adv_s = "" if adv is None else ("not within " + f"{adv['max_tokens']:,}" if adv["tokens_to_recover"] is None
                                        else f"{adv['tokens_to_recover']:,} ({adv['percent_of_pretraining']:.1f}%)")
        lines.append(
            f"| {r['name']} | {r['threshold']:.3f} | {r['flagged_fraction']:.1%} | {r['train']['unmasked_tokens']:,}"
            f"{'' if budget_reached(r) else ' (budget not reached)'} | "
            f"{r['train']['total_tokens']:,} | {r['losses'][FORGET]:.3f} | {r['losses'][RETAIN]:.3f} | "
            f"{r['losses']['general']:.3f} | {format_ratio(r['compute_ratio'][FORGET])} | "
            f"{format_interval(r['compute_interval'][FORGET])} | {adv_s} |"
        )
    lines += ["", "## Multiple choice", "",
              "Cloze scoring: the option with the highest summed log-probability after the prompt; chance 25%; "
              "* = more than two binomial standard errors above chance. Claim 3 is judged on absorbed knowledge."]
    for kind in ("absorbed", "held_out", "real"):
        table = mc_table(runs, kind)
        lines += ["", f"### {MC_TITLES[kind]}", ""] + (table or [real_sets_note if kind == "real" else "none built"])
        if kind == "real" and table:
            above = sorted({s for r in runs if r["primary"] for s, mc in r["multiple_choice"]["real"].items() if above_chance(mc)})
            lines += ["", "Above chance: " + (", ".join(above) if above else "no set for any run: at chance at this scale, "
                                              "as expected of models of a few million parameters")]
    lines += ["", *ablation_sections(runs, config, inputs.variants, out_dir)]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    (out_dir / "report.md").write_text("\n".join(lines))

