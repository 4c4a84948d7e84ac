"""Loss surfaces along random directions, and loss along linear paths between checkpoints.

Random directions follow Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets".
Each parameter gets one Gaussian tensor, filter-normalised so that each filter has the norm
of the matching filter of the weights. A filter is a slice along dimension 0: an output unit
of a linear layer, an output channel of a convolution, a row of an embedding.

Convention for tensors with fewer than 2 dimensions (biases, norm weights, scalars): the
default ``one_dimensional="zero"`` gives them a zero direction, so they stay fixed.
``"layer"`` instead rescales the whole tensor's direction to the tensor's norm.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from halluc_bench.probes.ascent import restored_parameters
from halluc_bench.probes.hvp import LossFn, NamedParameters, ParameterSpec, evaluation_mode, select_parameters
from halluc_bench.probes.registry import PROBES

logger = logging.getLogger(__name__)

Normalization = Literal["filter", "layer", "none"]
OneDimensional = Literal["zero", "layer"]
NORM_FLOOR = 1e-10  # added to a direction's norm before dividing, so an all-zero filter stays finite


def _default_alphas() -> list[float]:
    return torch.linspace(-1.0, 1.0, 21).tolist()


def normalize_direction(
    direction: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    normalization: Normalization = "filter",
    one_dimensional: OneDimensional = "zero",
) -> list[torch.Tensor]:
    """Rescale ``direction`` tensor by tensor to the scale of ``weights`` (see the module docstring).

    ``normalization`` applies to tensors of 2 or more dimensions: "filter" per slice along
    dimension 0, "layer" per whole tensor, "none" leaves them as drawn.
    """
    if normalization not in ("filter", "layer", "none"):
        raise ValueError(f"normalization must be 'filter', 'layer' or 'none', got {normalization!r}")
    if one_dimensional not in ("zero", "layer"):
        raise ValueError(f"one_dimensional must be 'zero' or 'layer', got {one_dimensional!r}")
    normalized = []
    for piece, weight in zip(direction, weights, strict=True):
        piece, weight = piece.float(), weight.detach().float()
        if weight.dim() < 2:
            if one_dimensional == "zero":
                normalized.append(torch.zeros_like(piece))
            else:
                normalized.append(piece * weight.norm() / (piece.norm() + NORM_FLOOR))
        elif normalization == "filter":
            rows, weight_rows = piece.reshape(piece.shape[0], -1), weight.reshape(weight.shape[0], -1)
            scale = weight_rows.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + NORM_FLOOR)
            normalized.append((rows * scale).reshape(piece.shape))
        elif normalization == "layer":
            normalized.append(piece * weight.norm() / (piece.norm() + NORM_FLOOR))
        else:
            normalized.append(piece)
    return normalized


def random_direction(
    params: NamedParameters,
    generator: torch.Generator,
    normalization: Normalization = "filter",
    one_dimensional: OneDimensional = "zero",
) -> list[torch.Tensor]:
    """Draw one Gaussian tensor per parameter from ``generator`` and normalise it (fp32, on each parameter's device)."""
    drawn = [
        torch.randn(parameter.shape, generator=generator, device=generator.device).to(parameter.device)
        for _, parameter in params
    ]
    return normalize_direction(drawn, [parameter for _, parameter in params], normalization, one_dimensional)


@dataclass
class Surface1D:
    """Loss at θ + α·d for each α."""

    alphas: list[float]
    losses: list[float]
    base_loss: float  # L(θ), equal to the loss at α = 0
    normalization: str = "filter"
    one_dimensional: str = "zero"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Surface2D:
    """Loss at θ + α·d₁ + β·d₂; ``losses[i][j]`` belongs to ``alphas[i]`` and ``betas[j]``."""

    alphas: list[float]
    betas: list[float]
    losses: list[list[float]]
    base_loss: float
    normalization: str = "filter"
    one_dimensional: str = "zero"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_direction(direction: Sequence[torch.Tensor], params: NamedParameters) -> list[torch.Tensor]:
    if len(direction) != len(params):
        raise ValueError(f"direction has {len(direction)} tensors for {len(params)} selected parameters")
    for piece, (name, parameter) in zip(direction, params):
        if piece.shape != parameter.shape:
            raise ValueError(f"direction for {name} has shape {tuple(piece.shape)}, expected {tuple(parameter.shape)}")
    return [piece.to(parameter.device, torch.float32) for piece, (_, parameter) in zip(direction, params)]


def _evaluate_grid(model, loss_fn, params, directions, coordinates) -> list[float]:
    """Return the loss at θ + Σ c_i·d_i for each coordinate tuple; restores θ bit for bit."""
    tensors = [parameter for _, parameter in params]
    losses = []
    with restored_parameters(tensors) as origins, torch.no_grad():
        for point in tqdm(coordinates, desc="loss surface", leave=False, disable=None):
            at_origin = all(c == 0.0 for c in point)
            for index, (tensor, origin) in enumerate(zip(tensors, origins)):
                if at_origin:
                    tensor.copy_(origin)  # the unperturbed weights themselves, so α = 0 is exact
                    continue
                shift = sum(c * direction[index] for c, direction in zip(point, directions))
                tensor.copy_((origin.float() + shift).to(tensor.dtype))
            losses.append(float(loss_fn(model)))
    return losses


@PROBES.register("loss_surface_1d")
def loss_surface_1d(
    model: nn.Module,
    loss_fn: LossFn,
    params: ParameterSpec = None,
    *,
    generator: torch.Generator,
    alphas: Sequence[float] | None = None,
    direction: Sequence[torch.Tensor] | None = None,
    normalization: Normalization = "filter",
    one_dimensional: OneDimensional = "zero",
) -> Surface1D:
    """Evaluate L(θ + α·d) along one direction d.

    Estimator: exact evaluation on a grid (Li et al., 2018). d is a filter-normalised Gaussian
    direction from ``generator``, unless ``direction`` (one tensor per selected parameter) is
    given and used as is. α = 0 evaluates the unperturbed weights, so it
    reproduces ``loss_fn(model)`` exactly. Default grid: 21 points on [−1, 1]. The model is in
    eval mode and its weights are restored bit for bit afterwards. Returns a :class:`Surface1D`.
    """
    alphas = list(alphas) if alphas is not None else _default_alphas()
    with evaluation_mode(model):
        selected = select_parameters(model, loss_fn, params)
        if direction is None:
            direction = random_direction(selected, generator, normalization, one_dimensional)
        direction = _check_direction(direction, selected)
        with torch.no_grad():
            base_loss = float(loss_fn(model))
        losses = _evaluate_grid(model, loss_fn, selected, [direction], [(alpha,) for alpha in alphas])
    return Surface1D(alphas, losses, base_loss, normalization, one_dimensional)


@PROBES.register("loss_surface_2d")
def loss_surface_2d(
    model: nn.Module,
    loss_fn: LossFn,
    params: ParameterSpec = None,
    *,
    generator: torch.Generator,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    directions: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    normalization: Normalization = "filter",
    one_dimensional: OneDimensional = "zero",
) -> Surface2D:
    """Evaluate L(θ + α·d₁ + β·d₂) on a grid, with two independent filter-normalised directions.

    Estimator and conventions as :func:`loss_surface_1d`. The two random directions are drawn
    one after the other from ``generator`` and not orthogonalised, because in high dimension
    they are nearly orthogonal already. Returns a :class:`Surface2D`.
    """
    alphas = list(alphas) if alphas is not None else _default_alphas()
    betas = list(betas) if betas is not None else _default_alphas()
    with evaluation_mode(model):
        selected = select_parameters(model, loss_fn, params)
        if directions is None:
            directions = tuple(random_direction(selected, generator, normalization, one_dimensional) for _ in range(2))
        first, second = (_check_direction(direction, selected) for direction in directions)
        with torch.no_grad():
            base_loss = float(loss_fn(model))
        flat = _evaluate_grid(model, loss_fn, selected, [first, second], [(a, b) for a in alphas for b in betas])
    losses = [flat[row * len(betas) : (row + 1) * len(betas)] for row in range(len(alphas))]
    return Surface2D(alphas, betas, losses, base_loss, normalization, one_dimensional)


@dataclass
class InterpolationPath:
    """Loss along straight lines through a sequence of checkpoints.

    ``positions`` run from 0 to len(names) − 1: position i + t is (1 − t)·θ_i + t·θ_{i+1}.
    """

    positions: list[float]
    losses: list[float]
    names: list[str]
    checkpoint_losses: list[float] = field(default_factory=list)  # the loss at each checkpoint

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _floating_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value for key, value in model.state_dict().items() if value.is_floating_point()}


