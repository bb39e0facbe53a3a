"""A grid of pretraining runs and its report (``tokfilter experiment CONFIG``).

Run types x model sizes x filtering thresholds, each pretrained on the same masked shards with the
same unmasked-token budget, then evaluated on the held-out test split. Writes ``results.json``,
``report.md`` and PNG plots, and states each claim of issue 6 with its numbers.

Thresholds are fixed before any evaluation: explicit values, ``"card"`` (the classifier's best-F1
threshold, calibrated on the validation split) or quantiles of the *training* shards that flag a
given fraction of tokens (the filtering-ratio ablation). The first token threshold and the first
document threshold listed in the config are the ones the claims are judged at.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.errors import TokfilterError
from tokfilter.training.evaluate import DOMAINS, FORGET, RETAIN, EvalConfig, Evaluator
from tokfilter.training.model import SIZES, load_model
from tokfilter.training.pretrain import RUN_TYPES, PretrainConfig, shard_batches, train, vocab_size_of

EXPERIMENTS_DIR = paths.REPO_ROOT / "benchmarks" / "experiments"
RESULTS_DIR = paths.REPO_ROOT / "benchmarks" / "results"
TOKEN_RUN_TYPES = ("mask", "remove")


@dataclass
class ExperimentConfig:
    name: str
    sizes: list[str]
    run_types: list[str] = field(default_factory=lambda: list(RUN_TYPES))
    token_thresholds: list = field(default_factory=lambda: ["card"])  # floats or "card"
    token_flag_fractions: list[float] = field(default_factory=list)  # quantile thresholds
    document_thresholds: list = field(default_factory=lambda: ["card"])
    document_flag_fractions: list[float] = field(default_factory=list)  # token-weighted
    seq_len: int = 128
    batch_size: int = 16
    token_budget: int = 200_000
    lr: float = 3e-3
    seed: int = 0
    corpus_size: str = "default"
    tokenizer_vocab_size: int = 8192
    classifier_layers: int = 2
    classifier_max_steps: int = 300
    label_noise: float = 0.0
    eval_max_passages: int = 400
    eval_max_questions: int = 200
    adversarial_max_tokens: int = 100_000
    adversarial_eval_every: int = 4096
    adversarial_lr: float = 1e-3
    notes: str = ""  # why the config is sized as it is; printed at the top of the report

    @classmethod
    def load(cls, path: Path) -> "ExperimentConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TokfilterError(f"config: cannot read {path}: {err}") from err
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TokfilterError(f"config: unknown key(s) {', '.join(unknown)} in {path}; known: {', '.join(sorted(known))}")
        config = cls(**raw)
        config.validate()
        return config

    def validate(self) -> None:
        for size in self.sizes:
            if size not in SIZES:
                raise TokfilterError(f"config sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
        for run_type in self.run_types:
            if run_type not in RUN_TYPES:
                raise TokfilterError(f"config run_types: {run_type!r} is not one of {', '.join(RUN_TYPES)}")
        if "nomask" not in self.run_types:
            raise TokfilterError("config run_types: must include 'nomask' (the baseline every claim compares to)")
        for key in ("token_thresholds", "document_thresholds"):
            for t in getattr(self, key):
                if t != "card" and not (isinstance(t, (int, float)) and 0 <= t <= 1):
                    raise TokfilterError(f"config {key}: {t!r} must be 'card' or a number in [0, 1]")
        for key in ("token_flag_fractions", "document_flag_fractions"):
            for f in getattr(self, key):
                if not 0 < f < 1:
                    raise TokfilterError(f"config {key}: {f} must be in (0, 1)")
        if not 0 <= self.label_noise < 0.5:
            raise TokfilterError(f"config label_noise: {self.label_noise} must be in [0, 0.5)")


# ---------------------------------------------------------------------------------------------
# Pure analysis functions


def threshold_for_fraction(scores: np.ndarray, weights: np.ndarray, fraction: float) -> float:
    """The highest threshold t such that items with score >= t carry at least ``fraction`` of the
    total weight (token quantiles: weight 1 per token; documents: weight = their token count)."""
    order = np.argsort(-scores, kind="stable")
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    index = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left"))
    return float(scores[order[min(index, len(order) - 1)]])


def fit_power_law(compute: list[float], loss: list[float]) -> tuple[float, float] | None:
    """Least-squares fit of ln L = a + b ln C; None with fewer than two distinct compute values."""
    if len(set(compute)) < 2:
        return None
    b, a = np.polyfit(np.log(compute), np.log(loss), 1)
    return float(a), float(b)


def loss_matched_compute_ratio(loss: float, compute: float, fit: tuple[float, float]) -> float:
    """C_baseline / C: the unfiltered compute reaching ``loss`` on the fitted law, over the compute
    actually used. Below 1 the filtered run looks like an unfiltered run with less compute."""
    a, b = fit
    return math.exp((math.log(loss) - a) / b) / compute


def interpolate_at(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of the curve (xs, ys) at x; None outside its range."""
    order = np.argsort(xs)
    xs_sorted, ys_sorted = np.asarray(xs)[order], np.asarray(ys)[order]
    if len(xs) == 0 or x < xs_sorted[0] or x > xs_sorted[-1]:
        return None
    return float(np.interp(x, xs_sorted, ys_sorted))


