"""The grid of pretraining runs: build its inputs, fix its thresholds, pretrain and evaluate each run.

Thresholds are fixed before any evaluation: explicit values, ``"card"`` (the classifier's best-F1
threshold, calibrated on the validation split) or quantiles of the *training* shards that flag a
given fraction of tokens (the filtering-ratio ablation). The first token threshold and the first
document threshold listed in the config are the ones the claims are judged at.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tokfilter.errors import TokfilterError
from tokfilter.training.experiments.config import ExperimentConfig
from tokfilter.training.corpus.build import read_corpus
from tokfilter.training.pretrain.evaluate import FORGET, EvalConfig, Evaluator
from tokfilter.training.pretrain.model import load_model
from tokfilter.training.precision import resolve_precision
from tokfilter.training.pretrain.seen import seen_items_of_run
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
    variants: dict[str, dict] = field(default_factory=dict)  # name -> token_model, shards, classifier metrics


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


def train_classifier_once(corpus_dir: Path, out_dir: Path, layers: int, max_steps: int, label_noise: float, seed: int,
                           threads: int | None, task: str = "token") -> None:
    """Train and export one classifier unless ``out_dir`` holds one already."""
    if (out_dir / "model.onnx").is_file():
        return
    from tokfilter.training.classifier.train import TrainConfig, train_classifier

    log(f"training {task} classifier ({layers} layers, {max_steps} steps, label noise {label_noise}) -> {out_dir}")
    train_classifier(TrainConfig(task=task, layers=layers, max_steps=max_steps, label_noise=label_noise, seed=seed),
                     corpus_dir, out_dir, threads=threads)


def filter_split(corpus_dir: Path, token_model: Path, doc_model: Path, tokenizer: Path, shards_dir: Path,
                 threads: int | None) -> None:
    """Shards of the train split through the in-process filter pipeline, unless complete already."""
    manifest = shards_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
        return
    from tokfilter.clients.engines.local import FilterSettings, run_local

    log(f"filtering the train split into {shards_dir} (in process; the engines are named below)")
    settings = FilterSettings(token_model=str(token_model), doc_model=str(doc_model), target_tokenizer=str(tokenizer),
                              threads=threads)
    run_local([str(corpus_dir / "train.jsonl")], shards_dir, settings, resume=True)


def relabel_corpus(corpus_dir: Path, token_model: Path, out_dir: Path, threads: int | None) -> None:
    """A copy of the corpus whose train and validation label spans are ``token_model``'s flagged
    spans at its threshold (weak-to-strong: a classifier learns from another's predictions and is
    calibrated on them too); the test split keeps the corpus's labels, the ones metrics use."""
    if (out_dir / "complete").is_file():
        return
    from tokfilter.inference import OnnxWindowScorer
    from tokfilter.scoring import ScoringPipeline

    log(f"relabelling train and validation with {token_model} -> {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = ScoringPipeline.from_model_dirs(token_model, make_scorer=lambda d: OnnxWindowScorer(d, threads=threads))
    for split in ("train", "validation"):
        docs = list(read_corpus(corpus_dir / f"{split}.jsonl"))
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for begin in range(0, len(docs), 256):
                batch = docs[begin : begin + 256]
                for doc, scores in zip(batch, pipeline.score([d["text"] for d in batch])):
                    doc["meta"]["label_spans"] = [[span.start, span.end] for span in scores.spans]
                    f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    for name in ("test.jsonl", "items.jsonl", "manifest.json"):
        shutil.copyfile(corpus_dir / name, out_dir / name)
    (out_dir / "complete").write_text("")


def token_metrics(corpus_dir: Path, token_model: Path, cache: Path) -> dict:
    """Test-split token precision, recall, F1 (at the model's threshold) and AUROC against the
    corpus's labels; cached in ``cache`` for the model file it was computed on."""
    from tokfilter.digest import file_sha256

    digest = file_sha256(token_model / "model.onnx")
    if cache.is_file() and json.loads(cache.read_text()).get("model_sha256") == digest:
        return json.loads(cache.read_text())
    from sklearn.metrics import roc_auc_score

    from tokfilter.training.classifier.evaluate import score_model
    from tokfilter.training.classifier.train import binary_metrics, load_split

    labels, scores, threshold, _ = score_model(token_model, load_split(corpus_dir, "test"), "fp32", "token")
    metrics = binary_metrics(labels, scores, threshold)
    metrics = {k: metrics[k] for k in ("precision", "recall", "f1", "flagged_fraction")}
    metrics["auroc"] = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None
    metrics["threshold"] = float(threshold)
    metrics["model_sha256"] = digest
    cache.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def prepare_inputs(config: ExperimentConfig, corpus_dir: Path, models_dir: Path, tokenizer: Path, work_dir: Path,
                   threads: int | None) -> Inputs:
    """Build what is missing: corpus, target tokenizer, classifiers (retrained under label noise),
    the training shards through the in-process filter pipeline, and each classifier variant with
    its own shards (the document classifier is the main one throughout)."""
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
        train_classifier_once(corpus_dir, models_dir / name, config.classifier_layers, config.classifier_max_steps,
                               config.label_noise, config.seed, threads, task=task)
    shards_dir = work_dir / ("shards" if config.label_noise == 0 else f"shards_label_noise_{config.label_noise:g}")
    filter_split(corpus_dir, models_dir / "token_classifier", models_dir / "doc_classifier", tokenizer, shards_dir, threads)
    inputs = Inputs(corpus_dir, models_dir, tokenizer, shards_dir)
    inputs.variants["main"] = {"token_model": str(models_dir / "token_classifier"), "shards": str(shards_dir),
                               "metrics": token_metrics(corpus_dir, models_dir / "token_classifier",
                                                        work_dir / "main_token_metrics.json")}
    for spec in config.classifier_variants:
        variant_dir = work_dir / "variants" / spec["name"]
        record = variant_dir / "variant.json"
        if record.is_file() and json.loads(record.read_text()) != spec:
            raise TokfilterError(f"work dir {work_dir}: classifier variant {spec['name']!r} was built as "
                                 f"{record.read_text().strip()}, not {json.dumps(spec)}: rename it or delete {variant_dir}")
        variant_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(spec) + "\n")
        labels_corpus = corpus_dir
        if spec["labels_from"] is not None:
            labels_corpus = variant_dir / "corpus"
            relabel_corpus(corpus_dir, Path(inputs.variants[spec["labels_from"]]["token_model"]), labels_corpus, threads)
        token_model = variant_dir / "token_classifier"
        train_classifier_once(labels_corpus, token_model, spec["layers"], spec["max_steps"], spec["label_noise"],
                               config.seed, threads)
        filter_split(corpus_dir, token_model, models_dir / "doc_classifier", tokenizer, variant_dir / "shards", threads)
        inputs.variants[spec["name"]] = {"token_model": str(token_model), "shards": str(variant_dir / "shards"),
                                         "metrics": token_metrics(corpus_dir, token_model, variant_dir / "metrics.json")}
    return inputs


