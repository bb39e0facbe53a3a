"""The experiment grid: pure analysis functions and the `smoke` config end to end."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tokfilter.cli import main as cli_main
from tokfilter.errors import TokfilterError
from tokfilter.training.experiments.claims import claim_multiple_choice, claim_token_beats_document, interpolate_at
from tokfilter.training.experiments.config import ExperimentConfig, config_path
from tokfilter.training.experiments.grid import claim_work_dir, plan_runs, same_run, threshold_for_fraction
from tokfilter.training.pretrain.model import GPT, config_for_size
from tokfilter.training.pretrain.train import PretrainConfig, train
from tokfilter.training.experiments.run import run_experiment


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1, width=16), min_size=1, max_size=60),
    data=st.data(),
    fraction=st.floats(0.01, 0.99),
)
def test_quantile_threshold_flags_at_least_the_fraction_and_is_the_highest_such(scores, data, fraction):
    scores = np.asarray(scores, dtype=np.float32)
    weights = np.asarray(data.draw(st.lists(st.integers(1, 50), min_size=len(scores), max_size=len(scores))), dtype=np.float64)
    t = threshold_for_fraction(scores, weights, fraction)
    total = weights.sum()
    assert weights[scores >= t].sum() >= fraction * total * (1 - 1e-9)
    higher = scores[scores > t]
    if len(higher):  # the next distinct score up would flag too little
        assert weights[scores >= higher.min()].sum() < fraction * total


def test_interpolation_is_none_outside_the_curve():
    assert interpolate_at([0.0, 1.0], [0.0, 2.0], 0.25) == pytest.approx(0.5)
    assert interpolate_at([1.0, 0.0], [2.0, 0.0], 0.25) == pytest.approx(0.5)
    assert interpolate_at([0.0, 1.0], [0.0, 2.0], 1.5) is None
    assert interpolate_at([], [], 0.0) is None


def frontier_run(name: str, run_type: str, forget_rise: float, retain_rise: float) -> dict:
    return {"name": name, "size": "1m", "run_type": run_type, "delta": {"medicine": forget_rise, "biology": retain_rise}}


def test_token_vs_document_interpolates_inside_and_needs_dominance_outside():
    docs = [frontier_run("d1", "document", 0.5, -0.10), frontier_run("d2", "document", 1.0, -0.10)]
    inside = frontier_run("inside", "mask", 0.75, -0.12)          # below the document line at 0.75 -> better
    beyond = frontier_run("beyond", "mask", 1.3, -0.15)           # forgets more, keeps more biology than d2
    dominated = frontier_run("dominated", "remove", 0.3, -0.05)   # forgets less, loses more biology than d1
    short = frontier_run("short", "remove", 0.3, -0.12)           # forgets less but keeps more: not comparable
    claim = claim_token_beats_document(docs + [inside, beyond, dominated, short], ["1m"])
    text = "\n".join(claim["evidence"])
    assert "inside: medicine +0.750; biology -0.120 vs document -0.100 (interpolated)" in text
    assert "beyond" in text and "token dominates" in text
    assert "dominated" in text and "document dominates" in text
    assert "neither dominates" in text
    assert claim["evidence"][-1].startswith("token better in 2/3 comparisons; 1 of 4")
    assert not claim["reproduced"]
    assert claim_token_beats_document(docs + [inside, beyond], ["1m"])["reproduced"]
    without_documents = claim_token_beats_document([inside, beyond], ["1m"])  # a grid of mask runs only
    assert not without_documents["testable"] and "no document runs; not comparable" in without_documents["evidence"][0]


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "sizes": ["tiny"], "thresholds": [0.5]}))
    with pytest.raises(TokfilterError, match="unknown key.*thresholds"):
        ExperimentConfig.load(bad)
    bad.write_text(json.dumps({"name": "x", "sizes": ["huge"]}))
    with pytest.raises(TokfilterError, match="sizes"):
        ExperimentConfig.load(bad)
    bad.write_text(json.dumps({"name": "x", "sizes": ["tiny"], "run_types": ["mask"]}))
    with pytest.raises(TokfilterError, match="nomask"):
        ExperimentConfig.load(bad)
    assert cli_main(["experiment", str(tmp_path / "missing.json")]) == 2
    assert cli_main(["experiment", "smoke", "--work", str(tmp_path / "w"), "--mcq-data", str(tmp_path / "no-mcq")]) == 2
    assert not (tmp_path / "w").exists()  # refused before building anything
    for name in ("smoke", "small", "reduced", "ablation_ratio", "ablation_label_noise", "ablation_weak_to_strong", "gpu"):
        ExperimentConfig.load(config_path(name))
    bad.write_text(json.dumps({"name": "x", "sizes": ["tiny"], "classifier_variants": [{"name": "b", "labels_from": "a"}]}))
    with pytest.raises(TokfilterError, match=r"classifier_variants\[0\]: labels_from 'a'"):
        ExperimentConfig.load(bad)
    bad.write_text(json.dumps({"name": "x", "sizes": ["tiny"], "classifier_variants": [{"name": "a", "label_noise": 0.6}]}))
    with pytest.raises(TokfilterError, match="label_noise 0.6"):
        ExperimentConfig.load(bad)


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tiny_corpus_dir, tiny_models_dir, tmp_path):
    config = ExperimentConfig.load(config_path("smoke"))
    out = tmp_path / "report"
    results = run_experiment(config, tiny_corpus_dir, tiny_models_dir, tmp_path / "tokenizer.json", tmp_path / "work",
                             out, threads=1)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "work" / "shards" / "manifest.json").is_file()
    for name in ("report.md", "results.json", "frontier.png", "compute.png", "multiple_choice.png", "adversarial.png",
                 "ablation_ratio.png", "ablation_label_noise.png", "ablation_weak_to_strong.png"):
        assert (out / name).stat().st_size > 0
    runs = results["runs"]
    # per size: nomask + 2 document + 2 x (mask, remove) token thresholds; 4 more unfiltered runs
    # (3 sizes x 2 budgets, 2 of them the grid's); a mask run per size for each of 2 classifier variants
    assert len(runs) == 2 * 7 + 4 + 2 * 2
    for r in runs:
        assert set(r["losses"]) == {"medicine", "biology", "general"}
        assert r["train"]["unmasked_tokens"] >= r["token_budget"]
        rows = np.asarray(r["passage_losses"]["medicine"])  # per passage (nats, tokens): they make up the mean
        assert rows[:, 0].sum() / rows[:, 1].sum() == pytest.approx(r["losses"]["medicine"], rel=1e-9)
        if r["run_type"] in ("mask", "remove"):
            assert r["train"]["total_tokens"] > r["train"]["unmasked_tokens"]
        value, relation = r["compute_ratio"]["medicine"]  # a ratio inside the law's range or a bound at its edge
        (low, _), (high, _) = r["compute_interval"]["medicine"]
        assert relation in "=<>" and low <= high
    assert {r["token_budget"] for r in runs if r["run_type"] == "nomask"} == {4096, 8192}
    fractions = sorted(r["flagged_fraction"] for r in runs if r["run_type"] == "mask" and r["variant"] == "main")
    assert fractions[0] >= 0.25 and fractions[-1] >= 0.5
    assert {r["variant"] for r in runs} == {"main", "noisy", "on_noisy"}
    assert all("adversarial" in r for r in runs if r["primary"] and r["run_type"] != "nomask")
    law = results["analysis"]["laws"]["medicine"]
    assert law["law"] is not None or "does not fall" in law["why"]  # 3 sizes x 2 budgets: a law unless loss rose
    assert all(set(r["multiple_choice"]) == ({"held_out", "absorbed"} if r["primary"] else set()) for r in runs)  # no real sets
    variants = results["inputs"]["variants"]
    assert set(variants) == {"main", "noisy", "on_noisy"} and all(0 <= v["metrics"]["f1"] <= 1 for v in variants.values())
    report = (out / "report.md").read_text()
    assert report.count("reproduced at this scale") + report.count("not testable at this scale") == 4  # a status per claim
    for section in ("## Compute law", "### Absorbed knowledge", "## Ablation: filtering ratio", "## Ablation: label noise",
                    "## Ablation: weak-to-strong", "skipped: no --mcq-data"):
        assert section in report
    # the report is written again from results.json alone, the same
    written = report
    for name in ("report.md", "frontier.png", "ablation_label_noise.png"):
        (out / name).unlink()
    assert cli_main(["experiment", "smoke", "--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").read_text() == written and (out / "ablation_label_noise.png").stat().st_size > 0
    assert cli_main(["experiment", "smoke", "--out", str(tmp_path / "nothing"), "--report-only"]) == 2
    # a second call reuses the finished runs
    again = run_experiment(config, tiny_corpus_dir, tiny_models_dir, tmp_path / "tokenizer.json", tmp_path / "work",
                           out, threads=1)
    assert [r["train"] for r in again["runs"]] == [r["train"] for r in runs]

    # the pretrain and evaluate commands on the same shards
    run_dir, nomask_dir = tmp_path / "cli-run", tmp_path / "work" / "runs" / "tiny-nomask"
    assert cli_main(["pretrain", "--shards", str(tmp_path / "work" / "shards"), "--tokenizer", str(tmp_path / "tokenizer.json"),
                     "--out", str(run_dir), "--size", "tiny", "--run-type", "remove", "--threshold", "0.5",
                     "--seq-len", "64", "--batch-size", "4", "--token-budget", "1000", "--device", "cpu"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["unmasked_tokens"] >= 1000
    assert cli_main(["evaluate", str(run_dir), "--corpus", str(tiny_corpus_dir), "--tokenizer", str(tmp_path / "tokenizer.json"),
                     "--reference", str(nomask_dir), "--adversarial-tokens", "512", "--adversarial-eval-every", "256",
                     "--max-passages", "10", "--max-questions", "5", "--shards", str(tmp_path / "work" / "shards"),
                     "--precision", "fp32"]) == 0
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert set(evaluated) == {"precision", "losses", "multiple_choice", "adversarial"}
    assert set(evaluated["multiple_choice"]) == {"held_out", "absorbed"}
    assert evaluated["adversarial"]["curve"][0][0] == 0
    assert cli_main(["evaluate", str(run_dir), "--adversarial-tokens", "512"]) == 2  # no --reference


def mc_run(size: str, run_type: str, medicine: float, biology: float, questions: int = 200) -> dict:
    mc = {d: {"accuracy": a, "chance": 0.25, "questions": questions} for d, a in (("medicine", medicine), ("biology", biology))}
    held_out = {d: {"accuracy": 0.25, "chance": 0.25, "questions": questions} for d in ("medicine", "biology")}
    return {"size": size, "run_type": run_type, "primary": True, "multiple_choice": {"absorbed": mc, "held_out": held_out}}


def test_multiple_choice_claim_is_not_testable_when_the_baseline_is_at_chance():
    at_chance = [mc_run("1m", "nomask", 0.215, 0.26), mc_run("1m", "mask", 0.215, 0.265)]
    claim = claim_multiple_choice(at_chance, ["1m"])
    assert claim["testable"] is False and claim["reproduced"] is False
    assert "not testable" in claim["evidence"][0]


def test_multiple_choice_claim_says_why_without_absorbed_questions():
    runs = [mc_run("1m", "nomask", 0.45, 0.50), mc_run("1m", "mask", 0.27, 0.49)]
    for r in runs:
        del r["multiple_choice"]["absorbed"]["biology"]
    claim = claim_multiple_choice(runs, ["1m"])
    assert claim["testable"] is False and "no absorbed-knowledge questions for biology" in claim["evidence"][0]


def test_multiple_choice_claim_judges_a_baseline_above_chance():
    above = [mc_run("1m", "nomask", 0.45, 0.50), mc_run("1m", "mask", 0.27, 0.49), mc_run("1m", "remove", 0.30, 0.40)]
    claim = claim_multiple_choice(above, ["1m"])
    assert claim["testable"] is True and claim["reproduced"] is False  # remove lost 10 points of biology
    assert claim["evidence"][0].endswith("yes") and claim["evidence"][1].endswith("no")
    claim = claim_multiple_choice(above[:2], ["1m"])
    assert claim["reproduced"] is True


def test_a_work_dir_built_for_another_config_is_refused(tmp_path):
    config = ExperimentConfig.load(config_path("smoke"))
    claim_work_dir(config, tmp_path)
    claim_work_dir(config, tmp_path)  # same inputs: fine
    config.corpus_size = "small"
    with pytest.raises(TokfilterError, match="corpus_size 'tiny' -> 'small'"):
        claim_work_dir(config, tmp_path)


def test_a_finished_run_is_reused_across_caps_only_where_the_cap_did_not_stop_it():
    expected = {"lr": 3e-3, "token_budget": 1000, "max_seen_factor": 5.0}
    reached = {"config": {"lr": 3e-3, "token_budget": 1000}, "unmasked_tokens": 1003, "total_tokens": 1400}
    assert same_run(reached, expected)  # written before the cap existed, reached its budget within it
    assert not same_run({**reached, "total_tokens": 6000}, expected)  # the cap would have stopped it
    capped = {"config": {"lr": 3e-3, "token_budget": 1000, "max_seen_factor": 2.0}, "unmasked_tokens": 90,
              "total_tokens": 2010}
    assert not same_run(capped, expected)  # a larger cap trains it further
    assert same_run(capped, {**expected, "max_seen_factor": 2.0})
    assert not same_run(reached, {**expected, "lr": 1e-3})


@pytest.mark.slow
def test_gpu_config_plan_and_one_step_of_its_largest_size_on_cpu(tmp_path):
    """The `gpu` config is sized for one H200 (run when a device is lent); here its plan is checked
    and its largest model takes one training step of a scaled-down batch on the CPU."""
    config = ExperimentConfig.load(config_path("gpu"))
    assert config.device == "cuda" and config.precision == "auto"
    thresholds = {"token": [{"threshold": 0.79, "flagged_fraction": 0.165, "source": "card"},
                            {"threshold": 0.03, "flagged_fraction": 0.25, "source": "flags 25.00% of tokens"}],
                  "document": [{"threshold": 0.81, "flagged_fraction": 0.39, "source": "card"}]}
    runs = plan_runs(config, thresholds)
    baselines = [r for r in runs if r["run_type"] == "nomask"]
    assert len({r["size"] for r in baselines}) >= 3 and len({r["token_budget"] for r in baselines}) >= 2
    # no run repeats data: the default corpus's train split is ~4M tokens in the 4,096-token BPE (small's report)
    assert max(r["token_budget"] / (1 - r["flagged_fraction"]) for r in runs) < 4_000_000
    sizes = {r["size"] for r in runs}
    with torch.device("meta"):  # parameter counts without allocating
        params = {size: GPT(config_for_size(size, config.tokenizer_vocab_size, config.seq_len)).num_params(False) for size in sizes}
    assert max(params.values()) <= 50_000_000
    largest = max(sizes, key=params.get)
    step = PretrainConfig(out_dir=tmp_path / largest, size=largest, seq_len=config.seq_len, batch_size=1, token_budget=8,
                          lr=config.lr, device="cpu", precision="fp32", log_every=1)
    batch = torch.randint(0, config.tokenizer_vocab_size, (1, config.seq_len + 1))
    summary = train(step, config.tokenizer_vocab_size, lambda epoch: [(batch[:, :-1], batch[:, 1:], torch.ones(1, config.seq_len))])
    assert summary["steps"] == 1 and summary["params"] == params[largest] and math.isfinite(summary["final_train_loss"])
