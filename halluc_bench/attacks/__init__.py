"""Attacks on an unlearned model: relearning, weight noise, worst-case perturbation, quantization.

Every attack takes a :class:`~halluc_bench.models.vlm.VisionLanguageModel` and returns new
models built from deep copies (the input is never changed), deterministically for a given
seed. :mod:`halluc_bench.attacks.summary` turns the attacked models' hallucination scores into
resurgence ratios and curve summaries.
"""

from halluc_bench.attacks.noise import gaussian_weight_noise, relative_noise
from halluc_bench.attacks.quantize import quantizable_weights, quantize_tensor, quantize_weights
from halluc_bench.attacks.registry import ATTACKS
from halluc_bench.attacks.relearn import (
    RelearnCheckpoints,
    RelearnConfig,
    RelearnInfo,
    benign_relearn,
    caption_batch,
    choose_relearn_examples,
    examples_hash,
    relearn,
)
from halluc_bench.attacks.summary import (
    ResurgenceSummary,
    half_return_budget,
    hallucination_probability,
    resurgence_area,
    resurgence_ratio,
    summarize_resurgence,
)
from halluc_bench.attacks.worst_case import WorstCaseResult, worst_case_perturbation

__all__ = [
    "ATTACKS",
    "RelearnCheckpoints",
    "RelearnConfig",
    "RelearnInfo",
    "ResurgenceSummary",
    "WorstCaseResult",
    "benign_relearn",
    "caption_batch",
    "choose_relearn_examples",
    "examples_hash",
    "gaussian_weight_noise",
    "half_return_budget",
    "hallucination_probability",
    "quantizable_weights",
    "quantize_tensor",
    "quantize_weights",
    "relative_noise",
    "relearn",
    "resurgence_area",
    "resurgence_ratio",
    "summarize_resurgence",
    "worst_case_perturbation",
]