# ---------------------------------------------------------------------------------------------
# Building inputs


@dataclass
class Inputs:
    corpus_dir: Path
    models_dir: Path
    tokenizer: Path
    shards_dir: Path


INPUT_KEYS = ("corpus_size", "seed", "tokenizer_vocab_size", "classifier_layers", "classifier_max_steps", "label_noise")


def claim_work_dir(config: ExperimentConfig, work_dir: Path) -> None:
    """Record in ``work_dir/inputs.json`` the config keys that the built inputs depend on, and refuse
    a work dir built for other values: reusing its corpus, classifiers or shards would be silent."""
    wanted = {key: getattr(config, key) for key in INPUT_KEYS}
    record = work_dir / "inputs.json"
    if record.is_file():
        built = json.loads(record.read_text())
        changed = [f"{k} {built.get(k)!r} -> {v!r}" for k, v in wanted.items() if built.get(k) != v]
        if changed:
            raise TokfilterError(f"work dir {work_dir} holds inputs built for another config ({'; '.join(changed)}): "
                                 "delete it or pass another --work")
    work_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(wanted, indent=1) + "\n")


def prepare_inputs(config: ExperimentConfig, corpus_dir: Path, models_dir: Path, tokenizer: Path, work_dir: Path,
                   threads: int | None) -> Inputs:
    """Build what is missing: corpus, target tokenizer, classifiers (retrained under label noise),
    and the training shards through the in-process filter pipeline."""
    claim_work_dir(config, work_dir)
    if not (corpus_dir / "train.jsonl").is_file():
        from tokfilter.training.corpus import build_corpus

        log(f"building corpus ({config.corpus_size}) in {corpus_dir}")
        build_corpus(corpus_dir, seed=config.seed, size=config.corpus_size)
    if not tokenizer.is_file():
        from tokfilter.training.target_tokenizer import corpus_texts, train_target_tokenizer

        log(f"training target tokenizer ({config.tokenizer_vocab_size}) -> {tokenizer}")
        train_target_tokenizer(corpus_texts([str(corpus_dir / "train.jsonl")]), tokenizer, config.tokenizer_vocab_size)
    if config.label_noise > 0:
        models_dir = work_dir / f"models_label_noise_{config.label_noise:g}"
    for task, name in (("token", "token_classifier"), ("document", "doc_classifier")):
        if not (models_dir / name / "model.onnx").is_file():
            from tokfilter.training.classifiers import TrainConfig, train_classifier

            log(f"training {task} classifier (label noise {config.label_noise}) -> {models_dir / name}")
            train_classifier(
                TrainConfig(task=task, layers=config.classifier_layers, max_steps=config.classifier_max_steps,
                            label_noise=config.label_noise, seed=config.seed),
                corpus_dir, models_dir / name, threads=threads,
            )
    shards_dir = work_dir / ("shards" if config.label_noise == 0 else f"shards_label_noise_{config.label_noise:g}")
    manifest = shards_dir / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("complete")):
        from tokfilter.clients.corpus_filter import FilterSettings, run_local

        log(f"filtering the train split into {shards_dir} (in-process ONNX Runtime)")
        settings = FilterSettings(token_model=str(models_dir / "token_classifier"), doc_model=str(models_dir / "doc_classifier"),
                                  target_tokenizer=str(tokenizer), threads=threads)
        run_local([str(corpus_dir / "train.jsonl")], shards_dir, settings, resume=True)
    return Inputs(corpus_dir, models_dir, tokenizer, shards_dir)


