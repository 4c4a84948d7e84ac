"""An example unlearning plug-in: gradient ascent on temperature-scaled token probabilities.

Installing this package makes the method available as ``example_ascent`` through the
``halluc_bench.unlearners`` entry point; nothing in halluc-bench imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from halluc_bench.models.vlm import token_log_probs
from halluc_bench.unlearning import LossTerms, Unlearner, UnlearnerConfig
from halluc_bench.unlearning.base import require_field
from halluc_bench.unlearning.losses import gradient_ascent_loss, model_logits


@dataclass(frozen=True)
class TemperedAscentConfig(UnlearnerConfig):
    retain_weight: float = 0.0
    temperature: float = 2.0  # logits are divided by this before the log-softmax

    def validate(self) -> None:
        super().validate()
        require_field(self, "temperature", isinstance(self.temperature, (int, float)) and self.temperature > 0, "a positive number")


class TemperedAscent(Unlearner):
    """Gradient ascent on the temperature-scaled log-probability of hallucinated mention tokens."""

    name = "example_ascent"
    config_class = TemperedAscentConfig

    def loss(self, model, forget, retain, reference) -> LossTerms:
        forget_term = None
        if forget is not None:
            logits = model_logits(model, forget) / self.config.temperature
            forget_term = self.config.forget_weight * gradient_ascent_loss(*token_log_probs(logits, forget.labels))
        return LossTerms(forget_term, self.retain_nll_term(model, retain))