def token_probabilities(shards_dir: Path) -> np.ndarray:
    """p(forget) of every training token (end-of-text tokens left out)."""
    from tokfilter.clients.shards.writer import open_shards

    manifest, shards = open_shards(shards_dir)
    eot = int(manifest["eot_id"])
    return np.concatenate([np.asarray(s.probs, np.float32)[np.asarray(s.ids) != eot] for s in shards])


def resolve_thresholds(config: ExperimentConfig, inputs: Inputs) -> dict[str, list[dict]]:
    """Token and document thresholds with the share of training tokens each one filters."""
    from tokfilter.clients.shards.writer import open_shards
    from tokfilter.modelcard import load_model_card

    _, shards = open_shards(inputs.shards_dir)
    token_probs = token_probabilities(inputs.shards_dir)
    doc_scores = np.concatenate([s.doc_scores for s in shards]).astype(np.float32)
    doc_tokens = np.concatenate([s.lengths for s in shards]).astype(np.float64)

    def resolve(listed: list, fractions: list[float], scores: np.ndarray, weights: np.ndarray, card_dir: Path) -> list[dict]:
        out = []
        for t in listed:
            value = float(load_model_card(card_dir).threshold) if t == "card" else float(t)
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

    resolved = {
        "token": resolve(config.token_thresholds, config.token_flag_fractions, token_probs,
                         np.ones_like(token_probs, dtype=np.float64), inputs.models_dir / "token_classifier"),
        "document": resolve(config.document_thresholds, config.document_flag_fractions, doc_scores, doc_tokens,
                            inputs.models_dir / "doc_classifier"),
    }
    fraction = config.variant_flag_fraction
    for spec in config.classifier_variants:  # each variant at its own card threshold, or its own quantile
        variant = inputs.variants[spec["name"]]
        probs = token_probabilities(Path(variant["shards"]))
        resolved[f"variant:{spec['name']}"] = resolve(["card"] if fraction is None else [], [] if fraction is None else [fraction],
                                                      probs, np.ones_like(probs, dtype=np.float64), Path(variant["token_model"]))
    return resolved


