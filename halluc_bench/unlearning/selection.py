"""Learning-rate selection on a grid, and checks that an unlearning run has not collapsed.

Unlearning objectives such as gradient ascent have no natural stopping point: a learning rate
that is too large suppresses hallucinations by destroying the model. Each method therefore
gets the learning rate from a grid that removes the most hallucination among runs that
neither collapsed nor lost more than a set share of utility.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from halluc_bench.unlearning.base import StepLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollapseCriteria:
    """Thresholds beyond which a run counts as collapsed."""

    max_retain_loss_increase: float = 1.0  # rise of the retain term, last steps vs first steps, in its own units (nats for NLL)
    window: int = 5  # steps averaged at each end of the log
    max_repeated_word_share: float = 0.5  # a caption whose most frequent word is over this share of its words is degenerate
    min_caption_words: int = 2  # a shorter caption is degenerate
    max_degenerate_caption_share: float = 0.2  # more degenerate captions than this share means collapse

    def __post_init__(self) -> None:
        for name in ("max_retain_loss_increase", "max_repeated_word_share", "max_degenerate_caption_share"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"CollapseCriteria.{name} must be a positive finite number, got {value!r}")
        for name in ("window", "min_caption_words"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"CollapseCriteria.{name} must be an integer >= 1, got {value!r}")


def training_collapse(log: Sequence[StepLog], criteria: CollapseCriteria = CollapseCriteria()) -> str | None:
    """Return why the training log shows a collapse, or None.

    A collapse is a non-finite logged value or a retain term that rose by more than
    ``criteria.max_retain_loss_increase`` from the first to the last ``window`` steps.
    """
    if not log:
        return None
    for row in log:
        values = (row.forget_loss, row.retain_loss, row.total_loss)
        if not all(math.isfinite(value) for value in values):
            return f"non-finite loss at step {row.step}"
    width = min(criteria.window, len(log))
    first = sum(row.retain_loss for row in log[:width]) / width
    last = sum(row.retain_loss for row in log[-width:]) / width
    if last - first > criteria.max_retain_loss_increase:
        return f"retain loss rose from {first:.3f} to {last:.3f}"
    return None


def degenerate_caption(caption: str, criteria: CollapseCriteria = CollapseCriteria()) -> bool:
    """Return True when a caption is empty, too short, or dominated by one repeated word."""
    words = caption.lower().split()
    if len(words) < criteria.min_caption_words:
        return True
    most_common = Counter(words).most_common(1)[0][1]
    return most_common / len(words) > criteria.max_repeated_word_share


def caption_collapse(captions: Sequence[str], criteria: CollapseCriteria = CollapseCriteria()) -> str | None:
    """Return why generated captions show a collapse, or None."""
    if not captions:
        return None
    bad = sum(degenerate_caption(caption, criteria) for caption in captions)
    share = bad / len(captions)
    if share > criteria.max_degenerate_caption_share:
        return f"{bad} of {len(captions)} captions are empty, too short or repetitive"
    return None


@dataclass(frozen=True)
class GridTrial:
    """The outcome of one learning rate: scores on held-out data and any collapse reason."""

    learning_rate: float
    hallucination: float  # lower is better, e.g. CHAIR_i of held-out captions
    utility: float  # higher is better, e.g. object recall of held-out captions
    collapse: str | None = None


class NoValidLearningRateError(ValueError):
    """Every learning rate of the grid collapsed or lost too much utility."""


def select_learning_rate(trials: Sequence[GridTrial], baseline_utility: float, max_utility_drop: float = 0.1) -> GridTrial:
    """Return the trial with the lowest hallucination among runs that did not collapse and kept
    utility >= (1 - ``max_utility_drop``) * ``baseline_utility``; ties go to the smaller rate.

    Raises NoValidLearningRateError listing each trial's reason when no trial qualifies.
    """
    if not 0 <= max_utility_drop < 1:
        raise ValueError(f"max_utility_drop must be in [0, 1), got {max_utility_drop!r}")
    floor = (1.0 - max_utility_drop) * baseline_utility
    valid, reasons = [], []
    for trial in trials:
        if trial.collapse is not None:
            reasons.append(f"lr {trial.learning_rate:g}: {trial.collapse}")
        elif not math.isfinite(trial.hallucination):
            reasons.append(f"lr {trial.learning_rate:g}: hallucination score {trial.hallucination}")
        elif not trial.utility >= floor:
            reasons.append(f"lr {trial.learning_rate:g}: utility {trial.utility:.4f} below {floor:.4f}")
        else:
            valid.append(trial)
    if not valid:
        raise NoValidLearningRateError("no learning rate qualifies: " + "; ".join(reasons or ["the grid is empty"]))
    best = min(valid, key=lambda trial: (trial.hallucination, trial.learning_rate))
    logger.info("selected learning rate %g (hallucination %.4f, utility %.4f)", best.learning_rate, best.hallucination, best.utility)
    return best


def run_learning_rate_grid(grid: Sequence[float], trial: Callable[[float], GridTrial]) -> list[GridTrial]:
    """Run ``trial`` for every learning rate of ``grid`` (in order) and return the outcomes.

    ``trial`` unlearns with the given rate, evaluates, and fills ``collapse`` (for example with
    :func:`training_collapse` and :func:`caption_collapse`). A run that stops on a non-finite
    loss should be reported as a collapsed trial by ``trial`` itself.
    """
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    rates = [float(rate) for rate in grid]
    if any(not (rate > 0 and math.isfinite(rate)) for rate in rates):
        raise ValueError(f"learning rates must be positive and finite, got {list(grid)}")
    return [trial(rate) for rate in rates]
