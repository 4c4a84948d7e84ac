"""SARE: sharpness-aware robust erasure of object hallucinations, as an unlearner plug-in.

No reference code or hyperparameters of SARE are public; this is this project's definition:

    min_theta  max_{||eps|| <= rho} L_h(theta + eps)  +  lambda * L_keep(theta)

L_h is the suppression objective on the tokens of hallucinated object mentions (gradient
ascent on their NLL, or the bounded NPO form), L_keep the NLL of faithful caption tokens,
optionally plus KL to the original model. Each step takes g = grad L_h(theta),
eps = rho * g / ||g|| (global L2 norm; ``adaptive`` scales by |theta|), and updates with
grad L_h(theta + eps) + lambda * grad L_keep(theta). eps points where hallucination returns
fastest, which is what a relearning attack exploits. "Targeted": only L_h drives the
perturbation, and by default it moves only the language model. With ``perturb="all"`` and
``forget_objective="npo"`` SARE is the NPO+SAM baseline.

The class is registered only through the ``halluc_bench.unlearners`` entry point, the way a
third-party method would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from halluc_bench.models.vlm import token_log_probs
from halluc_bench.unlearning.base import LossTerms, require_field
from halluc_bench.unlearning.losses import kl_to_reference, mean_nll, model_logits
from halluc_bench.unlearning.methods import ga_forget_loss, npo_forget_loss
from halluc_bench.unlearning.sharpness import PerturbScope, SharpnessAwareConfig, SharpnessAwareUnlearner


@dataclass(frozen=True)
class SAREConfig(SharpnessAwareConfig):
    """SARE hyperparameters; ``retain_weight`` is lambda and ``forget_weight`` scales L_h."""

    forget_objective: Literal["ga", "npo"] = "npo"  # NPO is bounded below, so the erasure cannot run away
    beta: float = 0.1  # NPO inverse temperature
    kl_weight: float = 0.0  # weight of KL(pi_ref || pi_theta) on retain tokens inside L_keep
    # The hallucinated concepts are produced by the decoder, so the perturbation targets it
    # and leaves the projector (and a trained vision encoder) alone.
    perturb: PerturbScope = "language_model"

    def validate(self) -> None:
        super().validate()
        require_field(self, "forget_objective", self.forget_objective in ("ga", "npo"), "'ga' or 'npo'")
        require_field(self, "beta", isinstance(self.beta, (int, float)) and 0 < self.beta < float("inf"), "a positive number")
        weight = self.kl_weight
        require_field(self, "kl_weight", isinstance(weight, (int, float)) and 0 <= weight < float("inf"), "a number >= 0")


class SARE(SharpnessAwareUnlearner):
    """Targeted-SAM unlearning: flat minimum of the hallucination objective, retain loss at theta."""

    name = "sare"
    config_class = SAREConfig

    @property
    def needs_reference(self) -> bool:
        return self.config.forget_objective == "npo" or self.config.kl_weight > 0

    @property
    def uses_retain(self) -> bool:
        return self.config.retain_weight > 0 or self.config.kl_weight > 0

    def loss(self, model, forget, retain, reference) -> LossTerms:
        config = self.config
        forget_term = None
        if forget is not None:
            if config.forget_objective == "npo":
                suppression = npo_forget_loss(model, forget, reference, config.beta)
            else:
                suppression = ga_forget_loss(model, forget)
            forget_term = config.forget_weight * suppression
        retain_term = None
        if retain is not None and (config.retain_weight > 0 or config.kl_weight > 0):
            logits = model_logits(model, retain)  # one forward pass serves both retain terms
            parts = []
            if config.retain_weight > 0:
                parts.append(config.retain_weight * mean_nll(*token_log_probs(logits, retain.labels)))
            if config.kl_weight > 0:
                parts.append(config.kl_weight * kl_to_reference(logits, reference.logits(retain), retain.labels))
            retain_term = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return LossTerms(forget_term, retain_term)
