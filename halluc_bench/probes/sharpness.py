"""ε-sharpness: how much a loss can rise within an L2 ball of weight perturbations."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from halluc_bench.probes.ascent import projected_gradient_ascent, restored_parameters
from halluc_bench.probes.hvp import LossFn, ParameterSpec, evaluation_mode, select_parameters
from halluc_bench.probes.registry import PROBES

logger = logging.getLogger(__name__)


@dataclass
class SharpnessEstimate:
    """max_{‖ε‖≤ρ} L(θ+ε) − L(θ), estimated from below by the best ascent iterate."""

    sharpness: float
    loss: float  # L(θ)
    perturbed_loss: float  # L(θ + ε) at the best ε found
    radius: float
    steps: int
    perturbation_norm: float  # ‖ε‖₂ of the best ε (at most ``radius``)
    history: list[float] = field(repr=False)  # L at each ascent iterate, starting with L(θ)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@PROBES.register("epsilon_sharpness")
def epsilon_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    params: ParameterSpec = None,
    *,
    radius: float,
    steps: int = 10,
    step_size: float = 1.0,
    generator: torch.Generator | None = None,
) -> SharpnessEstimate:
    """Estimate ε-sharpness max_{‖ε‖₂≤ρ} L(θ+ε) − L(θ) by projected gradient ascent.

    Estimator: ascent from ε = 0 along normalised gradients with steps of ``step_size``·ρ,
    each projected back onto the global L2 ball of radius ρ = ``radius``. ε-sharpness is
    defined by Keskar et al., 2017, "On Large-Batch Training for Deep Learning: Generalization
    Gap and Sharp Minima". ``steps=1`` gives the first-order perturbation ρ·g/‖g‖ of SAM
    (Foret et al., 2021, "Sharpness-Aware Minimization for Efficiently Improving
    Generalization"). The result is the best iterate,
    so it is a lower bound on the true maximum that tightens with ``steps``; there is no
    tolerance. ``generator`` is accepted for a uniform probe signature and unused (the ascent
    is deterministic). The model's weights are restored bit for bit afterwards. Returns a
    :class:`SharpnessEstimate`.
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    with evaluation_mode(model):
        selected = select_parameters(model, loss_fn, params)
        with restored_parameters([parameter for _, parameter in selected]):
            result = projected_gradient_ascent(
                model, loss_fn, selected, groups=[list(range(len(selected)))], radii=[radius], steps=steps,
                step_size=step_size,
            )
    logger.info("epsilon-sharpness at radius %g: %.6g after %d steps", radius, result.best_value - result.initial_value,
                steps)
    return SharpnessEstimate(
        sharpness=result.best_value - result.initial_value,
        loss=result.initial_value,
        perturbed_loss=result.best_value,
        radius=radius,
        steps=steps,
        perturbation_norm=result.group_norms[0],
        history=result.history,
    )
