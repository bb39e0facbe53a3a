"""The grid of pretraining runs: build its inputs, fix its thresholds, pretrain and evaluate each run.

Thresholds are fixed before any evaluation: explicit values, ``"card"`` (the classifier's best-F1
threshold, calibrated on the validation split) or quantiles of the *training* shards that flag a
given fraction of tokens (the filtering-ratio ablation). The first token threshold and the first
document threshold listed in the config are the ones the claims are judged at.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokfilter.errors import TokfilterError
from tokfilter.training.experiments.config import ExperimentConfig
from tokfilter.training.pretrain.evaluate import FORGET, EvalConfig, Evaluator
from tokfilter.training.pretrain.model import load_model
from tokfilter.training.pretrain.train import PretrainConfig, shard_batches, train, vocab_size_of


def threshold_for_fraction(scores: np.ndarray, weights: np.ndarray, fraction: float) -> float:
    """The highest threshold t such that items with score >= t carry at least ``fraction`` of the
    total weight (token quantiles: weight 1 per token; documents: weight = their token count)."""
    order = np.argsort(-scores, kind="stable")
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    index = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left"))
    return float(scores[order[min(index, len(order) - 1)]])



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
        from tokfilter.training.corpus.build import build_corpus

        log(f"building corpus ({config.corpus_size}) in {corpus_dir}")
        build_corpus(corpus_dir, seed=config.seed, size=config.corpus_size)
    if not tokenizer.is_file():
        from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer

        log(f"training target tokenizer ({config.tokenizer_vocab_size}) -> {tokenizer}")
        train_target_tokenizer(corpus_texts([str(corpus_dir / "train.jsonl")]), tokenizer, config.tokenizer_vocab_size)
    if config.label_noise > 0:
        models_dir = work_dir / f"models_label_noise_{config.label_noise:g}"
    for task, name in (("token", "token_classifier"), ("document", "doc_classifier")):
        if not (models_dir / name / "model.onnx").is_file():
            from tokfilter.training.classifier.train import TrainConfig, train_classifier

            log(f"training {task} classifier (label noise {config.label_noise}) -> {models_dir / name}")
            train_classifier(
                TrainConfig(task=task, layers=config.classifier_layers, max_steps=config.classifier_max_steps,
                            label_noise=config.label_noise, seed=config.seed),
                corpus_dir, models_dir / name, threads=threads,
            )
    shards_dir = work_dir / ("shards" if config.label_noise == 0 else f"shards_label_noise_{config.label_noise:g}")
    manifest = shards_dir / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("complete")):
        from tokfilter.clients.engines.local import FilterSettings, run_local

        log(f"filtering the train split into {shards_dir} (in-process ONNX Runtime)")
        settings = FilterSettings(token_model=str(models_dir / "token_classifier"), doc_model=str(models_dir / "doc_classifier"),
                                  target_tokenizer=str(tokenizer), threads=threads)
        run_local([str(corpus_dir / "train.jsonl")], shards_dir, settings, resume=True)
    return Inputs(corpus_dir, models_dir, tokenizer, shards_dir)


def resolve_thresholds(config: ExperimentConfig, inputs: Inputs) -> dict[str, list[dict]]:
    """Token and document thresholds with the share of training tokens each one filters."""
    from tokfilter.clients.shards.writer import open_shards
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

