"""The paper's three ablations as tables (rows of numbers) and PNG plots, each shown when its runs exist:

- filtering ratio: the grid's mask runs at quantile thresholds flagging different shares of tokens;
- label noise: token classifiers trained on labels flipped with probability p (``label_noise``);
- weak-to-strong: a classifier trained on a weaker classifier's predictions against that weaker one.

Every row compares a mask run with the unfiltered run of its size (rise of held-out loss, nats);
classifier rows add test-split token F1 and AUROC against the corpus's labels.
"""

from __future__ import annotations

from pathlib import Path

from tokfilter.training.experiments.compute import format_ratio
from tokfilter.training.experiments.config import ExperimentConfig
from tokfilter.training.experiments.grid import budget_reached
from tokfilter.training.pretrain.evaluate import FORGET, RETAIN


def _main_mask_run(runs: list[dict], size: str, variant: str) -> dict | None:
    """The mask run of ``size`` filtered by ``variant`` (main: the grid's primary mask run)."""
    for r in runs:
        if r["size"] == size and r["run_type"] == "mask" and r.get("variant", "main") == variant:
            if variant != "main" or r["primary"]:
                return r
    return None


def ratio_rows(runs: list[dict], sizes: list[str]) -> list[dict]:
    """Main-classifier mask runs by flagged share of training tokens, where a size has two or more."""
    rows = []
    for size in sizes:
        masked = sorted((r for r in runs if r["size"] == size and r["run_type"] == "mask" and r.get("variant", "main") == "main"),
                        key=lambda r: r["flagged_fraction"])
        if len(masked) < 2:
            continue
        rows += [{"size": size, "run": r["name"], "threshold": r["threshold"], "flagged": r["flagged_fraction"],
                  "forget_rise": r["delta"][FORGET], "retain_rise": r["delta"][RETAIN], "general_rise": r["delta"]["general"],
                  "forget_ratio": (r.get("compute_ratio") or {}).get(FORGET)} for r in masked]
    return rows


def variant_rows(runs: list[dict], config: ExperimentConfig, variants: dict[str, dict], kind: str) -> list[dict]:
    """Classifier rows of the label-noise (``kind="label_noise"``) or weak-to-strong ablation: the
    main classifier and the variants trained on the corpus's labels, or the variants trained on
    another's predictions with that other one, and main as the reference."""
    specs = {"main": {"name": "main", "label_noise": config.label_noise, "layers": config.classifier_layers,
                      "max_steps": config.classifier_max_steps, "labels_from": None}}
    specs.update({v["name"]: v for v in config.classifier_variants})
    if kind == "label_noise":
        if not any(v["label_noise"] > 0 and v["labels_from"] is None for v in config.classifier_variants):
            return []
        chosen = [n for n, v in specs.items() if v["labels_from"] is None]
    else:
        strong = [v["name"] for v in config.classifier_variants if v["labels_from"] is not None]
        if not strong:
            return []
        # the weak ones and the strong ones trained on them, then main (the corpus's labels) as the reference
        chosen = [n for n in specs if n != "main" and (n in strong or any(specs[s]["labels_from"] == n for s in strong))]
        chosen.append("main")
    rows = []
    for name in chosen:
        spec, metrics = specs[name], variants[name]["metrics"]
        row = {"classifier": name, "label_noise": spec["label_noise"], "layers": spec["layers"], "steps": spec["max_steps"],
               "labels": f"predictions of {spec['labels_from']}" if spec["labels_from"] else "corpus weak labels",
               "f1": metrics["f1"], "auroc": metrics["auroc"], "threshold": metrics["threshold"], "sizes": {}}
        for size in config.sizes:
            r = _main_mask_run(runs, size, name)
            if r is not None:
                row["sizes"][size] = {"flagged": r["flagged_fraction"], "forget_rise": r["delta"][FORGET],
                                      "retain_rise": r["delta"][RETAIN], "budget_reached": budget_reached(r),
                                      "unmasked": r["train"]["unmasked_tokens"]}
        rows.append(row)
    return sorted(rows, key=lambda row: row["label_noise"]) if kind == "label_noise" else rows


def any_saturated(rows: list[dict]) -> bool:
    """Whether a variant's run stopped at its seen-token cap before its budget (the saturated end)."""
    return any(not s["budget_reached"] for r in rows for s in r["sizes"].values())


def ratio_table(rows: list[dict]) -> list[str]:
    lines = ["| size | run | threshold | flagged (train tokens) | medicine rise | biology rise | general rise | forget compute ratio |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['run']} | {r['threshold']:.4f} | {r['flagged']:.1%} | {r['forget_rise']:+.3f} | "
              f"{r['retain_rise']:+.3f} | {r['general_rise']:+.3f} | {format_ratio(r['forget_ratio'])} |" for r in rows]
    return lines


