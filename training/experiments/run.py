"""A grid of pretraining runs and its report (``tokfilter experiment CONFIG``).

Run types x model sizes x filtering thresholds, each pretrained on the same masked shards with the
same unmasked-token budget, then evaluated on the held-out test split. Writes ``results.json``,
``report.md`` and PNG plots, and states each claim of issue 6 with its numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from tokfilter import paths
from tokfilter.training.experiments.claims import analyse, claim_status
from tokfilter.training.experiments.config import ExperimentConfig, config_path
from tokfilter.errors import TokfilterError
from tokfilter.training.experiments.grid import Inputs, prepare_inputs, run_grid
from tokfilter.training.experiments.report import plot_all, write_report
from tokfilter.training.pretrain.mcq import load_real_sets

# a checkout keeps reports beside the benchmarks; an installed package under artifacts/
RESULTS_DIR = paths.REPO_ROOT / "benchmarks" / "results" if paths.REPO_ROOT else paths.ARTIFACTS / "results"


def run_experiment(config: ExperimentConfig, corpus_dir: Path, models_dir: Path, tokenizer: Path, work_dir: Path,
                   out_dir: Path, threads: int | None = None, mcq_data: Path | None = None) -> dict:
    """Build inputs, run the grid, analyse, plot and write the report; returns the results."""
    import torch

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # small models on a shared machine: fewer threads is often faster
    try:
        return _run_experiment(config, corpus_dir, models_dir, tokenizer, work_dir, out_dir, threads, mcq_data, start)
    finally:
        torch.set_num_threads(previous_threads)


def _run_experiment(config: ExperimentConfig, corpus_dir: Path, models_dir: Path, tokenizer: Path, work_dir: Path,
                    out_dir: Path, threads: int | None, mcq_data: Path | None, start: float) -> dict:
    if mcq_data is not None:  # a bad path fails now, not after an hour of pretraining
        load_real_sets(mcq_data, 1, config.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = prepare_inputs(config, Path(corpus_dir), Path(models_dir), Path(tokenizer), work_dir, threads)
    runs = run_grid(config, inputs, work_dir, mcq_data)
    analysis = analyse(runs, config.sizes, config.bootstrap_replicates, config.seed)
    plots = plot_all(runs, analysis, config, out_dir)
    elapsed = time.perf_counter() - start
    real_sets_note = "skipped: no --mcq-data" if mcq_data is None else f"none scored from {mcq_data}"
    results = {"config": asdict(config), "inputs": asdict(inputs), "runs": runs, "analysis": analysis, "elapsed_s": elapsed,
               "real_sets_note": real_sets_note}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=lambda x: None if x == math.inf else str(x)))
    write_report(config, inputs, runs, analysis, plots, out_dir, elapsed, real_sets_note)
    return results


def rewrite_report(out_dir: Path) -> dict:
    """Analyse, plot and write the report again from ``out_dir/results.json``, after a change to the
    analysis or the report: nothing is trained or evaluated, so it takes seconds, not the grid's hour."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise TokfilterError(f"--report-only: {path} not found (run the config without --report-only first)")
    results = json.loads(path.read_text())
    config, inputs, runs = ExperimentConfig(**results["config"]), Inputs(**results["inputs"]), results["runs"]
    results["analysis"] = analyse(runs, config.sizes, config.bootstrap_replicates, config.seed)
    plots = plot_all(runs, results["analysis"], config, Path(out_dir))
    path.write_text(json.dumps(results, indent=1, default=lambda x: None if x == math.inf else str(x)))
    write_report(config, inputs, runs, results["analysis"], plots, Path(out_dir), results["elapsed_s"],
                 results.get("real_sets_note", "skipped: no --mcq-data"))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="small", help="config JSON or a name in training/experiments/configs/ (smoke, small)")
    parser.add_argument("--work", type=Path, default=None, help="inputs, shards and runs (default artifacts/experiments/<name>)")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus dir (default WORK/corpus, built at the config's corpus_size)")
    parser.add_argument("--models", type=Path, default=None,
                        help="dir with token_classifier/ and doc_classifier/ (default WORK/models, trained if missing; "
                             "with label_noise > 0 the config's noisy classifiers are trained in WORK instead)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="target tokenizer.json (default WORK/tokenizer.json, trained if missing)")
    parser.add_argument("--out", type=Path, default=None, help=f"report dir (default: {RESULTS_DIR / 'experiment_<name>'})")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all cores)")
    parser.add_argument("--mcq-data", type=Path, default=None,
                        help="folder with mmlu.jsonl, medmcqa.jsonl, medqa.jsonl: score the real sets too (skipped without it)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from OUT/results.json (after a change to the report code); trains nothing")


def main(args: argparse.Namespace) -> int:
    config = ExperimentConfig.load(config_path(args.config))
    work = args.work or paths.ARTIFACTS / "experiments" / config.name
    out = args.out or RESULTS_DIR / f"experiment_{config.name}"
    if args.report_only:
        results = rewrite_report(out)
    else:
        results = run_experiment(config, args.corpus or work / "corpus", args.models or work / "models",
                                 args.tokenizer or work / "tokenizer.json", work, out, args.threads, args.mcq_data)
    for claim in results["analysis"]["claims"]:
        print(f"{claim_status(claim).upper()}: {claim['claim']}")
    print(f"report: {out / 'report.md'}")
    return 0