def plan_runs(config: ExperimentConfig, thresholds: dict[str, list[dict]]) -> list[dict]:
    """Every (size, run type, threshold) of the grid, the first threshold of each kind primary; the
    extra unfiltered runs of the compute law (``baseline_sizes`` x ``baseline_token_budgets``); one
    mask run per size for each classifier variant."""
    unfiltered = {"threshold": 0.5, "flagged_fraction": 0.0, "source": "unused"}
    runs = []
    for size in config.sizes:
        for run_type in config.run_types:
            kind = "document" if run_type == "document" else "token"
            options = [unfiltered] if run_type == "nomask" else thresholds[kind]
            for i, t in enumerate(options):
                name = f"{size}-{run_type}" + ("" if run_type == "nomask" else f"-t{t['threshold']:.4f}")
                runs.append({"name": name, "size": size, "run_type": run_type, "primary": i == 0,
                             "token_budget": config.token_budget, "variant": "main", "shards": "main", **t})
    for size in config.baseline_sizes:
        for budget in config.baseline_token_budgets:
            if size in config.sizes and budget == config.token_budget:
                continue  # the grid's own nomask run
            runs.append({"name": f"{size}-nomask-d{budget}", "size": size, "run_type": "nomask", "primary": False,
                         "token_budget": budget, "variant": "main", "shards": "main", **unfiltered})
    for spec in config.classifier_variants:
        for t in thresholds.get(f"variant:{spec['name']}", []):
            for size in config.sizes:
                runs.append({"name": f"{size}-mask-{spec['name']}-t{t['threshold']:.4f}", "size": size, "run_type": "mask",
                             "primary": False, "token_budget": config.token_budget, "variant": spec["name"],
                             "shards": spec["name"], **t})
    return runs


def same_run(summary: dict, expected: dict) -> bool:
    """Whether a finished run (its ``summary.json``) is the run ``expected`` (a PretrainConfig as a
    dict) asks for. The seen-token cap only has to match where it could have stopped the run: one
    that reached its budget within the expected cap is the same run under either cap."""
    done, wanted = dict(summary["config"]), dict(expected)
    done_cap, wanted_cap = done.pop("max_seen_factor", None), wanted.pop("max_seen_factor")
    if done != wanted:
        return False
    return done_cap == wanted_cap or (
        summary["unmasked_tokens"] >= wanted["token_budget"]
        and summary["total_tokens"] <= wanted_cap * wanted["token_budget"]
    )


def budget_reached(run: dict) -> bool:
    """Whether a run trained on its whole unmasked budget; runs written before the seen-token cap
    existed always did (the trainer did not stop otherwise)."""
    return run["train"].get("budget_reached", True)


def log(message: str) -> None:
    print(f"[experiment] {message}", file=sys.stderr, flush=True)


