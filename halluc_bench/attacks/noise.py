"""Gaussian weight noise scaled to each tensor's norm.

Convention: for a weight tensor W with n entries, the noise is δ = σ·(‖W‖_F / √n)·z with z
standard normal, i.e. each entry has standard deviation σ times the root-mean-square of W.
Then E‖δ‖²_F = σ²‖W‖²_F, so the relative perturbation ‖δ‖_F/‖W‖_F is close to σ (within a
few multiples of σ/√(2n)). σ = 0.01 perturbs every tensor by about 1% of its norm.
"""

from __future__ import annotations

import copy
import logging

import torch

from halluc_bench.attacks.registry import ATTACKS
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.probes.hvp import filter_parameters

logger = logging.getLogger(__name__)


def relative_noise(weight: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Draw δ = σ·RMS(W)·z for ``weight`` W (see the module docstring), in fp32 on W's device."""
    values = weight.detach().float()
    root_mean_square = values.norm() / values.numel() ** 0.5
    noise = torch.randn(weight.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(weight.device) * (sigma * root_mean_square)


@ATTACKS.register("weight_noise")
def gaussian_weight_noise(
    vlm: VisionLanguageModel, sigma: float, draws: int = 1, seed: int = 0, params: str = "all"
) -> list[VisionLanguageModel]:
    """Return ``draws`` copies of ``vlm`` with relative Gaussian noise added to the chosen weights.

    ``params`` is a name filter ("all", "language_model", "vision_tower", "multi_modal_projector"
    or a regular expression). Every floating-point parameter it matches is perturbed, frozen
    ones, biases and norm weights included, each relative to its own norm. Draws come one
    after the other from one generator seeded with ``seed``. ``vlm`` is not changed.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    names = {
        name for name, parameter in filter_parameters(vlm.model, params, trainable_only=False)
        if parameter.is_floating_point()
    }
    generator = torch.Generator().manual_seed(seed)
    noisy = []
    for draw in range(draws):
        model = copy.deepcopy(vlm.model).eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in names:
                    delta = relative_noise(parameter, sigma, generator)
                    parameter.copy_((parameter.float() + delta).to(parameter.dtype))
        noisy.append(VisionLanguageModel(model, vlm.processor, name=f"{vlm.name}+noise{sigma:g}#{draw}"))
    logger.info("drew %d noisy copies of %s at relative sigma %g over %d tensors", draws, vlm.name, sigma, len(names))
    return noisy