def resolve_thresholds(config: ExperimentConfig, inputs: Inputs) -> dict[str, list[dict]]:
    """Token and document thresholds with the share of training tokens each one filters."""
    from tokfilter.clients.shards import open_shards
    from tokfilter.modelcard import load_model_card

    manifest, shards = open_shards(inputs.shards_dir)
    eot = int(manifest["eot_id"])
    token_probs = np.concatenate([np.asarray(s.probs, np.float32)[np.asarray(s.ids) != eot] for s in shards])
    doc_scores = np.concatenate([s.doc_scores for s in shards]).astype(np.float32)
    doc_tokens = np.concatenate([s.lengths for s in shards]).astype(np.float64)

    def resolve(listed: list, fractions: list[float], scores: np.ndarray, weights: np.ndarray, card_dir: str) -> list[dict]:
        out = []
        for t in listed:
            value = float(load_model_card(inputs.models_dir / card_dir).threshold) if t == "card" else float(t)
            out.append({"threshold": value, "source": "card (best F1 on validation)" if t == "card" else "config"})
        for f in fractions:
            out.append({"threshold": threshold_for_fraction(scores, weights, f), "source": f"flags {f:.2%} of tokens"})
        for entry in out:
            entry["flagged_fraction"] = float(weights[scores >= entry["threshold"]].sum() / weights.sum())
        usable = [e for e in out if e["flagged_fraction"] < 1.0]
        for e in out:
            if e not in usable:
                log(f"threshold {e['threshold']:.4f} ({e['source']}) flags every training token: no run for it")
        return usable

    return {
        "token": resolve(config.token_thresholds, config.token_flag_fractions, token_probs,
                         np.ones_like(token_probs, dtype=np.float64), "token_classifier"),
        "document": resolve(config.document_thresholds, config.document_flag_fractions, doc_scores, doc_tokens,
                            "doc_classifier"),
    }


def plan_runs(config: ExperimentConfig, thresholds: dict[str, list[dict]]) -> list[dict]:
    """Every (size, run type, threshold) of the grid; the first threshold of each kind is primary."""
    runs = []
    for size in config.sizes:
        for run_type in config.run_types:
            kind = "document" if run_type == "document" else "token"
            options = [{"threshold": 0.5, "flagged_fraction": 0.0, "source": "unused"}] if run_type == "nomask" else thresholds[kind]
            for i, t in enumerate(options):
                name = f"{size}-{run_type}" + ("" if run_type == "nomask" else f"-t{t['threshold']:.4f}")
                runs.append({"name": name, "size": size, "run_type": run_type, "primary": i == 0, **t})
    return runs


# ---------------------------------------------------------------------------------------------
# Running


def log(message: str) -> None:
    print(f"[experiment] {message}", file=sys.stderr, flush=True)