def interpolate_checkpoints(
    models: Sequence[nn.Module],
    loss_fn: LossFn,
    *,
    points_per_segment: int = 11,
    names: Sequence[str] | None = None,
) -> InterpolationPath:
    """Evaluate the loss along linear interpolation between consecutive checkpoints.

    Every floating-point entry of the state dict (parameters and buffers) is interpolated with
    ``torch.lerp``, which returns the end points exactly, so the loss at each checkpoint equals
    ``loss_fn`` of that model. The path is evaluated on a deep copy of ``models[0]`` in eval
    mode; no input model changes. Typical use: base → unlearned → relearned.
    """
    if len(models) < 2:
        raise ValueError(f"need at least 2 checkpoints to interpolate, got {len(models)}")
    if points_per_segment < 2:
        raise ValueError(f"points_per_segment must be at least 2, got {points_per_segment}")
    names = list(names) if names is not None else [f"checkpoint_{index}" for index in range(len(models))]
    if len(names) != len(models):
        raise ValueError(f"got {len(names)} names for {len(models)} checkpoints")
    states = [_floating_state(model) for model in models]
    for index, state in enumerate(states[1:], start=1):
        _check_same_layout(states[0], state, names[0], names[index])
    working = copy.deepcopy(models[0]).eval()
    target = _floating_state(working)
    positions, losses = [], []
    with torch.no_grad():
        for segment in range(len(models) - 1):
            weights = torch.linspace(0.0, 1.0, points_per_segment).tolist()
            for weight in weights[1:] if segment else weights:
                for key, value in target.items():
                    value.copy_(torch.lerp(states[segment][key], states[segment + 1][key], weight))
                positions.append(segment + weight)
                losses.append(float(loss_fn(working)))
    checkpoint_losses = [losses[0]] + [losses[(points_per_segment - 1) * index] for index in range(1, len(models))]
    return InterpolationPath(positions, losses, names, checkpoint_losses)


def _check_same_layout(first: dict, other: dict, first_name: str, other_name: str) -> None:
    if first.keys() != other.keys():
        missing = sorted(set(first) ^ set(other))[:3]
        raise ValueError(f"checkpoints {first_name!r} and {other_name!r} have different tensors, e.g. {missing}")
    for key, value in first.items():
        if value.shape != other[key].shape:
            raise ValueError(
                f"tensor {key} has shape {tuple(value.shape)} in {first_name!r} and "
                f"{tuple(other[key].shape)} in {other_name!r}"
            )
