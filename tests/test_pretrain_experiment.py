"""The experiment grid: pure analysis functions and the `smoke` config end to end."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokfilter.cli import main as cli_main
from tokfilter.errors import TokfilterError
from tokfilter.training.experiments.claims import (
    claim_multiple_choice, claim_token_beats_document, fit_power_law, interpolate_at, loss_matched_compute_ratio,
)
from tokfilter.training.experiments.config import ExperimentConfig, config_path
from tokfilter.training.experiments.grid import claim_work_dir, threshold_for_fraction
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


@settings(max_examples=100, deadline=None)
@given(a=st.floats(-2, 3), b=st.floats(-0.3, -0.01), scale=st.floats(0.1, 10))
def test_power_law_fit_and_loss_matched_ratio_recover_known_law(a, b, scale):
    compute = [1e9, 1e10, 1e11]
    loss = [math.exp(a + b * math.log(c)) for c in compute]
    fit = fit_power_law(compute, loss)
    assert fit[0] == pytest.approx(a, abs=1e-6) and fit[1] == pytest.approx(b, abs=1e-8)
    # a run whose loss the baseline reaches with `scale` times its compute has ratio `scale`
    c = 3e10
    target = math.exp(a + b * math.log(c * scale))
    assert loss_matched_compute_ratio(target, c, fit) == pytest.approx(scale, rel=1e-5)
    assert fit_power_law([1e9, 1e9], [3.0, 3.1]) is None


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
    for name in ("smoke", "small", "reduced", "ablation_ratio", "ablation_label_noise"):
        ExperimentConfig.load(config_path(name))


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tiny_corpus_dir, tiny_models_dir, tmp_path):
    config = ExperimentConfig.load(config_path("smoke"))
    out = tmp_path / "report"
    results = run_experiment(config, tiny_corpus_dir, tiny_models_dir, tmp_path / "tokenizer.json", tmp_path / "work",
                             out, threads=1)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "work" / "shards" / "manifest.json").is_file()
    for name in ("report.md", "results.json", "frontier.png", "compute.png", "multiple_choice.png", "adversarial.png"):
        assert (out / name).stat().st_size > 0
    runs = results["runs"]
    # per size: nomask + 2 document + 2 x (mask, remove) token thresholds
    assert len(runs) == 2 * 7
    for r in runs:
        assert set(r["losses"]) == {"medicine", "biology", "general"}
        assert r["train"]["unmasked_tokens"] >= config.token_budget
        if r["run_type"] in ("mask", "remove"):
            assert r["train"]["total_tokens"] > r["train"]["unmasked_tokens"]
    fractions = sorted(r["flagged_fraction"] for r in runs if r["run_type"] == "mask")
    assert fractions[0] >= 0.25 and fractions[-1] >= 0.5
    assert all("adversarial" in r for r in runs if r["primary"] and r["run_type"] != "nomask")
    assert results["analysis"]["fits"]["medicine"] is not None  # two sizes: the compute law is fitted
    report = (out / "report.md").read_text()
    assert report.count("reproduced at this scale") + report.count("not testable at this scale") == 4  # a status per claim
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
                     "--max-passages", "10", "--max-questions", "5"]) == 0
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert set(evaluated) == {"losses", "multiple_choice", "adversarial"}
    assert evaluated["adversarial"]["curve"][0][0] == 0
    assert cli_main(["evaluate", str(run_dir), "--adversarial-tokens", "512"]) == 2  # no --reference


def mc_run(size: str, run_type: str, medicine: float, biology: float, questions: int = 200) -> dict:
    mc = {d: {"accuracy": a, "chance": 0.25, "questions": questions} for d, a in (("medicine", medicine), ("biology", biology))}
    return {"size": size, "run_type": run_type, "primary": True, "multiple_choice": mc}


def test_multiple_choice_claim_is_not_testable_when_the_baseline_is_at_chance():
    at_chance = [mc_run("1m", "nomask", 0.215, 0.26), mc_run("1m", "mask", 0.215, 0.265)]
    claim = claim_multiple_choice(at_chance, ["1m"])
    assert claim["testable"] is False and claim["reproduced"] is False
    assert "not testable" in claim["evidence"][0]


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