def run_grid(config: ExperimentConfig, inputs: Inputs, work_dir: Path) -> list[dict]:
    """Pretrain every planned run (skipping finished ones), then evaluate all on the same sets."""
    thresholds = resolve_thresholds(config, inputs)
    runs = plan_runs(config, thresholds)
    vocab_size = vocab_size_of(inputs.tokenizer)
    for i, run in enumerate(runs):
        run_dir = work_dir / "runs" / run["name"]
        pretrain = PretrainConfig(
            out_dir=run_dir, size=run["size"], run_type=run["run_type"], threshold=run["threshold"],
            seq_len=config.seq_len, batch_size=config.batch_size, token_budget=config.token_budget, lr=config.lr,
            seed=config.seed, log_every=50, resume=True,
        )
        summary_path = run_dir / "summary.json"
        expected = json.loads(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(pretrain).items()}))
        run["reused"] = summary_path.is_file() and json.loads(summary_path.read_text())["config"] == expected
        if run["reused"]:
            log(f"run {i + 1}/{len(runs)} {run['name']}: done before, reusing")
        else:
            log(f"run {i + 1}/{len(runs)} {run['name']}")
            train(pretrain, vocab_size, shard_batches(inputs.shards_dir, pretrain))
        run["dir"] = str(run_dir)
        run["train"] = json.loads(summary_path.read_text())
    evaluator = Evaluator(inputs.corpus_dir, inputs.tokenizer, config.seq_len,
                          EvalConfig(config.eval_max_passages, config.eval_max_questions, seed=config.seed))
    for run in runs:
        model, _ = load_model(Path(run["dir"]) / "model.pt")
        run["losses"] = {d: r["loss"] for d, r in evaluator.domain_losses(model).items()}
        run["multiple_choice"] = evaluator.multiple_choice(model)
    for run in runs:
        if run["run_type"] != "nomask" and run["primary"]:
            baseline = next(r for r in runs if r["size"] == run["size"] and r["run_type"] == "nomask")
            log(f"adversarial fine-tuning of {run['name']}")
            model, _ = load_model(Path(run["dir"]) / "model.pt")
            run["adversarial"] = evaluator.adversarial_finetune(
                model, baseline["losses"][FORGET], config.adversarial_max_tokens, config.adversarial_eval_every,
                lr=config.adversarial_lr,
            )
            recovered = run["adversarial"]["tokens_to_recover"]
            run["adversarial"]["percent_of_pretraining"] = (
                None if recovered is None else 100.0 * recovered / run["train"]["total_tokens"]
            )
    return runs


# ---------------------------------------------------------------------------------------------
# Analysis and report


def analyse(runs: list[dict], sizes: list[str]) -> dict:
    """Compute-matched ratios and the four claims, with their numbers."""
    nomask = {r["size"]: r for r in runs if r["run_type"] == "nomask"}
    fits = {}
    for domain in DOMAINS:
        base = [r for r in runs if r["run_type"] == "nomask"]
        fits[domain] = fit_power_law([r["train"]["compute_flops"] for r in base], [r["losses"][domain] for r in base])
    for r in runs:
        base = nomask[r["size"]]
        r["delta"] = {d: r["losses"][d] - base["losses"][d] for d in DOMAINS}
        r["compute_ratio"] = {
            d: (None if fits[d] is None else loss_matched_compute_ratio(r["losses"][d], r["train"]["compute_flops"], fits[d]))
            for d in DOMAINS
        }
    claims = [claim_loss_gaps(runs, sizes), claim_token_beats_document(runs, sizes), claim_multiple_choice(runs, sizes),
              claim_adversarial(runs, sizes)]
    return {"fits": fits, "claims": claims}


def primary(runs: list[dict], size: str, run_type: str) -> dict | None:
    return next((r for r in runs if r["size"] == size and r["run_type"] == run_type and r["primary"]), None)


def claim_loss_gaps(runs: list[dict], sizes: list[str]) -> dict:
    lines, ok = [], True
    for size in sizes:
        for run_type in TOKEN_RUN_TYPES:
            r = primary(runs, size, run_type)
            if r is None:
                continue
            d = r["delta"]
            passed = d[FORGET] >= 0.3 and d[RETAIN] <= 0.05 and d["general"] <= 0.03
            ok &= passed
            lines.append(f"{size} {run_type} (t={r['threshold']:.3f}): medicine {d[FORGET]:+.3f}, biology "
                         f"{d[RETAIN]:+.3f}, general {d['general']:+.3f} nats vs nomask -> {'yes' if passed else 'no'}")
    return {"claim": "1. mask/remove raise medical loss >= 0.3 nats over nomask; biology rises <= 0.05, general <= 0.03",
            "reproduced": ok and bool(lines), "evidence": lines}


