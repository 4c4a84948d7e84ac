"""Rules of the full audit that read only stored records: learning-rate choice and collapse.

The audit applies them while it runs and the leaderboard applies them again to the stored
records, so each rule is a plain function of records that can be checked on hand-made ones.
"""

from __future__ import annotations

import logging
import math

from halluc_bench.config import FullProfileSettings
from halluc_bench.unlearning.base import StepLog
from halluc_bench.unlearning.selection import (
    CollapseCriteria,
    GridTrial,
    NoValidLearningRateError,
    caption_collapse,
    select_learning_rate,
    training_collapse,
)

logger = logging.getLogger(__name__)


def selection_rule(settings: FullProfileSettings) -> str:
    """Return the learning-rate selection rule as one sentence."""
    return (
        "lowest validation CHAIR_i among the learning rates whose run did not collapse and whose validation "
        f"recall is at least {settings.min_recall_share:.0%} of the base model's; ties go to the smaller rate. "
        "When no rate qualifies, the non-collapsed rate with the highest recall is used (else the smallest rate) "
        "and the fallback is recorded"
    )


def collapse_rule(settings: FullProfileSettings) -> str:
    """Return the collapse rule as one sentence."""
    return (
        "a model counts as collapsed when its unlearning stopped on a non-finite loss, its logged retain loss rose "
        f"by more than {settings.collapse_retain_rise:g} (nats) from the first to the last 5 steps, its retain NLL "
        f"on the fixed retain probe set exceeds the base model's by more than {settings.collapse_retain_rise:g} (nats), "
        f"its CHAIR recall is below {settings.collapse_recall_share:.0%} of the base model's (validation split "
        "for the grid, evaluation split for the chosen model), or more than 20% of its captions are empty, "
        "shorter than 2 words or one repeated word"
    )


def format_rate(rate: float) -> str:
    """Return a learning rate as it appears in record keys and folder names, e.g. ``3e-05``."""
    return f"{rate:.4g}"


def _recall_reason(recall: float, base_recall: float, share: float, where: str) -> str | None:
    floor = share * base_recall
    if not recall >= floor:
        return f"{where} recall {recall:.4f} below {share:.0%} of the base model's {base_recall:.4f}"
    return None


def training_reasons(unlearn_record: dict, settings: FullProfileSettings) -> list[str]:
    """Return why an unlearning record shows a collapse: a stop on a non-finite loss or a rising retain loss."""
    reasons = []
    if unlearn_record.get("stopped"):
        reasons.append(f"stopped: {unlearn_record['stopped']}")
    log = [StepLog(**row) for row in unlearn_record.get("log", [])]
    rise = training_collapse(log, CollapseCriteria(max_retain_loss_increase=settings.collapse_retain_rise))
    if rise is not None:
        reasons.append(rise)
    return reasons


def retain_nll_reason(retain_nll: float, base_retain_nll: float, settings: FullProfileSettings) -> str | None:
    """Return why a retain NLL counts as collapse (too far above the base model's), or None."""
    if not math.isfinite(retain_nll):
        return f"retain NLL is {retain_nll}"
    if retain_nll - base_retain_nll > settings.collapse_retain_rise:
        return (f"retain NLL {retain_nll:.3f} exceeds the base model's {base_retain_nll:.3f} by more than "
                f"{settings.collapse_retain_rise:g} (nats)")
    return None


def grid_trial(
    learning_rate: float,
    unlearn_record: dict,
    validation_record: dict,
    base_validation: dict,
    settings: FullProfileSettings,
) -> GridTrial:
    """Return one grid point as a :class:`GridTrial` (hallucination = CHAIR_i, utility = recall) with its collapse reason.

    ``validation_record`` and ``base_validation`` hold ``chair`` (with ``captions``) and ``retain_nll``.
    """
    chair, base_chair = validation_record["chair"], base_validation["chair"]
    reasons = training_reasons(unlearn_record, settings)
    retain = retain_nll_reason(validation_record["retain_nll"], base_validation["retain_nll"], settings)
    recall = _recall_reason(chair["recall"], base_chair["recall"], settings.collapse_recall_share, "validation")
    captions = caption_collapse([item["caption"] for item in chair.get("captions", [])])
    reasons += [reason for reason in (retain, recall, captions) if reason is not None]
    return GridTrial(learning_rate, chair["chair_i"], chair["recall"], "; ".join(reasons) or None)


def choose_learning_rate(trials: list[GridTrial], base_recall: float, settings: FullProfileSettings) -> tuple[GridTrial, str | None]:
    """Apply :func:`selection_rule`; return the chosen trial and, for a fallback, why no rate qualified."""
    try:
        return select_learning_rate(trials, base_recall, max_utility_drop=1.0 - settings.min_recall_share), None
    except NoValidLearningRateError as error:
        healthy = [trial for trial in trials if trial.collapse is None and math.isfinite(trial.utility)]
        if healthy:
            chosen = max(healthy, key=lambda trial: (trial.utility, -trial.learning_rate))
        else:
            chosen = min(trials, key=lambda trial: trial.learning_rate)
        logger.warning("%s; falling back to learning rate %g", error, chosen.learning_rate)
        return chosen, str(error)


def selection_record(
    rates: list[float],
    grid_records: list[tuple[dict, dict]],
    base_validation: dict,
    settings: FullProfileSettings,
) -> dict:
    """Build the stored selection: every grid point's scores and collapse reason, the rule and the chosen rate.

    ``grid_records`` contains the (unlearn, validation) record pair of each rate in ``rates``.
    """
    trials = [grid_trial(rate, unlearn, validation, base_validation, settings)
              for rate, (unlearn, validation) in zip(rates, grid_records)]
    base_recall = base_validation["chair"]["recall"]
    chosen, fallback = choose_learning_rate(trials, base_recall, settings)
    grid = []
    for trial, (_, validation) in zip(trials, grid_records):
        chair = validation["chair"]
        grid.append({"learning_rate": trial.learning_rate, "chair_i": chair["chair_i"], "chair_s": chair["chair_s"],
                     "recall": chair["recall"], "retain_nll": validation["retain_nll"], "collapse": trial.collapse})
    return {
        "rule": selection_rule(settings),
        "base_recall": base_recall,
        "recall_floor": settings.min_recall_share * base_recall,
        "grid": grid,
        "learning_rate": chosen.learning_rate,
        "fallback": fallback,
        "collapse": chosen.collapse,
    }


def model_collapse(selection: dict, evaluation: dict, base_evaluation: dict, settings: FullProfileSettings) -> list[str]:
    """Return every collapse reason of a chosen model: its grid point's, then its evaluation-split recall and captions."""
    reasons = [selection["collapse"]] if selection.get("collapse") else []
    chair, base_chair = evaluation["chair"], base_evaluation["chair"]
    recall = _recall_reason(chair["recall"], base_chair["recall"], settings.collapse_recall_share, "evaluation")
    captions = caption_collapse([item["caption"] for item in chair.get("captions", [])])
    return reasons + [reason for reason in (recall, captions) if reason is not None]