def variant_table(rows: list[dict], sizes: list[str]) -> list[str]:
    head = "| classifier | labels | label noise | layers, steps | test F1 | test AUROC | threshold |"
    rule = "|---|---|---|---|---|---|---|"
    for size in sizes:
        head += f" {size} flagged | {size} medicine rise | {size} biology rise |"
        rule += "---|---|---|"
    lines = [head, rule]
    for r in rows:
        auroc = "n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
        line = (f"| {r['classifier']} | {r['labels']} | {r['label_noise']:g} | {r['layers']}, {r['steps']} | {r['f1']:.3f} | "
                f"{auroc} | {r['threshold']:.3f} |")
        for size in sizes:
            s = r["sizes"].get(size)
            if s is None:
                line += " - | - | - |"
                continue
            saturated = "" if s["budget_reached"] else f" (budget not reached: {s['unmasked']:,} unmasked)"
            line += f" {s['flagged']:.1%}{saturated} | {s['forget_rise']:+.3f} | {s['retain_rise']:+.3f} |"
        lines.append(line)
    if any_saturated(rows):
        lines += ["", "A run whose filter masks nearly every token stops at its cap of seen tokens before its budget: "
                      "its rises are those of a model that learned from that few tokens, the saturated end of the ablation."]
    return lines


def plot_ratio(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for size in dict.fromkeys(r["size"] for r in rows):
        pts = [r for r in rows if r["size"] == size]
        flagged = [r["flagged"] for r in pts]
        ax.plot(flagged, [r["forget_rise"] for r in pts], "o-", label=f"{size} medicine")
        ax.plot(flagged, [r["retain_rise"] for r in pts], "s--", label=f"{size} biology")
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set(xscale="log", xlabel="share of training tokens flagged", ylabel="held-out loss rise over nomask, nats",
           title="Filtering ratio (mask runs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_variants(rows: list[dict], sizes: list[str], path: Path, kind: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"p={r['label_noise']:g}" if kind == "label_noise" else r["classifier"] for r in rows]
    x = np.arange(len(rows))
    left.bar(x - 0.2, [r["f1"] for r in rows], 0.4, label="test token F1")
    left.bar(x + 0.2, [r["auroc"] or 0.0 for r in rows], 0.4, label="test token AUROC")
    left.set_xticks(x, labels)
    left.set(ylim=(0, 1), title="Classifier vs the corpus's labels")
    left.legend(fontsize=7)
    width = 0.8 / max(1, 2 * len(sizes))
    for j, size in enumerate(sizes):
        for k, (key, name) in enumerate((("forget_rise", "medicine"), ("retain_rise", "biology"))):
            values = [r["sizes"].get(size, {}).get(key, float("nan")) for r in rows]
            bars = right.bar(x + (2 * j + k) * width - 0.4 + width / 2, values, width, label=f"{size} {name}")
            for bar, r in zip(bars, rows):
                if not r["sizes"].get(size, {}).get("budget_reached", True):
                    bar.set_hatch("//")  # a run stopped at its seen-token cap: the saturated end
    if any_saturated(rows):
        right.text(0.02, 0.97, "hatched: budget not reached\n(the filter masks nearly every token)",
                   transform=right.transAxes, va="top", fontsize=7)
    right.axhline(0, color="k", linewidth=0.8)
    right.set_xticks(x, labels)
    right.set(ylabel="held-out loss rise over nomask, nats", title="Mask runs filtered by each classifier")
    right.legend(fontsize=7)
    fig.suptitle("Label noise" if kind == "label_noise" else "Weak-to-strong")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ablation_sections(runs: list[dict], config: ExperimentConfig, variants: dict[str, dict], out_dir: Path) -> list[str]:
    """Markdown of every ablation with runs in this grid (a table and its plot, written to ``out_dir``)."""
    lines = []
    at = ("its own card threshold" if config.variant_flag_fraction is None else
          f"its own quantile threshold flagging {config.variant_flag_fraction:.0%} of training tokens")
    rows = ratio_rows(runs, config.sizes)
    if rows:
        plot_ratio(rows, out_dir / "ablation_ratio.png")
        lines += ["## Ablation: filtering ratio", "",
                  "Mask runs of the main classifier at thresholds fixed before training (quantiles of the training "
                  "shards' token probabilities, or the card's); flagged = share of training tokens at or above.", "",
                  *ratio_table(rows), "", "![ablation_ratio.png](ablation_ratio.png)", ""]
    for kind, title, text in (
        ("label_noise", "label noise", "Token classifiers trained on the corpus's weak labels flipped with probability p "
                                      f"(0.5: no information left), each filtering at {at} (main: the grid's primary mask run)."),
        ("weak_to_strong", "weak-to-strong", "A classifier trained and calibrated on a weaker classifier's flagged spans "
                                            "(never the corpus's labels) against that weaker classifier; both scored on "
                                            f"the test split's labels, each filtering at {at}; main (trained on the corpus's "
                                            "labels) is the reference."),
    ):
        rows = variant_rows(runs, config, variants, kind)
        if rows:
            plot_variants(rows, config.sizes, out_dir / f"ablation_{kind}.png", kind)
            lines += [f"## Ablation: {title}", "", text, "", *variant_table(rows, config.sizes), "",
                      f"![ablation_{kind}.png](ablation_{kind}.png)", ""]
    return lines
