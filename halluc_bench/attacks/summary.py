"""Summaries of an attack: how much of the erased hallucination comes back, and how fast.

All three take a hallucination score h (any score where higher means more hallucination, e.g.
:func:`hallucination_probability` or CHAIR_i) of the base model, of the unlearned model and
of attacked models:

- resurgence ratio r = (h_attacked − h_unlearned) / (h_base − h_unlearned): 0 when the attack
  changes nothing, 1 when it restores the base model's hallucination, possibly negative or
  above 1. It is None when |h_base − h_unlearned| is at most ``min_gap`` (nothing was erased).
- area under the resurgence curve over the budget normalised to [0, 1] (budget / max budget),
  by the trapezoid rule. Budget 0 has r = 0 by definition and is added when absent.
- half-return budget: the smallest budget at which r reaches 0.5, linearly interpolated
  between the two budgets around the crossing; None if r never reaches 0.5.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from halluc_bench.models.vlm import VisionLanguageModel, token_log_probs
from halluc_bench.probes.hvp import evaluation_mode
from halluc_bench.unlearning.data import SpanExample, UnlearningData, forget_batch

logger = logging.getLogger(__name__)

MIN_GAP = 1e-6  # a smaller base-to-unlearned gap means nothing measurable was erased
HALF = 0.5


def resurgence_ratio(base: float, unlearned: float, attacked: float, min_gap: float = MIN_GAP) -> float | None:
    """Return (attacked − unlearned) / (base − unlearned), or None when the denominator is at most ``min_gap``."""
    gap = base - unlearned
    if abs(gap) <= min_gap:
        return None
    return (attacked - unlearned) / gap


def _curve(budgets: Sequence[float], ratios: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(budgets) != len(ratios):
        raise ValueError(f"got {len(budgets)} budgets for {len(ratios)} ratios")
    if not budgets:
        raise ValueError("the resurgence curve is empty; pass at least one budget")
    if any(budget < 0 for budget in budgets) or list(budgets) != sorted(set(budgets)):
        raise ValueError(f"budgets must be non-negative, distinct and increasing, got {list(budgets)}")
    points = list(zip(budgets, ratios))
    if points[0][0] != 0:
        points.insert(0, (0.0, 0.0))
    return [float(b) for b, _ in points], [float(r) for _, r in points]


def resurgence_area(budgets: Sequence[float], ratios: Sequence[float]) -> float:
    """Return the trapezoid area under the resurgence ratio over budget / max(budget) in [0, 1]."""
    xs, ys = _curve(budgets, ratios)
    if xs[-1] == 0:
        raise ValueError("every budget is 0; the normalised budget axis is undefined")
    return sum((xs[i + 1] - xs[i]) / xs[-1] * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def half_return_budget(budgets: Sequence[float], ratios: Sequence[float]) -> float | None:
    """Return the first budget at which the ratio reaches 0.5 (linear interpolation), or None."""
    xs, ys = _curve(budgets, ratios)
    if ys[0] >= HALF:
        return xs[0]
    for i in range(1, len(xs)):
        if ys[i] >= HALF:
            return xs[i - 1] + (HALF - ys[i - 1]) / (ys[i] - ys[i - 1]) * (xs[i] - xs[i - 1])
    return None


@dataclass
class ResurgenceSummary:
    """A resurgence curve and its two summaries; ratios are None where undefined."""

    budgets: list[float]
    scores: list[float]  # the attacked models' hallucination scores
    ratios: list[float | None]
    area: float | None
    half_return_budget: float | None
    base: float
    unlearned: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize_resurgence(
    budgets: Sequence[float], scores: Sequence[float], base: float, unlearned: float, min_gap: float = MIN_GAP
) -> ResurgenceSummary:
    """Compute the ratio at each budget, the area and the half-return budget of one attack curve."""
    ratios = [resurgence_ratio(base, unlearned, score, min_gap) for score in scores]
    if any(ratio is None for ratio in ratios):
        logger.warning("base (%g) and unlearned (%g) scores differ by at most %g: resurgence is undefined",
                       base, unlearned, min_gap)
        area = half = None
    else:
        area = resurgence_area(budgets, ratios)
        half = half_return_budget(budgets, ratios)
    return ResurgenceSummary(list(budgets), list(scores), ratios, area, half, base, unlearned)


@torch.no_grad()
def hallucination_probability(
    vlm: VisionLanguageModel, data: UnlearningData, examples: Sequence[SpanExample], batch_size: int = 32
) -> float:
    """Return the mean probability of the hallucinated-mention tokens of ``examples``.

    Teacher-forced: each forget token's probability given the image, the prompt and the caption
    before it, averaged over all forget tokens of all examples (a token mean, not an example
    mean). Use the same fixed examples for every model compared.
    """
    if not examples:
        raise ValueError("no examples given; pass the fixed probe set of hallucinated captions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total, count = 0.0, 0
    with evaluation_mode(vlm.model):
        for start in range(0, len(examples), batch_size):
            batch = forget_batch(vlm, data, examples[start : start + batch_size])
            batch = batch.to(vlm.device, dtype=vlm.model.dtype)
            log_probs, mask = token_log_probs(vlm.model(**batch.model_inputs()).logits, batch.labels)
            total += float(log_probs.exp()[mask].sum())
            count += int(mask.sum())
    if count == 0:
        raise ValueError("the examples have no hallucinated-mention tokens; give examples with forget spans")
    return total / count
