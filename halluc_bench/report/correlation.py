"""Spearman rank correlation between sharpness measures and resurgence across unlearned models."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

# Row field -> how the Markdown names it. Every measure is taken on the forget loss at the unlearned weights.
SHARPNESS_MEASURES = {
    "hessian_trace": "Hessian trace (Hutchinson)",
    "hutchpp_trace": "Hessian trace (Hutch++)",
    "top_eigenvalue": "top Hessian eigenvalue",
    "epsilon_sharpness": "epsilon-sharpness",
}
RESURGENCE_TARGETS = {
    "resurgence": "CHAIR_i resurgence after relearning",
    "relearn_probability_resurgence": "hallucinated-token probability resurgence after relearning",
}
MIN_POINTS = 3  # Spearman's rho of 2 points is always +-1 and has no p-value
# Up to this many models the p-value enumerates all n! pairings exactly (8! = 40320); beyond
# it scipy's t-approximation is used, which is far off for a handful of points (p = 0 at rho = 1, n = 3).
EXACT_MAX_POINTS = 8
PERMUTATION_BATCH = 5040  # orders scored per vectorised call, which bounds the memory of the enumeration
SIGNIFICANCE = 0.05


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rank_correlation(first: np.ndarray, second: np.ndarray, axis: int) -> np.ndarray:
    """Pearson correlation of rank vectors along ``axis``, which is Spearman's rho of the original values."""
    first = first - first.mean(axis=axis, keepdims=True)
    second = second - second.mean(axis=axis, keepdims=True)
    return (first * second).sum(axis=axis) / np.sqrt((first**2).sum(axis=axis) * (second**2).sum(axis=axis))


def exact_permutation_p_value(xs: list[float], ys: list[float]) -> float:
    """Return the two-sided p-value of Spearman's rho over all n! orders of ``xs`` against fixed ``ys``.

    Computed by ``scipy.stats.permutation_test``. Only ``xs`` is permuted: passing both
    samples would enumerate (n!)^2 pairs.
    """
    fixed = stats.rankdata(ys)
    result = stats.permutation_test(
        (stats.rankdata(xs),), lambda ranks, axis: _rank_correlation(ranks, fixed, axis), permutation_type="pairings",
        n_resamples=math.inf, alternative="two-sided", vectorized=True, batch=PERMUTATION_BATCH,
    )
    return float(result.pvalue)


def spearman(xs: list[float], ys: list[float]) -> tuple[float | None, float | None, str]:
    """Return (rho, two-sided p-value, how p was computed), or (None, None, why not computed).

    rho comes from ``scipy.stats.spearmanr``. The p-value is exact by enumeration for at most
    ``EXACT_MAX_POINTS`` points, else scipy's t-approximation.
    """
    if len(xs) < MIN_POINTS:
        return None, None, f"fewer than {MIN_POINTS} models"
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None, None, "one of the two variables is constant"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(xs, ys)
    rho = float(result.statistic)
    if not math.isfinite(rho):
        return None, None, "scipy returned no finite correlation"
    if len(xs) <= EXACT_MAX_POINTS:
        return rho, exact_permutation_p_value(xs, ys), "exact permutation p-value"
    return rho, float(result.pvalue), "t-approximation p-value"


def correlation_statement(entry: dict) -> str:
    """Return one sentence that states what a correlation entry measured and how it came out."""
    subject = (f"Across {entry['n']} unlearned models ({entry['population']}), the Spearman rank correlation "
               f"between the {entry['measure_name']} of the forget loss and the {entry['target_name']}")
    if entry["rho"] is None:
        return f"{subject} was not computed: {entry['note']}."
    rho, p_value = entry["rho"], entry["p_value"]
    if rho > 0:
        direction = "models with sharper forget losses regained more hallucination"
    elif rho < 0:
        direction = "models with sharper forget losses regained less hallucination"
    else:
        direction = "the ranks show no monotone relation"
    significance = "significant" if p_value < SIGNIFICANCE else "not significant"
    return (f"{subject} is rho = {rho:+.3f} (two-sided {entry['note']} {p_value:.3g}, {significance} at the "
            f"{SIGNIFICANCE:.0%} level): {direction}.")


def sharpness_correlations(rows: list[dict], population: str) -> list[dict]:
    """Correlate every sharpness measure with every resurgence target over ``rows``.

    ``rows`` are the unlearned models to include (the caller leaves out the base model and
    collapsed runs). A model enters a pair only when both values are finite; ``n`` counts them.
    ``population`` describes the rows in the statement, e.g. "3 methods x 1 seed".
    """
    entries = []
    seeds = sorted({row["seed"] for row in rows})
    for measure, measure_name in SHARPNESS_MEASURES.items():
        for target, target_name in RESURGENCE_TARGETS.items():
            pairs = [(row[measure], row[target], row["label"], row["seed"]) for row in rows
                     if _finite(row.get(measure)) and _finite(row.get(target))]
            rho, p_value, note = spearman([pair[0] for pair in pairs], [pair[1] for pair in pairs])
            entry = {
                "measure": measure, "measure_name": measure_name, "target": target, "target_name": target_name,
                "n": len(pairs), "rho": rho, "p_value": p_value, "note": note, "population": population,
                "models": [pair[2] for pair in pairs],
            }
            entry["rho_by_seed"] = rho_by_seed(seeds, [(pair[3], pair[0], pair[1]) for pair in pairs])
            entry["statement"] = correlation_statement(entry)
            entries.append(entry)
    return entries


def rho_by_seed(seeds: list[int], points: list[tuple[int, float, float]]) -> dict[int, float | None]:
    """Return seed -> Spearman's rho over that seed's (seed, x, y) ``points`` (None when undefined).

    The models of one seed share its mined probe batch. A pooled correlation therefore mixes
    the differences between seeds with those between methods, and the per-seed rho shows only
    the latter.
    """
    rhos: dict[int, float | None] = {}
    for seed in seeds:
        own = [(x, y) for point_seed, x, y in points if point_seed == seed]
        rhos[seed] = spearman([x for x, _ in own], [y for _, y in own])[0]
    return rhos
