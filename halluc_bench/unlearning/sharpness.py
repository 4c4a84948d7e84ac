"""Base class for sharpness-aware unlearners: the targeted-SAM step as an ``Unlearner.step`` override.

A subclass only writes ``loss``. This class perturbs the weights along the gradient of the
forget term and takes the forget gradient at theta + eps. It takes the retain gradient at
theta, then applies the base optimizer. NPO+SAM and SARE both build on it.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import nn

from halluc_bench.unlearning.base import StepInputs, StepValues, Unlearner, UnlearnerConfig, require_field
from halluc_bench.unlearning.lora import is_language_model_parameter
from halluc_bench.unlearning.training import check_finite
from sare.sam import TargetedSAM, targeted_sam_step

logger = logging.getLogger(__name__)

PerturbScope = Union[Literal["all", "language_model", "lora"], tuple[Union[int, str], ...]]
NAMED_SCOPES = ("all", "language_model", "lora")


@dataclass(frozen=True)
class SharpnessAwareConfig(UnlearnerConfig):
    """Shared settings of the targeted-SAM step.

    ``perturb`` selects the parameters the perturbation moves: "all" trainable ones, the
    "language_model" (decoder and output head), the "lora" adapters, or a tuple of decoder
    layer indices (ints) and/or glob patterns over parameter names (strings).
    """

    # Radius of the perturbation ball (global L2 norm over the perturbed parameters). 0.05 is
    # the usual SAM default and the middle of the 0.01-0.1 range tuned for SAM on NPO unlearning.
    rho: float = 0.05
    adaptive: bool = False  # scale eps elementwise by |theta| (ASAM); such runs usually need a larger rho
    refresh_every: int = 1  # recompute eps every k steps and reuse the last one in between
    perturb: PerturbScope = "all"

    def validate(self) -> None:
        super().validate()
        require_field(self, "rho", isinstance(self.rho, (int, float)) and 0 <= self.rho < float("inf"), "a finite number >= 0")
        require_field(self, "adaptive", isinstance(self.adaptive, bool), "True or False")
        every = self.refresh_every
        require_field(self, "refresh_every", isinstance(every, int) and not isinstance(every, bool) and every >= 1, "an integer >= 1")
        scope = self.perturb
        if isinstance(scope, list):
            object.__setattr__(self, "perturb", tuple(scope))
            scope = self.perturb
        valid = scope in NAMED_SCOPES or (
            isinstance(scope, tuple)
            and len(scope) > 0
            and all(isinstance(item, (int, str)) and not isinstance(item, bool) for item in scope)
        )
        require_field(self, "perturb", valid, "'all', 'language_model', 'lora' or a non-empty tuple of layer indices / name patterns")


def select_perturbed(named_parameters: list[tuple[str, nn.Parameter]], scope: PerturbScope) -> set[str]:
    """Return the names of the trainable parameters that ``scope`` selects; raise ValueError if none."""
    names = [name for name, _ in named_parameters]
    if scope == "all":
        chosen = set(names)
    elif scope == "language_model":
        chosen = {name for name in names if is_language_model_parameter(name)}
    elif scope == "lora":
        chosen = {name for name in names if "lora_" in name}
    else:
        chosen = set()
        for item in scope:
            if isinstance(item, int):
                chosen |= {name for name in names if f"language_model.layers.{item}." in name}
            else:
                chosen |= set(fnmatch.filter(names, item))
    if not chosen:
        hint = " (set lora=... to train adapters)" if scope == "lora" else ""
        raise ValueError(f"perturb={scope!r} selects none of the {len(names)} trainable parameters{hint}")
    return chosen


class SharpnessAwareUnlearner(Unlearner):
    """An unlearner whose update is a targeted-SAM step; subclasses override ``loss`` only."""

    name = "sharpness-aware"
    config_class = SharpnessAwareConfig

    def make_optimizer(self, named_parameters: list[tuple[str, nn.Parameter]]) -> TargetedSAM:
        """Return a TargetedSAM over AdamW/SGD whose perturbed group is the ``perturb`` selection."""
        config = self.config
        chosen = select_perturbed(named_parameters, config.perturb)
        groups = [{"params": [p for name, p in named_parameters if name in chosen]}]
        others = [p for name, p in named_parameters if name not in chosen]
        if others:
            groups.append({"params": others, "perturb": False})
        logger.info("%s: perturbing %d of %d trainable tensors", self.name, len(chosen), len(named_parameters))
        base = _base_optimizer_class(config.optimizer)
        return TargetedSAM(
            groups,
            base,
            rho=config.rho,
            adaptive=config.adaptive,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )

    def step(self, inputs: StepInputs) -> StepValues:
        """Run one targeted-SAM step: grad L_h(theta + eps) + grad L_keep(theta), then the base update."""
        config = self.config
        precision = inputs.precision

        def forget_closure():
            with precision.autocast():
                term = self.loss(inputs.model, inputs.forget, None, inputs.reference).forget
            if term is None:
                raise ValueError(f"{self.name}.loss returned no forget term; a sharpness-aware method needs one")
            check_finite(term, "forget loss")
            return term

        def retain_closure():
            if inputs.retain is None:
                return None
            with precision.autocast():
                term = self.loss(inputs.model, None, inputs.retain, inputs.reference).retain
            if term is not None:
                check_finite(term, "retain loss")
            return term

        losses = targeted_sam_step(
            inputs.optimizer,
            forget_closure,
            retain_closure,
            refresh=inputs.index % config.refresh_every == 0,
            backward=precision.backward,
            grad_scale=precision.grad_scale,
            module=inputs.model,
        )
        grad_norm = precision.clip_and_step(inputs.optimizer, inputs.parameters, config.max_grad_norm)
        forget = float(losses.forget_perturbed)
        retain = float(losses.retain) if losses.retain is not None else 0.0
        extras = {"perturbation_grad_norm": inputs.optimizer.last_grad_norm}
        if losses.forget_unperturbed is not None:
            extras["forget_loss_unperturbed"] = float(losses.forget_unperturbed)
        return StepValues(forget, retain, forget + retain, grad_norm, extras)


def _base_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    return torch.optim.SGD if name == "sgd" else torch.optim.AdamW
