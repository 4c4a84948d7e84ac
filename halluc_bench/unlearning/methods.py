"""Built-in unlearning baselines. Each class overrides ``loss`` (NPO+SAM inherits its step).

Losses to minimise, with NLL over labelled tokens, gamma = ``forget_weight``, alpha =
``retain_weight``, beta the inverse temperature and log pi(y|x) a row's summed log-probability:

- ga:       gamma * (-NLL_f)  (no retain term by default)
- graddiff: gamma * (-NLL_f) + alpha * NLL_r
- kl:       gamma * (-NLL_f) + alpha * KL(pi_ref || pi_theta) per retain token, over the vocabulary
- npo:      gamma * (2/beta) * E_f[softplus(beta * (log pi_theta - log pi_ref))] + alpha * NLL_r
- simnpo:   gamma * (2/beta) * E_f[softplus(-(beta * NLL_f/|y| - delta))] + alpha * NLL_r
- dpo:      gamma * -log sigmoid(beta * [(log pi_theta - log pi_ref)(y_w) - (same)(y_l)]) + alpha * NLL_r
- efuf:     gamma * weighted(-NLL on hallucinated spans) + w_s * NLL(faithful spans) + alpha * NLL(faithful captions)
- npo_sam:  npo with the targeted-SAM step, perturbing all trainable parameters
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from halluc_bench.models.vlm import TokenBatch, VisionLanguageModel, token_log_probs
from halluc_bench.unlearning.base import UNLEARNERS, LossTerms, Unlearner, UnlearnerConfig, require_field
from halluc_bench.unlearning.batches import (
    GroundingScorer,
    PreferenceBatch,
    WeightedSpanBatch,
    absent_object_score,
    preference_batch,
    weighted_span_batch,
)
from halluc_bench.unlearning.data import SpanExample, UnlearningData
from halluc_bench.unlearning.losses import (
    dpo_loss,
    gradient_ascent_loss,
    kl_to_reference,
    mean_nll,
    model_logits,
    npo_loss,
    policy_token_log_probs,
    row_has_labels,
    sequence_log_probs,
    simnpo_loss,
    weighted_gradient_ascent_loss,
)
from halluc_bench.unlearning.sharpness import SharpnessAwareConfig, SharpnessAwareUnlearner
from halluc_bench.unlearning.training import Reference


def _positive(config: object, name: str) -> None:
    value = getattr(config, name)
    require_field(config, name, isinstance(value, (int, float)) and 0 < value < float("inf"), "a positive number")


# ----------------------------------------------------------------- shared forget terms
def npo_forget_loss(model: nn.Module, forget: TokenBatch, reference: Reference, beta: float) -> torch.Tensor:
    """NPO forget term on the hallucinated spans of ``forget`` (summed span log-probabilities per row)."""
    logp, mask = policy_token_log_probs(model, forget)
    policy = sequence_log_probs(logp, mask)
    return npo_loss(policy, reference.sequence_log_probs(forget), beta, row_has_labels(mask))


def ga_forget_loss(model: nn.Module, forget: TokenBatch) -> torch.Tensor:
    """Gradient-ascent forget term, -NLL on the hallucinated spans."""
    return gradient_ascent_loss(*policy_token_log_probs(model, forget))


def kl_retain_loss(model: nn.Module, retain: TokenBatch, reference: Reference) -> torch.Tensor:
    """KL(pi_ref || pi_theta) over the vocabulary on the labelled retain tokens, fp32."""
    return kl_to_reference(model_logits(model, retain), reference.logits(retain), retain.labels)


# ----------------------------------------------------------------- GA and GradDiff
@dataclass(frozen=True)
class GradientAscentConfig(UnlearnerConfig):
    retain_weight: float = 0.0  # plain GA has no retain term; a positive weight turns it into GradDiff


@UNLEARNERS.register("ga")
class GradientAscent(Unlearner):
    """Gradient ascent on the NLL of hallucinated mention tokens."""

    name = "ga"
    config_class = GradientAscentConfig

    def loss(self, model, forget, retain, reference) -> LossTerms:
        forget_term = None if forget is None else self.config.forget_weight * ga_forget_loss(model, forget)
        return LossTerms(forget_term, self.retain_nll_term(model, retain))


@UNLEARNERS.register("graddiff")
class GradDiff(GradientAscent):
    """Gradient difference: ascent on hallucinated mentions, descent on faithful caption tokens."""

    name = "graddiff"
    config_class = UnlearnerConfig


# ----------------------------------------------------------------- KL
@UNLEARNERS.register("kl")
class KLUnlearner(Unlearner):
    """Gradient ascent on hallucinated mentions plus KL(pi_ref || pi_theta) on retain tokens."""

    name = "kl"
    config_class = UnlearnerConfig

    @property
    def needs_reference(self) -> bool:
        return True

    def loss(self, model, forget, retain, reference) -> LossTerms:
        config = self.config
        forget_term = None if forget is None else config.forget_weight * ga_forget_loss(model, forget)
        retain_term = None
        if retain is not None and config.retain_weight > 0:
            retain_term = config.retain_weight * kl_retain_loss(model, retain, reference)
        return LossTerms(forget_term, retain_term)


# ----------------------------------------------------------------- NPO and SimNPO
@dataclass(frozen=True)
class NPOConfig(UnlearnerConfig):
    beta: float = 0.1

    def validate(self) -> None:
        super().validate()
        _positive(self, "beta")


@UNLEARNERS.register("npo")
class NPO(Unlearner):
    """Negative preference optimisation on hallucinated mentions, plus retain NLL."""

    name = "npo"
    config_class = NPOConfig

    @property
    def needs_reference(self) -> bool:
        return True

    def loss(self, model, forget, retain, reference) -> LossTerms:
        forget_term = None
        if forget is not None:
            forget_term = self.config.forget_weight * npo_forget_loss(model, forget, reference, self.config.beta)
        return LossTerms(forget_term, self.retain_nll_term(model, retain))


@dataclass(frozen=True)
class SimNPOConfig(UnlearnerConfig):
    beta: float = 4.5
    delta: float = 0.0  # reward margin
    forget_weight: float = 0.125

    def validate(self) -> None:
        super().validate()
        _positive(self, "beta")
        delta = self.delta
        require_field(self, "delta", isinstance(delta, (int, float)) and abs(delta) < float("inf"), "a finite number")


@UNLEARNERS.register("simnpo")
class SimNPO(Unlearner):
    """Length-normalised NPO without a reference model, plus retain NLL."""

    name = "simnpo"
    config_class = SimNPOConfig

    def loss(self, model, forget, retain, reference) -> LossTerms:
        config = self.config
        forget_term = None
        if forget is not None:
            logp, mask = policy_token_log_probs(model, forget)
            forget_term = config.forget_weight * simnpo_loss(logp, mask, config.beta, config.delta)
        return LossTerms(forget_term, self.retain_nll_term(model, retain))


# ----------------------------------------------------------------- DPO
@dataclass(frozen=True)
class DPOConfig(UnlearnerConfig):
    beta: float = 0.1
    retain_weight: float = 0.0  # the preference loss alone; a positive weight adds retain NLL

    def validate(self) -> None:
        super().validate()
        _positive(self, "beta")


@UNLEARNERS.register("dpo")
class DPO(Unlearner):
    """Preference optimisation: a faithful caption of the image preferred over its hallucinated caption.

    y_l is a hallucinated caption. y_w is a faithful (retain) caption of the same image when the
    retain set has one. Otherwise y_w is y_l with its hallucinated mentions deleted by
    :func:`halluc_bench.unlearning.batches.remove_spans`. Both are scored as whole captions.
    """

    name = "dpo"
    config_class = DPOConfig

    @property
    def needs_reference(self) -> bool:
        return True

    def encode_forget(self, vlm: VisionLanguageModel, data: UnlearningData, examples: list[SpanExample]) -> PreferenceBatch:
        return preference_batch(vlm, data, examples)

    def loss(self, model, forget: PreferenceBatch | None, retain, reference) -> LossTerms:
        forget_term = None
        if forget is not None:
            chosen = sequence_log_probs(*policy_token_log_probs(model, forget.chosen))
            rejected = sequence_log_probs(*policy_token_log_probs(model, forget.rejected))
            forget_term = self.config.forget_weight * dpo_loss(
                chosen,
                reference.sequence_log_probs(forget.chosen),
                rejected,
                reference.sequence_log_probs(forget.rejected),
                self.config.beta,
            )
        return LossTerms(forget_term, self.retain_nll_term(model, retain))


# ----------------------------------------------------------------- EFUF
@dataclass(frozen=True)
class EFUFConfig(UnlearnerConfig):
    forget_weight: float = 0.3  # ascent weight on hallucinated spans
    faithful_span_weight: float = 1.0  # NLL on the faithful mentions of the hallucinated captions
    retain_weight: float = 1.0  # NLL on whole faithful captions

    def validate(self) -> None:
        super().validate()
        weight = self.faithful_span_weight
        require_field(self, "faithful_span_weight", isinstance(weight, (int, float)) and 0 <= weight < float("inf"), "a number >= 0")


@UNLEARNERS.register("efuf")
class EFUF(Unlearner):
    """Span-level unlearning: grounding-weighted ascent on hallucinated mentions, NLL on faithful spans and captions.

    ``scorer(example, span)`` returns each hallucinated span's weight. The default returns 1 for
    every forget span, because the image's annotations do not contain that object. The original method
    scores grounding with CLIP instead.
    """

    name = "efuf"
    config_class = EFUFConfig

    def __init__(self, config: EFUFConfig | None = None, scorer: GroundingScorer | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.scorer = scorer or absent_object_score

    def encode_forget(self, vlm: VisionLanguageModel, data: UnlearningData, examples: list[SpanExample]) -> WeightedSpanBatch:
        return weighted_span_batch(vlm, data, examples, self.scorer)

    def loss(self, model, forget: WeightedSpanBatch | None, retain, reference) -> LossTerms:
        """Forget part: weighted ascent. Retain part: faithful-span NLL (read from the same forward
        pass as the forget part) plus whole-caption NLL on the retain batch.

        A forget-only request (``retain`` None while ``retain_weight`` > 0) leaves out the
        faithful-span term too, so the forget part depends on the forget spans alone.
        """
        config = self.config
        if forget is None:
            return LossTerms(None, self.retain_nll_term(model, retain))
        logits = model_logits(model, forget.tokens)
        logp, _ = token_log_probs(logits, forget.tokens.labels)
        forget_term = config.forget_weight * weighted_gradient_ascent_loss(logp, forget.forget_weights)
        forget_only = retain is None and self.uses_retain
        if forget_only or config.faithful_span_weight == 0:
            return LossTerms(forget_term, self.retain_nll_term(model, retain))
        faithful_logp, faithful_mask = token_log_probs(logits, forget.faithful_labels)
        retain_term = config.faithful_span_weight * mean_nll(faithful_logp, faithful_mask)
        caption_term = self.retain_nll_term(model, retain)
        if caption_term is not None:
            retain_term = retain_term + caption_term
        return LossTerms(forget_term, retain_term)


# ----------------------------------------------------------------- NPO + SAM
@dataclass(frozen=True)
class NPOSAMConfig(SharpnessAwareConfig):
    beta: float = 0.1

    def validate(self) -> None:
        super().validate()
        _positive(self, "beta")


@UNLEARNERS.register("npo_sam")
class NPOSAM(SharpnessAwareUnlearner):
    """NPO with a sharpness-aware step: eps from the forget gradient alone, retain gradient at theta."""

    name = "npo_sam"
    config_class = NPOSAMConfig

    needs_reference = NPO.needs_reference
    loss = NPO.loss  # the NPO objective; only the step differs