def claim_token_beats_document(runs: list[dict], sizes: list[str]) -> dict:
    """Biology-loss rise of token filtering vs document filtering at equal medical-loss rise,
    interpolated along each size's document frontier. Outside the frontier's range a token run is
    compared with the nearest document run by dominance: better if it forgets at least as much and
    loses no more biology, worse if that document run dominates it, otherwise not comparable
    (a ratio of rises is no measure here: biology loss often falls under filtering)."""
    lines, wins, total = [], 0, 0
    for size in sizes:
        doc = [r for r in runs if r["size"] == size and r["run_type"] == "document"]
        doc_f, doc_r = [r["delta"][FORGET] for r in doc], [r["delta"][RETAIN] for r in doc]
        for r in runs:
            if r["size"] != size or r["run_type"] not in TOKEN_RUN_TYPES:
                continue
            f, rr = r["delta"][FORGET], r["delta"][RETAIN]
            at = interpolate_at(doc_f, doc_r, f)
            if at is not None:
                total += 1
                wins += rr < at
                lines.append(f"{r['name']}: medicine {f:+.3f}; biology {rr:+.3f} vs document {at:+.3f} (interpolated)")
                continue
            if not doc:
                lines.append(f"{r['name']}: no document runs; not comparable")
                continue
            nearest = min(range(len(doc)), key=lambda i: abs(doc_f[i] - f))
            df, dr = doc_f[nearest], doc_r[nearest]
            numbers = (f"{r['name']}: medicine {f:+.3f}, biology {rr:+.3f} vs nearest document {doc[nearest]['name']} "
                       f"medicine {df:+.3f}, biology {dr:+.3f} (outside the document range)")
            if f >= df and rr <= dr:
                total, wins = total + 1, wins + 1
                lines.append(f"{numbers}: token dominates")
            elif f <= df and rr >= dr:
                total += 1
                lines.append(f"{numbers}: document dominates")
            else:
                lines.append(f"{numbers}: neither dominates; not comparable")
    token_runs = sum(r["run_type"] in TOKEN_RUN_TYPES for r in runs)
    return {"claim": "2. at equal rise of medical loss, token filtering loses less biology than document filtering",
            "reproduced": total == token_runs > 0 and wins == total,
            "evidence": lines + [f"token better in {wins}/{total} comparisons; {token_runs - total} of {token_runs} "
                                 "token runs not comparable (a claim needs all comparable)"]}


def above_chance(mc: dict) -> bool:
    """Accuracy more than two binomial standard errors above chance on ``mc['questions']`` questions."""
    se = math.sqrt(mc["chance"] * (1 - mc["chance"]) / max(mc["questions"], 1))
    return mc["accuracy"] > mc["chance"] + 2 * se


def claim_multiple_choice(runs: list[dict], sizes: list[str]) -> dict:
    """Testable only where the unfiltered model answers medicine above chance: a model at chance
    cannot fall toward it, and a pass there would say nothing."""
    lines, ok, tested = [], True, 0
    for size in sizes:
        base = primary(runs, size, "nomask")
        for run_type in TOKEN_RUN_TYPES:
            r = primary(runs, size, run_type)
            if r is None or FORGET not in r["multiple_choice"] or RETAIN not in r["multiple_choice"]:
                continue
            med, bio = r["multiple_choice"][FORGET], r["multiple_choice"][RETAIN]
            med0, bio0 = base["multiple_choice"][FORGET], base["multiple_choice"][RETAIN]
            numbers = (f"{size} {run_type}: medicine {med['accuracy']:.1%} (nomask {med0['accuracy']:.1%}, chance "
                       f"{med['chance']:.0%}, n={med['questions']}); biology {bio['accuracy']:.1%} (nomask "
                       f"{bio0['accuracy']:.1%}, n={bio['questions']})")
            if not above_chance(med0):
                lines.append(f"{numbers} -> not testable: nomask medicine is not above chance by 2 standard errors")
                continue
            tested += 1
            toward_chance = abs(med["accuracy"] - med["chance"]) < abs(med0["accuracy"] - med0["chance"]) or (
                med["accuracy"] <= med["chance"] + 0.02)
            bio_kept = bio["accuracy"] >= bio0["accuracy"] - 0.03
            ok &= toward_chance and bio_kept
            lines.append(f"{numbers} -> {'yes' if toward_chance and bio_kept else 'no'}")
    return {"claim": "3. medicine MC accuracy falls toward chance; biology within 3 points of nomask",
            "reproduced": ok and tested > 0, "testable": tested > 0, "evidence": lines}


