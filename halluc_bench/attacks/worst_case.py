"""Worst-case weight perturbation: the small weight change that best brings hallucination back.

The attack runs projected gradient ascent on the hallucination log-likelihood, the mean
log-probability of the hallucinated-mention tokens of fixed examples. The perturbation stays
in an L2 ball ‖ε‖₂ ≤ ρ: one ball over all chosen parameters ("global"), or one per layer
("per_layer", where a layer is the parameters of one module, e.g. a linear layer's weight and
bias). With ``relative=True`` each ball's radius is ρ times the norm of the weights it covers.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from halluc_bench.attacks.registry import ATTACKS
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.probes.ascent import group_by_layer, projected_gradient_ascent
from halluc_bench.probes.hvp import evaluation_mode, select_parameters
from halluc_bench.probes.losses import forget_loss_fn
from halluc_bench.unlearning.data import SpanExample, UnlearningData

logger = logging.getLogger(__name__)

Scope = Literal["global", "per_layer"]


@dataclass
class WorstCaseResult:
    """The perturbed model and what the ascent achieved."""

    vlm: VisionLanguageModel = field(repr=False)
    log_likelihood_before: float  # mean log-probability of the hallucinated tokens at ε = 0
    log_likelihood_after: float  # the same at the returned ε
    radius: float
    scope: str
    relative: bool
    group_radii: list[float] = field(default_factory=list)
    group_norms: list[float] = field(default_factory=list)  # ‖ε_g‖₂ of the returned ε
    history: list[float] = field(default_factory=list, repr=False)  # log-likelihood at each iterate

    def to_dict(self) -> dict:
        """Return every field except the model."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "vlm"}
        values["model_name"] = self.vlm.name
        return values


@ATTACKS.register("worst_case")
def worst_case_perturbation(
    vlm: VisionLanguageModel,
    data: UnlearningData,
    examples: Sequence[SpanExample],
    radius: float,
    *,
    steps: int = 10,
    step_size: float = 0.5,
    scope: Scope = "global",
    relative: bool = False,
    params: str = "all",
    batch_size: int | None = None,
) -> WorstCaseResult:
    """Return a copy of ``vlm`` moved within the ball(s) of radius ``radius`` to raise hallucination.

    Each of ``steps`` steps moves every ball's perturbation by ``step_size`` times its radius
    along the normalised gradient and projects it back. The best iterate is kept, so the
    log-likelihood never ends below its start. ``params`` is a name filter over trainable
    parameters; those that get no gradient are skipped. Deterministic: no randomness is used.
    """
    if radius < 0:
        raise ValueError(f"radius must be non-negative, got {radius}")
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    model = copy.deepcopy(vlm.model)
    nll = forget_loss_fn(vlm, data, examples, batch_size=batch_size)
    with evaluation_mode(model):
        selected = select_parameters(model, nll, params)
        groups = group_by_layer(selected) if scope == "per_layer" else [list(range(len(selected)))]
        radii = [radius * _norm(selected, group) if relative else radius for group in groups]
        result = projected_gradient_ascent(
            model, lambda module: -nll(module), selected, groups, radii, steps=steps, step_size=step_size
        )
    model.eval()
    logger.info("worst-case %s perturbation of %s at radius %g: log-likelihood %.4f -> %.4f", scope, vlm.name, radius,
                result.initial_value, result.best_value)
    return WorstCaseResult(
        vlm=VisionLanguageModel(model, vlm.processor, name=f"{vlm.name}+worst{scope}{radius:g}"),
        log_likelihood_before=result.initial_value,
        log_likelihood_after=result.best_value,
        radius=radius,
        scope=scope,
        relative=relative,
        group_radii=radii,
        group_norms=result.group_norms,
        history=result.history,
    )


def _norm(params, group: Sequence[int]) -> float:
    return float(torch.sqrt(sum((params[index][1].detach().double() ** 2).sum() for index in group)))
