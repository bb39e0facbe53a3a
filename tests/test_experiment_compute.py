"""Compute-slowdown ratios: the law, interpolation inside the baseline range, bounds outside, the bootstrap."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from tokfilter.training.experiments.compute import (
    ComputeLaw, bootstrap_ratios, compute_ratio, fit_compute_law, format_interval, format_ratio, misfit_factor, percentile_interval,
)

laws = st.builds(ComputeLaw, a=st.floats(0.5, 3), b=st.floats(-0.5, -0.005), c_min=st.floats(1e9, 1e11),
                 c_max=st.just(0.0)).map(lambda law: ComputeLaw(law.a, law.b, law.c_min, law.c_min * 300))


@settings(max_examples=100, deadline=None)
@given(a=st.floats(-2, 3), b=st.floats(-0.3, -0.01), scale=st.floats(0.05, 20))
def test_fit_recovers_a_known_law_and_inverts_it_inside_the_range(a, b, scale):
    compute = [1e9, 1e10, 1e11, 1e12]
    law = fit_compute_law(compute, [math.exp(a + b * math.log(c)) for c in compute])
    assert law.a == pytest.approx(a, abs=1e-6) and law.b == pytest.approx(b, abs=1e-8)
    assert (law.c_min, law.c_max) == (1e9, 1e12)
    c = 3e10  # a run whose loss the baseline reaches with `scale` times its compute (inside the range)
    value, relation = compute_ratio(law, law.loss_at(c * scale), c)
    assert relation == "=" and value == pytest.approx(scale, rel=1e-5)


def test_no_law_without_two_computes_or_with_loss_rising():
    assert fit_compute_law([1e9, 1e9], [3.0, 3.1]) is None
    assert fit_compute_law([1e9, 1e10], [3.0, 3.1]) is None


@settings(max_examples=200, deadline=None)
@given(law=laws, losses=st.lists(st.floats(0.5, 30), min_size=2, max_size=2), compute=st.floats(1e8, 1e14))
def test_ratio_is_monotone_in_loss(law, losses, compute):
    low, high = sorted(losses)
    assert compute_ratio(law, low, compute)[0] >= compute_ratio(law, high, compute)[0] * (1 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(law=laws, excess=st.floats(1e-3, 5), compute=st.floats(1e8, 1e14))
def test_a_loss_outside_the_baseline_range_gives_the_edge_as_a_bound(law, excess, compute):
    above = law.loss_at(law.c_min) * math.exp(excess)  # worse than the smallest baseline
    assert compute_ratio(law, above, compute) == (law.c_min / compute, "<")
    below = law.loss_at(law.c_max) * math.exp(-excess)  # better than the largest baseline
    assert compute_ratio(law, below, compute) == (law.c_max / compute, ">")
    inside = law.loss_at(math.sqrt(law.c_min * law.c_max))
    value, relation = compute_ratio(law, inside, compute)
    assert relation == "=" and law.c_min / compute <= value <= law.c_max / compute


def test_formats():
    assert format_ratio((30.0, ">")) == "> 30x"
    assert format_ratio((1 / 30, "<")) == "< 1/30x"
    assert format_ratio((0.25, "=")) == "1/4x"
    assert format_ratio(None) == "n/a"
    assert format_interval(((0.1, "="), (0.5, "="))) == "[1/10x, 1/2x]"
    assert format_interval(((0.02, "<"), (0.5, "="))) == "[< 1/50x, 1/2x]"
    assert format_interval(((0.02, "<"), (0.02, "<"))) == "< 1/50x"


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.tuples(st.floats(1e-3, 1e3), st.sampled_from("=<>")), min_size=1, max_size=50))
def test_percentile_interval_is_ordered_and_marks_bounds(values):
    (low, low_rel), (high, high_rel) = percentile_interval(values, 0.05)
    assert low <= high * (1 + 1e-9)
    if all(rel == "<" for _, rel in values):
        assert low_rel == high_rel == "<"
    if not any(rel == "<" for _, rel in values):
        assert low_rel != "<" and high_rel != "<"


def passages(rng: np.random.Generator, mean_loss: float, n: int, noise: float) -> np.ndarray:
    tokens = rng.integers(20, 60, n).astype(float)
    return np.stack([tokens * (mean_loss + noise * rng.standard_normal(n)), tokens], axis=1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), scale=st.floats(0.05, 0.5))
def test_bootstrap_interval_brackets_the_ratio_and_shrinks_to_it_without_noise(seed, scale):
    rng = np.random.default_rng(seed)
    law = ComputeLaw(2.0, -0.05, 1e9, 1e12)
    base_c = [1e9, 1e10, 1e11, 1e12]
    run_c = 1e11
    loss = law.loss_at(run_c * scale)
    exact = bootstrap_ratios([(c, passages(rng, law.loss_at(c), 50, 0.0)) for c in base_c],
                             [(run_c, passages(rng, loss, 50, 0.0))], replicates=50, seed=seed)[0]
    assert exact[0][0] == pytest.approx(scale, rel=1e-6) and exact[1][0] == pytest.approx(scale, rel=1e-6)
    noisy = bootstrap_ratios([(c, passages(rng, law.loss_at(c), 200, 0.3)) for c in base_c],
                             [(run_c, passages(rng, loss, 200, 0.3))], replicates=200, seed=seed)[0]
    (low, _), (high, _) = noisy
    assume(low < high)
    assert low < scale * 3 and high > scale / 3  # a loose bracket: the noise is small against the law


def test_bootstrap_reports_a_run_beyond_the_baselines_as_a_bound():
    rng = np.random.default_rng(0)
    law = ComputeLaw(2.0, -0.05, 1e9, 1e12)
    base = [(c, passages(rng, law.loss_at(c), 100, 0.1)) for c in (1e9, 1e10, 1e11, 1e12)]
    far = (1e11, passages(rng, law.loss_at(1e9) * 1.5, 100, 0.1))  # far worse than the smallest baseline
    (low, low_rel), (high, high_rel) = bootstrap_ratios(base, [far], replicates=100)[0]
    assert low_rel == high_rel == "<" and low == pytest.approx(1e9 / 1e11) and high == pytest.approx(1e9 / 1e11)
    rising = [(c, passages(rng, loss, 100, 0.0)) for c, loss in ((1e9, 3.0), (1e10, 3.3))]
    assert bootstrap_ratios(rising, [far], replicates=10) == [None]  # no law: loss does not fall with compute


@settings(max_examples=100, deadline=None)
@given(law=laws, residual=st.floats(0.001, 0.05))
def test_the_misfit_factor_is_the_ratio_an_unfiltered_run_that_far_off_the_law_reads(law, residual):
    c = math.sqrt(law.c_min * law.c_max)  # mid-range, so that a factor up to ~17x stays inside
    factor = misfit_factor(residual, law.b)
    assume(factor < 17)
    value, relation = compute_ratio(law, law.loss_at(c) * math.exp(residual), c)  # loss above the law: looks like less compute
    assert relation == "=" and value == pytest.approx(1 / factor, rel=1e-6)