def claim_adversarial(runs: list[dict], sizes: list[str]) -> dict:
    def tokens(r: dict | None) -> float | None:
        if r is None or "adversarial" not in r:
            return None
        t = r["adversarial"]["tokens_to_recover"]
        return math.inf if t is None else float(t)

    lines, ok, compared = [], True, 0
    for size in sizes:
        doc = tokens(primary(runs, size, "document"))
        for run_type in TOKEN_RUN_TYPES:
            t = tokens(primary(runs, size, run_type))
            if t is None or doc is None:
                continue
            compared += 1
            ok &= t > doc
            fmt = lambda x: "not recovered within budget" if math.isinf(x) else f"{x:,.0f} tokens"  # noqa: E731
            lines.append(f"{size} {run_type}: {fmt(t)} vs document {fmt(doc)} -> {'yes' if t > doc else 'no'}")
    return {"claim": "4. adversarial fine-tuning needs more tokens to recover token-filtered than document-filtered models",
            "reproduced": ok and compared > 0, "evidence": lines}


def claim_status(claim: dict) -> str:
    if not claim.get("testable", True):
        return "not testable"
    return "reproduced" if claim["reproduced"] else "NOT reproduced"


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


def run_experiment(config: ExperimentConfig, corpus_dir: Path, models_dir: Path, tokenizer: Path, work_dir: Path,
                   out_dir: Path, threads: int | None = None) -> dict:
    """Build inputs, run the grid, analyse, plot and write the report; returns the results."""
    import torch

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # small models on a shared machine: fewer threads is often faster
    try:
        return _run_experiment(config, corpus_dir, models_dir, tokenizer, work_dir, out_dir, threads, start)
    finally:
        torch.set_num_threads(previous_threads)


def _run_experiment(config: ExperimentConfig, corpus_dir: Path, models_dir: Path, tokenizer: Path, work_dir: Path,
                    out_dir: Path, threads: int | None, start: float) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = prepare_inputs(config, Path(corpus_dir), Path(models_dir), Path(tokenizer), work_dir, threads)
    runs = run_grid(config, inputs, work_dir)
    analysis = analyse(runs, config.sizes)
    plots = plot_all(runs, analysis, config, out_dir)
    elapsed = time.perf_counter() - start
    results = {"config": asdict(config), "inputs": {k: str(v) for k, v in asdict(inputs).items()}, "runs": runs,
               "analysis": analysis, "elapsed_s": elapsed}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=lambda x: None if x == math.inf else str(x)))
    write_report(config, inputs, runs, analysis, plots, out_dir, elapsed)
    return results


def config_path(name_or_path: str) -> Path:
    """A config file, or the name of one in benchmarks/experiments/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = EXPERIMENTS_DIR / f"{name_or_path}.json"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.json")))
    raise TokfilterError(f"CONFIG: {name_or_path!r} is neither a file nor a config in {EXPERIMENTS_DIR} ({known})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="small", help="config JSON or a name in benchmarks/experiments/ (smoke, small)")
    parser.add_argument("--work", type=Path, default=None, help="inputs, shards and runs (default artifacts/experiments/<name>)")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus dir (default WORK/corpus, built at the config's corpus_size)")
    parser.add_argument("--models", type=Path, default=None,
                        help="dir with token_classifier/ and doc_classifier/ (default WORK/models, trained if missing; "
                             "with label_noise > 0 the config's noisy classifiers are trained in WORK instead)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="target tokenizer.json (default WORK/tokenizer.json, trained if missing)")
    parser.add_argument("--out", type=Path, default=None, help="report dir (default benchmarks/results/experiment_<name>)")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all cores)")


def main(args: argparse.Namespace) -> int:
    config = ExperimentConfig.load(config_path(args.config))
    work = args.work or paths.ARTIFACTS / "experiments" / config.name
    out = args.out or RESULTS_DIR / f"experiment_{config.name}"
    results = run_experiment(config, args.corpus or work / "corpus", args.models or work / "models",
                             args.tokenizer or work / "tokenizer.json", work, out, args.threads)
    for claim in results["analysis"]["claims"]:
        print(f"{claim_status(claim).upper()}: {claim['claim']}")
    print(f"report: {out / 'report.md'}")
    return 0
