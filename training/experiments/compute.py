"""Compute-slowdown ratios, kept inside the data: the unfiltered (nomask) runs of several sizes and
token budgets give a law ``ln L = a + b ln C`` (C = 6 N D); a filtered run's ratio is the baseline
compute that reaches its loss on that law, over its own compute.

The law is only trusted over the compute range its runs cover. A loss the law reaches inside that
range gives a ratio; a loss higher than the law's at the smallest baseline compute gives only a
bound, "< C_min / C", and a loss lower than at the largest "> C_max / C". An interval comes from a
paired bootstrap over evaluation passages: every run was scored on the same passages, so each
replicate resamples passage indices once, recomputes every run's mean loss, refits the law and
recomputes each ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A ratio is (value, relation): "=" interpolated inside the baseline range; "<" or ">" a bound at
# the range's edge (the true ratio is below or above ``value``).
Ratio = tuple[float, str]
MIN_BASELINE_SIZES = 3
MIN_BASELINE_BUDGETS = 2


@dataclass(frozen=True)
class ComputeLaw:
    """``ln L = a + b ln C`` fitted on baseline runs whose compute spans ``[c_min, c_max]``."""

    a: float
    b: float
    c_min: float
    c_max: float

    def loss_at(self, compute: float) -> float:
        return math.exp(self.a + self.b * math.log(compute))


def fit_compute_law(compute: list[float], loss: list[float]) -> ComputeLaw | None:
    """Least-squares fit on (compute, loss) pairs; None with fewer than two distinct compute values
    or a loss that does not fall with compute (b >= 0: no compute matches a loss)."""
    if len(set(compute)) < 2:
        return None
    b, a = np.polyfit(np.log(compute), np.log(loss), 1)
    if not b < 0:
        return None
    return ComputeLaw(float(a), float(b), float(min(compute)), float(max(compute)))


def compute_ratio(law: ComputeLaw, loss: float, compute: float) -> Ratio:
    """C_baseline / C for a run of ``compute`` FLOPs reaching ``loss``: interpolated where the law
    reaches ``loss`` inside its range, else a bound at the range's edge. Below 1 the run looks like
    an unfiltered run with less compute (the filtered domain's slowdown is 1 / ratio)."""
    log_matched = (math.log(loss) - law.a) / law.b  # in log space: far losses overflow exp
    if log_matched < math.log(law.c_min):
        return law.c_min / compute, "<"
    if log_matched > math.log(law.c_max):
        return law.c_max / compute, ">"
    return math.exp(log_matched - math.log(compute)), "="


def misfit_factor(max_abs_log_residual: float, slope: float) -> float:
    """The compute factor that the law's largest residual amounts to (ln L moves by |b| per e-fold of
    compute): the unfiltered runs' own ratios scatter this far around 1x, which the bootstrap
    interval (passage sampling only) does not show."""
    return math.exp(max_abs_log_residual / abs(slope))


def format_ratio(ratio: Ratio | None) -> str:
    """``0.25`` reads "1/4x", ``30`` reads "30x"; bounds keep their relation: "< 1/30x"."""
    if ratio is None:
        return "n/a"
    value, relation = ratio
    text = f"{value:.3g}x" if value >= 1 else f"1/{1 / value:.3g}x"
    return text if relation == "=" else f"{relation} {text}"


def baseline_span(baselines: list[dict]) -> tuple[int, int]:
    """(distinct sizes, distinct token budgets) of the baseline runs."""
    return len({r["size"] for r in baselines}), len({r["token_budget"] for r in baselines})


def run_loss(passage_losses: np.ndarray, index: np.ndarray | None = None) -> float:
    """Mean nats per token over passages given as rows (sum of nats, tokens), optionally resampled."""
    rows = passage_losses if index is None else passage_losses[index]
    return float(rows[:, 0].sum() / rows[:, 1].sum())


def bootstrap_ratios(baselines: list[tuple[float, np.ndarray]], runs: list[tuple[float, np.ndarray]],
                     replicates: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[tuple[Ratio, Ratio] | None]:
    """A (1 - alpha) percentile interval of each run's ratio: ``baselines`` and ``runs`` are
    (compute, passage losses [P, 2]) on the same P passages. Each end is a bound when more than
    alpha / 2 of the replicates fell beyond the baseline range on that side; None for a run whose
    replicates never had a law (fewer than two baseline computes, or loss rising with compute)."""
    rng = np.random.default_rng(seed)
    n_passages = baselines[0][1].shape[0]
    b_compute = [c for c, _ in baselines]
    values: list[list[Ratio]] = [[] for _ in runs]
    for _ in range(replicates):
        index = rng.integers(0, n_passages, n_passages)
        law = fit_compute_law(b_compute, [run_loss(p, index) for _, p in baselines])
        if law is None:
            continue
        for out, (compute, passages) in zip(values, runs):
            out.append(compute_ratio(law, run_loss(passages, index), compute))
    return [percentile_interval(v, alpha) if v else None for v in values]


def percentile_interval(ratios: list[Ratio], alpha: float) -> tuple[Ratio, Ratio]:
    """Percentiles alpha/2 and 1 - alpha/2 of the log ratios. An end that lands on replicates which
    were bounds is itself a bound: "<" when it sits on lower-edge replicates (the true percentile is
    at or below the edge), ">" on upper-edge ones."""
    logs = np.log([v for v, _ in ratios])
    quantiles = (alpha / 2, 1 - alpha / 2)
    ends = np.quantile(logs, quantiles)
    below = sum(rel == "<" for _, rel in ratios) / len(ratios)
    above = sum(rel == ">" for _, rel in ratios) / len(ratios)
    relations = ["<" if below > q else ">" if above > 1 - q else "=" for q in quantiles]
    return (float(math.exp(ends[0])), relations[0]), (float(math.exp(ends[1])), relations[1])


def format_interval(interval: tuple[Ratio, Ratio] | None) -> str:
    """"[1/40x, 1/12x]"; an end at a bound reads "< 1/30x" or "> 30x"; both ends at one bound
    read as that bound alone."""
    if interval is None:
        return "n/a"
    low, high = interval
    if low[1] == high[1] != "=":
        return format_ratio(low if low[1] == "<" else high)
    return f"[{format_ratio(low)}, {format_ratio(high)}]"
