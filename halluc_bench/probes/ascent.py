"""Projected gradient ascent over weight perturbations inside L2 balls.

Shared by the ε-sharpness probe (ascent on a loss) and the worst-case weight attack (ascent on
the hallucination log-likelihood). Parameters are split into groups, each with its own ball
‖ε_g‖₂ ≤ r_g: one group for a global ball, one per layer for layer-wise balls.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from halluc_bench.probes.hvp import NamedParameters

logger = logging.getLogger(__name__)

Objective = Callable[[nn.Module], torch.Tensor]


@dataclass
class AscentResult:
    """The best perturbation found and the objective along the way."""

    initial_value: float  # objective at ε = 0
    best_value: float  # the largest objective seen at a feasible ε
    perturbation: list[torch.Tensor] = field(repr=False)  # best ε, one tensor per parameter
    group_norms: list[float] = field(default_factory=list)  # ‖ε_g‖₂ of the best ε
    history: list[float] = field(default_factory=list)  # objective at each evaluated ε


def group_by_layer(params: NamedParameters) -> list[list[int]]:
    """Group parameter indices by owning module (the name without its last component)."""
    groups: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(params):
        groups.setdefault(name.rpartition(".")[0], []).append(index)
    return list(groups.values())


@contextlib.contextmanager
def restored_parameters(tensors: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Yield copies of ``tensors``' values and copy them back on exit, bit for bit."""
    saved = [tensor.detach().clone() for tensor in tensors]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)


def _set_perturbation(tensors, origins, perturbation) -> None:
    with torch.no_grad():
        for tensor, origin, delta in zip(tensors, origins, perturbation):
            tensor.copy_(origin + delta.to(tensor.dtype))


def _group_norm(vectors: Sequence[torch.Tensor], group: Sequence[int]) -> float:
    return float(torch.sqrt(sum((vectors[index].double() ** 2).sum() for index in group)))


def projected_gradient_ascent(
    model: nn.Module,
    objective: Objective,
    params: NamedParameters,
    groups: Sequence[Sequence[int]],
    radii: Sequence[float],
    steps: int,
    step_size: float = 1.0,
) -> AscentResult:
    """Maximise ``objective(model)`` over ε with ‖ε_g‖₂ ≤ radii[g] for each parameter group g.

    Each step moves every group by ``step_size``·r_g along its normalised gradient, then
    projects back onto its ball. The first step from ε = 0 with ``step_size=1`` is the SAM
    perturbation ε = r·g/‖g‖. The parameters are left at θ + best ε; wrap the call in
    :func:`restored_parameters` to undo it. Gradients come from ``torch.autograd.grad``, so no
    ``.grad`` is written.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    if len(groups) != len(radii) or any(radius < 0 for radius in radii):
        raise ValueError(f"need one non-negative radius per group, got {len(radii)} radii for {len(groups)} groups")
    tensors = [parameter for _, parameter in params]
    origins = [tensor.detach().clone() for tensor in tensors]
    perturbation = [torch.zeros_like(tensor, dtype=torch.float32) for tensor in tensors]
    best = [delta.clone() for delta in perturbation]
    history: list[float] = []
    initial = best_value = None
    for _ in tqdm(range(steps + 1), desc="ascent", leave=False, disable=None):
        _set_perturbation(tensors, origins, perturbation)
        value = objective(model)
        history.append(float(value.detach()))
        if initial is None:
            initial = best_value = history[-1]
        elif history[-1] > best_value:
            best_value = history[-1]
            best = [delta.clone() for delta in perturbation]
        if len(history) == steps + 1:
            break
        gradients = torch.autograd.grad(value, tensors, allow_unused=True, materialize_grads=True)
        perturbation = _ascent_step(perturbation, gradients, groups, radii, step_size)
    _set_perturbation(tensors, origins, best)
    return AscentResult(
        initial_value=initial,
        best_value=best_value,
        perturbation=best,
        group_norms=[_group_norm(best, group) for group in groups],
        history=history,
    )


def _ascent_step(perturbation, gradients, groups, radii, step_size) -> list[torch.Tensor]:
    updated = list(perturbation)
    gradients = [gradient.float() for gradient in gradients]
    for group, radius in zip(groups, radii):
        gradient_norm = _group_norm(gradients, group)
        if gradient_norm == 0.0 or radius == 0.0:
            continue
        for index in group:
            updated[index] = perturbation[index] + step_size * radius * gradients[index] / gradient_norm
        norm = _group_norm(updated, group)
        if norm > radius:
            for index in group:
                updated[index] = updated[index] * (radius / norm)
    return updated