def run_grid(config: ExperimentConfig, inputs: Inputs, work_dir: Path, mcq_data: Path | None = None) -> list[dict]:
    """Pretrain every planned run (skipping finished ones), then evaluate all on the same sets:
    losses per passage; for primary runs, multiple choice (held-out; absorbed, of the training items
    the grid's unfiltered run read; real sets given ``mcq_data``) and adversarial fine-tuning."""
    thresholds = resolve_thresholds(config, inputs)
    runs = plan_runs(config, thresholds)
    vocab_size = vocab_size_of(inputs.tokenizer)
    precision = resolve_precision(config.precision, config.device)
    log(f"{len(runs)} runs, precision {precision} on {config.device}")
    for i, run in enumerate(runs):
        run_dir = work_dir / "runs" / run["name"]
        pretrain = PretrainConfig(
            out_dir=run_dir, size=run["size"], run_type=run["run_type"], threshold=run["threshold"],
            seq_len=config.seq_len, batch_size=config.batch_size, token_budget=run["token_budget"], lr=config.lr,
            seed=config.seed, log_every=50, resume=True, device=config.device, precision=config.precision,
        )
        summary_path = run_dir / "summary.json"
        expected = json.loads(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(pretrain).items()}))
        run["reused"] = summary_path.is_file() and same_run(json.loads(summary_path.read_text()), expected)
        shards = inputs.shards_dir if run["shards"] == "main" else Path(inputs.variants[run["shards"]]["shards"])
        if run["reused"]:
            log(f"run {i + 1}/{len(runs)} {run['name']}: done before, reusing")
        else:
            log(f"run {i + 1}/{len(runs)} {run['name']}")
            train(pretrain, vocab_size, shard_batches(shards, pretrain))
        run["dir"] = str(run_dir)
        run["train"] = json.loads(summary_path.read_text())
        if not budget_reached(run):
            log(f"{run['name']} stopped at its seen-token cap before its budget: "
                f"{run['train']['unmasked_tokens']:,} unmasked of {run['train']['total_tokens']:,} seen")
        if run["train"].get("passes", 1) > 1:
            log(f"{run['name']} read the shards {run['train']['passes']} times: its data repeated")
    reference = next(r for r in runs if r["run_type"] == "nomask" and r["primary"])
    absorbed = seen_items_of_run(Path(reference["dir"]), inputs.shards_dir, inputs.corpus_dir, inputs.tokenizer)
    log(f"absorbed-knowledge questions from the {len(absorbed):,} training items {reference['name']} read whole")
    if mcq_data is None:
        log("real multiple-choice sets skipped: no --mcq-data")
    evaluator = Evaluator(inputs.corpus_dir, inputs.tokenizer, config.seq_len,
                          EvalConfig(config.eval_max_passages, config.eval_max_questions, seed=config.seed,
                                     precision=precision), absorbed, mcq_data)
    for i, run in enumerate(runs):
        log(f"evaluating {i + 1}/{len(runs)} {run['name']}")
        model, _ = load_model(Path(run["dir"]) / "model.pt", device=config.device)
        losses = evaluator.domain_losses(model)
        run["losses"] = {d: r["loss"] for d, r in losses.items()}
        run["passage_losses"] = {d: r["passages"] for d, r in losses.items()}
        # multiple choice only where the claims and tables read it: the primary run of each type and size
        run["multiple_choice"] = evaluator.multiple_choice(model) if run["primary"] else {}
    for run in runs:
        if run["run_type"] != "nomask" and run["primary"] and config.adversarial_max_tokens > 0:
            baseline = next(r for r in runs if r["size"] == run["size"] and r["run_type"] == "nomask" and r["primary"])
            log(f"adversarial fine-tuning of {run['name']}")
            model, _ = load_model(Path(run["dir"]) / "model.pt", device=config.device)
            run["adversarial"] = evaluator.adversarial_finetune(
                model, baseline["losses"][FORGET], config.adversarial_max_tokens, config.adversarial_eval_every,
                lr=config.adversarial_lr,
            )
            recovered = run["adversarial"]["tokens_to_recover"]
            run["adversarial"]["percent_of_pretraining"] = (
                None if recovered is None else 100.0 * recovered / run["train"]["total_tokens"]
            )
    return runs
